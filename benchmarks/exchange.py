"""Benchmark of `cache export` / `cache import` (HDF5) against a plain read of the same store.

    python -m benchmarks.exchange [--posts 1000000] [--keep]

Builds a planted store of POSTS posts (300 per influencer, features written), then, each in a
fresh process so peak memory is its own:
- a plain read: every feature block and every post table read once, nothing written;
- `cache export STORE OUT.h5`, at full and half size (does memory grow with the posts?);
- `cache export --labelled-only`, and `cache import OUT.h5 STORE2`.
Throughput is feature MB/s (float16 rows of both modalities). The floor (#16): export at >= 50 %
of the plain read's throughput, with flat memory.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

from benchmarks._util import in_subprocess, scratch


def build(path: str, posts: int) -> float:
    from cache.synthetic import planted_store
    t = time.perf_counter()
    influencers = max(1, posts // 300)
    planted_store(path, influencers=influencers, posts=300, seed=0, block=16384, fast_noise=True,
                  labelled_influencers=min(influencers, max(16, influencers // 12)), spread_labels=True,
                  label_posts=0.001)
    return time.perf_counter() - t


def plain_read(path: str) -> dict:
    return in_subprocess(f"""
        import time
        from cache.store import open_store
        t = time.perf_counter()
        s = open_store({path!r})
        nbytes = 0
        for b in range(s.n_blocks):
            rows = s.block_rows(b)
            for m in ("image", "text"):
                nbytes += s[f"features/{{m}}"][rows].nbytes
                s[f"features/{{m}}_status"][rows]
        for name in ("id", "caption", "image", "influencer", "timestamp", "likes", "comments", "label", "split"):
            for a in range(0, s.n_posts, 262144):
                s[f"posts/{{name}}"][a:a + 262144]
        result = {{"seconds": time.perf_counter() - t, "feature_bytes": nbytes}}
    """)


def export(path: str, out: str, labelled_only: bool = False) -> dict:
    return in_subprocess(f"""
        from cache.exchange import export_store
        result = export_store({path!r}, {out!r}, {labelled_only!r})
    """)


def import_(h5: str, dst: str) -> dict:
    return in_subprocess(f"""
        from cache.exchange import import_store
        result = import_store({h5!r}, {dst!r})
    """)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=1_000_000)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    with scratch("bench-exchange-", args.keep) as tmp:
        lines = []
        full = os.path.join(tmp, "full.zarr")
        print(f"planted store of {args.posts:,} posts written in {build(full, args.posts):.0f} s", flush=True)
        ref = plain_read(full)
        mb = ref["feature_bytes"] / 1e6
        lines.append(("plain read (features + post tables)", args.posts, ref["seconds"], ref["peak_rss_mib"], None))
        h5 = os.path.join(tmp, "full.h5")
        ex = export(full, h5)
        lines.append(("`cache export`", args.posts, ex["seconds"], ex["peak_rss_mib"], ex["bytes"]))
        half = os.path.join(tmp, "half.zarr")
        build(half, args.posts // 2)
        exh = export(half, os.path.join(tmp, "half.h5"))
        lines.append(("`cache export` (half size)", args.posts // 2, exh["seconds"], exh["peak_rss_mib"], exh["bytes"]))
        exl = export(full, os.path.join(tmp, "lab.h5"), True)
        lines.append((f"`cache export --labelled-only` ({exl['posts']:,} posts kept)", args.posts, exl["seconds"],
                      exl["peak_rss_mib"], exl["bytes"]))
        os.remove(os.path.join(tmp, "half.h5"))
        shutil.rmtree(half)
        im = import_(h5, os.path.join(tmp, "back.zarr"))
        lines.append(("`cache import`", args.posts, im["seconds"], im["peak_rss_mib"], None))
        print()
        print("| step | posts | seconds | feature MB/s | vs plain read | peak RSS | file |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, n, sec, rss, size in lines:
            rate = mb * n / args.posts / sec
            print(f"| {name} | {n:,} | {sec:.1f} | {rate:.0f} | {ref['seconds'] * n / args.posts / sec:.2f}x | "
                  f"{rss:.0f} MiB | {'' if size is None else f'{size / 1e6:.0f} MB'} |")
        ratio = ref["seconds"] / ex["seconds"]
        print(f"\nfloor: export at >= 50 % of the plain read's throughput: {'met' if ratio >= 0.5 else 'MISSED'} "
              f"({100 * ratio:.0f} %); memory {exh['peak_rss_mib']:.0f} MiB at half size, {ex['peak_rss_mib']:.0f} MiB "
              f"at full size")


if __name__ == "__main__":
    main()
