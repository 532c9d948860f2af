"""Benchmark of the dask per-influencer mean and of a full `baselines run`.

    python -m benchmarks.baselines [--posts-total 1000000] [--labelled 1600]

Aggregation: MB/s of features read and averaged per influencer on a planted store of
≥ 1 M posts (1792-d float16), with dask on 1 and 2 threads, against a plain numpy loop over
the same rows (each influencer's slice read and averaged, one after another).
Full run: wall time of `baselines run` (all model and feature baselines) on a store of
1,600 labelled influencers × 300 posts.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from benchmarks._util import in_subprocess


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts-total", type=int, default=1_000_000)
    ap.add_argument("--posts", type=int, default=300)
    ap.add_argument("--labelled", type=int, default=1600)
    ap.add_argument("--skip-full", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-baselines-")
    try:
        big = os.path.join(tmp, "big.zarr")
        n_inf = -(-args.posts_total // args.posts)
        t = time.perf_counter()
        in_subprocess(f"""
            from cache.synthetic import planted_store
            planted_store({big!r}, {n_inf}, {args.posts}, seed=0, block=16384, label_posts=0.0, labelled_influencers=0)
            result = {{}}
        """)
        mb = n_inf * args.posts * 1792 * 2 / 1e6
        print(f"store: {n_inf} influencers × {args.posts} posts ({mb:.0f} MB of features) written in "
              f"{time.perf_counter() - t:.0f}s")
        runs = {}
        runs["plain numpy loop"] = in_subprocess(f"""
            import time, numpy as np
            from cache.store import open_store
            s = open_store({big!r})
            off = s.offsets()
            xi, xt = s["features/image"], s["features/text"]
            si, st = s["features/image_status"], s["features/text_status"]
            t = time.perf_counter()
            out = np.empty((s.n_influencers, 1792), np.float32)
            for j in range(s.n_influencers):
                r = slice(int(off[j]), int(off[j + 1]))
                a = xi[r].astype(np.float64); a[si[r] != 1] = 0
                b = xt[r].astype(np.float64); b[st[r] != 1] = 0
                out[j, :1024] = a.sum(0) / max((si[r] == 1).sum(), 1)
                out[j, 1024:] = b.sum(0) / max((st[r] == 1).sum(), 1)
            result = {{"seconds": time.perf_counter() - t}}
        """)
        for threads in (1, 2):
            runs[f"dask, one task per block, {threads} thread(s)"] = in_subprocess(f"""
                import time, dask
                from concurrent.futures import ThreadPoolExecutor
                from baselines.aggregate import influencer_means
                with dask.config.set(pool=ThreadPoolExecutor({threads})):
                    t = time.perf_counter()
                    influencer_means({big!r}, "both")
                    result = {{"seconds": time.perf_counter() - t}}
            """)
        ref = runs["plain numpy loop"]["seconds"]
        print(f"{'aggregation':<40} {'s':>7} {'MB/s':>8} {'x numpy':>8} {'peak MiB':>9}")
        for name, r in runs.items():
            print(f"{name:<40} {r['seconds']:>7.1f} {mb / r['seconds']:>8.0f} {ref / r['seconds']:>8.2f} "
                  f"{r['peak_rss_mib']:>9.0f}")
        print(f"extrapolated to 10.2 M posts (36.5 GB): "
              f"{36500 / (mb / runs['dask, one task per block, 2 thread(s)']['seconds']) / 60:.1f} min with 2 threads")
        shutil.rmtree(big, ignore_errors=True)
        if not args.skip_full:
            lab = os.path.join(tmp, "lab.zarr")
            in_subprocess(f"""
                from cache.synthetic import planted_store
                planted_store({lab!r}, {args.labelled}, {args.posts}, seed=0, block=16384, noise=3.0, on_topic=0.2,
                              label_posts=10000 / ({args.labelled} * {args.posts}))
                result = {{}}
            """)
            full = in_subprocess(f"""
                import time
                from baselines.run import run_baselines
                t = time.perf_counter()
                run_baselines({lab!r}, {os.path.join(tmp, 'out')!r}, log=lambda *a: None)
                result = {{"seconds": time.perf_counter() - t}}
            """)
            print(f"full `baselines run` (4 models × 3 inputs × 2 tasks + Tag, Text&Social, Image) on "
                  f"{args.labelled} labelled influencers × {args.posts} posts: {full['seconds']:.0f}s, "
                  f"peak RSS {full['peak_rss_mib']:.0f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
