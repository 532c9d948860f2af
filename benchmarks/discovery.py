"""Benchmark of finding influencers: `heads similar` and `heads search` at the release's 33,935
influencers (and 10x that, synthetic), and the report with precomputed lookalikes.

    python -m benchmarks.discovery [--influencers 33935] [--scale 10] [--posts 5] [--no-report]

A planted store of `--influencers` influencers (`--posts` each) is fitted briefly on its labelled
ones, predicted (embeddings h included), then queried through heads.discover on the store itself:
load time, then per-query time of `similar` (median of 20 users) and `search`, beside a plain
reference on the same embeddings (scikit-learn's brute-force cosine NearestNeighbors, whose
answers must be the same). The same `similar` over `--scale` x the influencers (random embeddings
in memory, the same code path) shows how a query grows. Then `heads report` on the store: its size
and how long headless Chromium takes to load it (when chromium is installed: `make browser`).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time

import numpy as np

from benchmarks._util import scratch


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--influencers", type=int, default=33_935)
    ap.add_argument("--posts", type=int, default=5)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    from sklearn.neighbors import NearestNeighbors

    from cache.store import open_store
    from cache.synthetic import planted_store
    from heads.discover import Directory, Filters, search, similar
    from heads.predict import predict
    from heads.train import FitConfig, fit
    with scratch("bench-discovery-", args.keep) as tmp:
        path, run = os.path.join(tmp, "s.zarr"), os.path.join(tmp, "run")
        t = time.perf_counter()
        planted_store(path, influencers=args.influencers, posts=args.posts, seed=0, block=16384, fast_noise=True,
                      labelled_influencers=800, on_topic=0.6)
        s = open_store(path, "r+")
        rng = np.random.default_rng(0)
        s["influencers/followers"][:] = (10 ** rng.uniform(3, 7, s.n_influencers)).astype(np.int64)
        print(f"planted store: {s.n_influencers:,} influencers, {s.n_posts:,} posts ({time.perf_counter() - t:.0f}s)")
        t = time.perf_counter()
        fit(path, run, FitConfig(max_steps=200, restarts=1, precision="fp32"), log=lambda *_: None)
        print(f"fitted in {time.perf_counter() - t:.0f}s")
        t = time.perf_counter()
        predict(run, path, os.path.join(tmp, "pred"), quiet=True)
        print(f"predicted (embeddings included) in {time.perf_counter() - t:.0f}s")

        t = time.perf_counter()
        d = Directory(open_store(path), run, need_embeddings=True)
        load_s = time.perf_counter() - t
        users = [str(u) for u in d.username[rng.choice(len(d), 20, replace=False)]]
        times = []
        for u in users:
            t = time.perf_counter()
            got = similar(d, u, 20, Filters())
            times.append(time.perf_counter() - t)
        filtered = []
        for u in users:
            t = time.perf_counter()
            similar(d, u, 20, Filters(tiers=("micro", "macro"), min_engagement=0.0))
            filtered.append(time.perf_counter() - t)
        valid = d.valid
        nn = NearestNeighbors(n_neighbors=21, metric="cosine", algorithm="brute").fit(d.embedding[valid])
        ref_times, same = [], 0
        index = np.flatnonzero(valid)
        for u in users:
            j = d.find(u)
            t = time.perf_counter()
            _, idx = nn.kneighbors(d.embedding[j:j + 1])
            ref_times.append(time.perf_counter() - t)
            ref = [d.username[index[i]] for i in idx[0] if index[i] != j][:20]
            mine = [r["username"] for r in similar(d, u, 20, Filters())]
            same += len(set(ref) & set(mine)) >= 19          # ties at the 20th place may differ
        t = time.perf_counter()
        rows = search(d, Filters(category="fitness", tiers=("micro",), min_engagement=0.0), sort="engagement")
        search_s = time.perf_counter() - t
        print(f"\n{len(d):,} influencers: loading {load_s * 1000:.0f} ms (once per command)")
        print(f"  similar: median {np.median(times) * 1000:.1f} ms per query (floor 50 ms), with filters "
              f"{np.median(filtered) * 1000:.1f} ms; sklearn brute-force cosine {np.median(ref_times) * 1000:.1f} ms "
              f"({np.median(ref_times) / np.median(times):.1f}x ours); same 20 nearest for {same}/20 users")
        print(f"  search: {search_s * 1000:.1f} ms (floor 1 s), {len(rows)} rows; last query returned {len(got)}")

        big = args.influencers * args.scale
        e = np.random.default_rng(1).standard_normal((big, d.embedding.shape[1])).astype(np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        d.embedding, d.label, d.valid = e, np.zeros(big, np.int64), np.ones(big, bool)
        for name in ("prob", "followers", "engagement", "sponsored", "posts"):
            setattr(d, name, np.resize(getattr(d, name), big))
        d.username = np.resize(d.username, big)
        d.tier, d._tier_code = np.resize(d.tier, big), np.resize(d._tier_code, big)
        d.offsets = np.zeros(big + 1, np.int64)
        times = []
        for q in range(10):
            t = time.perf_counter()
            similar(d, str(d.username[q]), 20, Filters())
            times.append(time.perf_counter() - t)
        print(f"  x{args.scale} ({big:,} influencers, synthetic): similar median {np.median(times) * 1000:.1f} ms "
              f"per query: exact search grows linearly; past some millions an approximate index (e.g. FAISS IVF) "
              f"would be needed")

        if not args.no_report:
            from heads.webreport import write_report
            out = os.path.join(tmp, "report")
            t = time.perf_counter()
            write_report(run, path, out, cards=2)
            report_s = time.perf_counter() - t
            size = _folder_bytes(out)
            print(f"\nreport with lookalikes of {open_store(path).n_influencers:,} influencers: written in "
                  f"{report_s:.0f}s, {size / 2**20:.1f} MiB (floor 10 MB), explorer.js "
                  f"{os.path.getsize(os.path.join(out, 'assets', 'explorer.js')) / 2**20:.1f} MiB")
            chromium = shutil.which("chromium") or shutil.which("chromium-browser")
            if chromium:
                t = time.perf_counter()
                r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                                    "--dump-dom", f"file://{out}/index.html"], capture_output=True, text=True,
                                   timeout=120)
                load = time.perf_counter() - t
                ok = "influencers; page 1 of" in r.stdout
                print(f"headless Chromium: loaded and ran the explorer in {load:.1f}s (floor 5 s); explorer "
                      f"rendered: {ok}")
            else:
                print("headless Chromium: not installed (make browser); load time not measured")


if __name__ == "__main__":
    main()
