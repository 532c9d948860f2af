"""Benchmark of `extract index`: posts/s per worker and peak memory, with a plain reference.

    python -m benchmarks.index [--influencers 400] [--posts 50]

Builds a sample dataset (tiny images: index never decodes them), then indexes it
- with 1 and 2 worker processes, and a half-size dataset with 1 worker, each in a fresh
  process so peak memory is its own; the half/full comparison shows whether memory grows
  with the number of posts;
- against a plain reference on the same files: one process, json.load of every .info,
  everything kept in Python lists (what a first script would do), no store written.
Prints posts/s, the ratio to the reference, and the extrapolation to the release's 10.2 M posts.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from benchmarks._util import in_subprocess
from extract.sample import make_sample

RELEASE_POSTS = 10_180_500


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--influencers", type=int, default=400)
    ap.add_argument("--posts", type=int, default=60)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-index-")
    try:
        full, half = os.path.join(tmp, "full"), os.path.join(tmp, "half")
        t = time.perf_counter()
        make_sample(full, args.influencers, args.posts, seed=0, image_size=16)
        make_sample(half, args.influencers // 2, args.posts, seed=0, image_size=16)
        print(f"sample datasets written in {time.perf_counter() - t:.1f}s")

        def index(root, workers, name):
            return in_subprocess(f"""
                import time
                from extract.index import run_index
                t = time.perf_counter()
                r = run_index({root!r}, {os.path.join(tmp, name)!r}, workers={workers}, quiet=True)
                result = {{"posts": r.posts, "seconds": time.perf_counter() - t}}
            """)

        reference = in_subprocess(f"""
            import json, os, time
            root = {full!r}
            t = time.perf_counter()
            rows = []
            with open(os.path.join(root, "JSON-Image_files_mapping.txt")) as f:
                next(f)
                for line in f:
                    user, info, images = line.rstrip("\\n").split("\\t")
                    try:
                        with open(os.path.join(root, "info", user + "-" + info)) as g:
                            node = json.load(g)
                    except (OSError, ValueError):
                        continue
                    rows.append((node["id"], node["taken_at_timestamp"], node["edge_media_to_caption"]))
            result = {{"posts": len(rows), "seconds": time.perf_counter() - t}}
        """)
        runs = {"reference (plain json.load loop, no store)": reference,
                "index, 1 worker": index(full, 1, "w1.zarr"),
                "index, 2 workers": index(full, 2, "w2.zarr"),
                "index, 1 worker, half the posts": index(half, 1, "half.zarr")}
        ref_rate = reference["posts"] / reference["seconds"]
        print(f"{'run':<44} {'posts':>7} {'s':>6} {'posts/s':>8} {'x ref':>6} {'peak MiB':>9} {'worker MiB':>10}")
        for name, r in runs.items():
            rate = r["posts"] / r["seconds"]
            print(f"{name:<44} {r['posts']:>7} {r['seconds']:>6.2f} {rate:>8.0f} {rate / ref_rate:>6.2f} "
                  f"{r['peak_rss_mib']:>9.0f} {r['peak_child_rss_mib']:>10.0f}")
        one = runs["index, 1 worker"]
        rate1 = one["posts"] / one["seconds"]
        two = runs["index, 2 workers"]
        rate2 = two["posts"] / two["seconds"]
        growth = one["peak_rss_mib"] - runs["index, 1 worker, half the posts"]["peak_rss_mib"]
        print(f"per worker: {rate1:.0f} posts/s with 1 worker, {rate2 / 2:.0f} posts/s/worker with 2 "
              f"(floor 2,000 posts/s per worker)")
        print(f"memory: {growth:+.0f} MiB peak from {runs['index, 1 worker, half the posts']['posts']} to "
              f"{one['posts']} posts (the Python process itself, ~{one['peak_rss_mib']:.0f} MiB)")
        for w, rate in ((1, rate1), (2, rate2), (16, rate2 / 2 * 16)):
            print(f"extrapolated to {RELEASE_POSTS:,} posts with {w} workers: "
                  f"{RELEASE_POSTS / rate / 60:.0f} min" + (" (assuming linear scaling)" if w == 16 else ""))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
