"""Full-scale drill: a store shaped like the release, and every whole-store stage on it.

    python -m benchmarks.scale [--fractions 0.02,0.1] [--dir DIR] [--keep] [--no-drop-caches]

The release: 33,935 influencers × 300 posts = 10,180,500 posts, 1024-d image and 768-d text
features in float16 (36 GB before compression), 2,742 labelled influencers (1,600 + the
1,142 of the test set) and 10,000 labelled posts. For each fraction f, a planted store of
round(f × 33,935) influencers × 300 posts (labels scaled by f, spread over the store;
features written directly, blocks of 16,384 as by default) is written to local disk, and
each stage runs in a fresh process with the page cache dropped first (when permitted), so
reads come from disk as they would at full size, where 36 GB exceeds memory:

    read      plain reference: every feature block read once, nothing else
    verify    `cache verify` (statuses and NaN rows of every done block, owners)
    info      `cache info` (status counts of every block)
    means     the dask aggregation: per-influencer means of both modalities, every influencer
    baselines `baselines run` with its defaults (4 models × 3 inputs, feature baselines)
    fit       `heads fit` (labelled bags only; 3 epochs), needed by predict
    predict   `heads predict`: every influencer and post, arrays in the store and the CSVs

Time and peak memory (RSS of the process and of its largest child) are printed per stage and
fraction; with two or more fractions, time is extrapolated linearly to f = 1 from the two
largest (t(1) = t2 + (t2 - t1) / (f2 - f1) × (1 - f2)), and so is peak memory where it grows.
Give `--fractions 1` to measure at full size (about 45 GB of disk, an hour on 2 cores).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import textwrap
import time

from benchmarks._util import in_subprocess

RELEASE_INFLUENCERS, POSTS, LABELLED_INFLUENCERS, LABELLED_POSTS = 33_935, 300, 2_742, 10_000
FULL_POSTS = RELEASE_INFLUENCERS * POSTS

STAGES = {
    "read": """
        from cache.store import open_store
        s = open_store(PATH)
        n = 0
        for b in range(s.n_blocks):
            for m in ("image", "text"):
                n += s[f"features/{m}"][s.block_rows(b)].nbytes
        result = {"bytes": n}
    """,
    "verify": """
        from cache.inspect import verify
        from cache.store import open_store
        errors = verify(open_store(PATH))
        assert not errors, errors
        result = {}
    """,
    "info": """
        from cache.inspect import info
        from cache.store import open_store
        d = info(open_store(PATH))
        result = {"blocks_done": d["features"]["text"]["blocks_done"]}
    """,
    "means": """
        from baselines.aggregate import influencer_means
        means, counts = influencer_means(PATH, "both")
        result = {"influencers": len(means)}
    """,
    "baselines": """
        from baselines.run import run_baselines
        r = run_baselines(PATH, OUT + "/baselines", log=lambda *a: None)
        result = {"test_influencers": r["test_influencers"]}
    """,
    "fit": """
        from heads.train import FitConfig, fit
        m = fit(PATH, OUT + "/run", FitConfig(epochs=3), log=lambda *a: None)
        result = {"accuracy": m["influencer"]["accuracy"]}
    """,
    "predict": """
        from heads.predict import predict
        r = predict(OUT + "/run", PATH, OUT + "/predictions", quiet=True)
        result = {"influencers": r["influencers"]}
    """,
}


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def measure(fraction: float, base: str, cold: bool) -> dict:
    influencers = max(16, round(RELEASE_INFLUENCERS * fraction))
    labelled = max(16, round(LABELLED_INFLUENCERS * fraction))
    posts = influencers * POSTS
    path, out = os.path.join(base, f"scale-{fraction:g}.zarr"), os.path.join(base, f"out-{fraction:g}")
    os.makedirs(out, exist_ok=True)
    t = time.perf_counter()
    in_subprocess(f"""
        from cache.synthetic import planted_store
        planted_store({path!r}, {influencers}, {POSTS}, seed=0, block=16384, noise=3.0, on_topic=0.2,
                      labelled_influencers={labelled}, label_posts={LABELLED_POSTS / FULL_POSTS!r},
                      spread_labels=True, fast_noise=True)
        result = {{}}
    """)
    size = du(path)
    print(f"\nf = {fraction:g}: {influencers:,} influencers × {POSTS} posts = {posts:,} posts, {labelled:,} labelled "
          f"influencers; store written in {time.perf_counter() - t:.0f}s, {size / 2**30:.2f} GiB on disk "
          f"({posts * 1792 * 2 / 2**30:.2f} GiB of float16 features before compression)", flush=True)
    rows = {"influencers": influencers, "posts": posts, "disk": size, "stages": {}}
    for name, code in STAGES.items():
        dropped = drop_caches() if cold else False
        t = time.perf_counter()
        r = in_subprocess(f"PATH, OUT = {path!r}, {out!r}\n" + textwrap.dedent(code))
        r["seconds"] = time.perf_counter() - t
        r["peak_mib"] = max(r["peak_rss_mib"], r["peak_child_rss_mib"])
        rows["stages"][name] = r
        rate = posts / r["seconds"]
        print(f"  {name:<10} {r['seconds']:8.1f} s  {rate:>12,.0f} posts/s  peak {r['peak_mib']:8.0f} MiB"
              f"{'  (cold cache)' if dropped else ''}", flush=True)
    return rows


def extrapolate(f1: float, y1: float, f2: float, y2: float, f: float = 1.0) -> float:
    return y2 + (y2 - y1) / (f2 - f1) * (f - f2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fractions", default="0.02,0.1", help="comma-separated fractions of the release's size")
    ap.add_argument("--dir", default=None, help="where the stores go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the stores")
    ap.add_argument("--no-drop-caches", action="store_true", help="leave the page cache alone (warm reads)")
    args = ap.parse_args()
    fractions = sorted(float(f) for f in args.fractions.split(","))
    base = tempfile.mkdtemp(prefix="bench-scale-", dir=args.dir)
    cold = not args.no_drop_caches
    print(f"{os.cpu_count()} cores; stores in {base}; page cache {'dropped before each stage' if cold else 'kept'}")
    results = {}
    try:
        for f in fractions:
            results[f] = measure(f, base, cold)
            if not args.keep:
                shutil.rmtree(os.path.join(base, f"scale-{f:g}.zarr"))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"\nThe release's size: {FULL_POSTS:,} posts of {RELEASE_INFLUENCERS:,} influencers")
    full = results[fractions[-1]] if fractions[-1] >= 1.0 else None
    small = [f for f in fractions if f < 1.0]
    if full:
        print(f"measured at full size ({full['disk'] / 2**30:.1f} GiB on disk):")
        read_full = full["stages"]["read"]["seconds"]
        for name, r in full["stages"].items():
            print(f"  {name:<10} {r['seconds'] / 60:7.1f} min ({r['seconds'] / read_full:4.1f}× the plain read)  "
                  f"{full['posts'] / r['seconds']:>10,.0f} posts/s  peak {r['peak_mib']:8.0f} MiB  (measured)")
    if len(small) < 2:
        if not full:
            print(f"one fraction only: times scale by about {1 / small[0]:.0f}× to full size (not extrapolated)")
        return
    f1, f2 = small[-2], small[-1]
    a, b = results[f1], results[f2]
    disk = extrapolate(f1, a["disk"], f2, b["disk"])
    print(f"extrapolated from f = {f1:g} and f = {f2:g} to f = 1 (store {disk / 2**30:.1f} GiB on disk)"
          + (", against the measurement:" if full else ":"))
    read_t = extrapolate(f1, a["stages"]["read"]["seconds"], f2, b["stages"]["read"]["seconds"])
    for name in STAGES:
        ta, tb = a["stages"][name]["seconds"], b["stages"][name]["seconds"]
        ma, mb = a["stages"][name]["peak_mib"], b["stages"][name]["peak_mib"]
        t = extrapolate(f1, ta, f2, tb)
        grows = mb > ma * 1.15
        m = extrapolate(f1, ma, f2, mb) if grows else mb
        grows = "grows with the store" if grows else "flat"
        line = (f"  {name:<10} {t / 60:7.1f} min ({t / read_t:4.1f}× the plain read)  peak {m:8.0f} MiB "
                f"(measured {ma:.0f} → {mb:.0f} MiB: {grows})")
        if full:
            r = full["stages"][name]
            line += f"; measured {r['seconds'] / 60:.1f} min, {r['peak_mib']:.0f} MiB"
        print(line)


if __name__ == "__main__":
    main()
