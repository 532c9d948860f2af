"""Benchmark of `heads report`: time, peak memory and size on disk, against the release's shape.

    python -m benchmarks.report [--influencers 3394] [--posts 300] [--cards 12]

Builds a planted store of INFLUENCERS x POSTS posts (default a tenth of the release: 3,394 x 300 =
1.02 M posts; tables only, no features: the report never reads features), fills its predictions/
arrays as `heads predict` would (categories, probabilities, attention), fits a small run on a
separate planted store for the run folder, then writes the report in a fresh process, at full
and half size, and extrapolates linearly to 33,935 influencers x 300 posts. A plain reference on
the same store: reading the per-influencer columns and one pass over posts/likes, the least any
explorer must read. Cards read only the posts they show: their count is printed beside the store's.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from benchmarks._util import in_subprocess

RELEASE = 33_935


def build(path: str, influencers: int, posts: int) -> None:
    from cache.store import open_store
    from cache.synthetic import planted_store
    planted_store(path, influencers=influencers, posts=posts, seed=0, block=16384, write_features=False)
    s = open_store(path, "r+")
    n, m = s.n_posts, s.n_influencers
    rng = np.random.default_rng(0)
    for name, values in (("influencer_label", rng.integers(0, 8, m).astype(np.int8)),
                         ("influencer_prob", rng.uniform(0.3, 1, m).astype(np.float32)),
                         ("post_label", rng.integers(0, 10, n).astype(np.int8)),
                         ("post_prob", rng.uniform(0.1, 1, n).astype(np.float16)),
                         ("attention", rng.uniform(0, 2 / posts, n).astype(np.float16))):
        arr = s.group.create_array(f"predictions/{name}", shape=values.shape, dtype=values.dtype,
                                   chunks=(min(len(values), 65536),), overwrite=True)
        arr[:] = values
    s.group["predictions"].attrs.update(complete=True, run="(benchmark)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--influencers", type=int, default=RELEASE // 10)
    ap.add_argument("--posts", type=int, default=300)
    ap.add_argument("--cards", type=int, default=12)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-report-")
    try:
        from cache.synthetic import planted_store
        from heads.train import FitConfig, fit
        small = os.path.join(tmp, "small.zarr")
        planted_store(small, influencers=64, posts=10, seed=1)
        run = os.path.join(tmp, "run")
        fit(small, run, FitConfig(max_steps=50, min_steps=25, normalize="feature", precision="fp32", device="cpu"),
            log=lambda *a: None)
        rows = []
        for name, m in (("full", args.influencers), ("half", args.influencers // 2)):
            path = os.path.join(tmp, f"{name}.zarr")
            t = time.perf_counter()
            build(path, m, args.posts)
            built = time.perf_counter() - t
            out = os.path.join(tmp, f"report-{name}")
            rep = in_subprocess(f"""
                from heads.webreport import write_report
                result = write_report({run!r}, {path!r}, {out!r}, cards={args.cards}, log=lambda *a: None)
            """)
            ref = in_subprocess(f"""
                import time, numpy as np
                from cache.store import open_store
                t = time.perf_counter()
                s = open_store({path!r})
                cols = [s[f"influencers/{{c}}"][:] for c in ("username", "followers", "offsets")]
                total = 0
                for a in range(0, s.n_posts, 262144):
                    total += int(s["posts/likes"][a:a + 262144].sum())
                result = {{"seconds": time.perf_counter() - t}}
            """)
            rows.append((name, m, m * args.posts, built, rep, ref))
            print(f"{name}: {m:,} influencers x {args.posts} posts (store {built:.0f} s): report {rep['seconds']:.1f} s, "
                  f"peak {rep['peak_rss_mib']:.0f} MiB, {rep['bytes'] / 1e6:.1f} MB, {rep['thumbnails']} thumbnails, "
                  f"{rep['placeholders']} placeholders", flush=True)
        print()
        print("| influencers | posts | `heads report` | peak RSS | size on disk | plain read of the columns + likes | ratio |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for name, m, n, built, rep, ref in rows:
            print(f"| {m:,} | {n:,} | {rep['seconds']:.1f} s | {rep['peak_rss_mib']:.0f} MiB | {rep['bytes'] / 1e6:.1f} MB "
                  f"| {ref['seconds']:.1f} s | {rep['seconds'] / max(ref['seconds'], 1e-9):.1f}x |")
        (_, m1, _, _, r1, _), (_, m2, _, _, r2, _) = rows
        per = (r1["seconds"] - r2["seconds"]) / (m1 - m2)
        mem = (r1["peak_rss_mib"] - r2["peak_rss_mib"]) / (m1 - m2)
        size = (r1["bytes"] - r2["bytes"]) / (m1 - m2)
        print(f"\nextrapolated to {RELEASE:,} influencers x {args.posts} posts: "
              f"{r1['seconds'] + per * (RELEASE - m1):.0f} s, peak {r1['peak_rss_mib'] + mem * (RELEASE - m1):.0f} MiB, "
              f"{(r1['bytes'] + size * (RELEASE - m1)) / 1e6:.1f} MB on disk; cards showed "
              f"{r1['thumbnails'] + r1['placeholders']} posts of {m1 * args.posts:,}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
