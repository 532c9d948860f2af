"""Benchmark of `extract index` on the three formats it reads, the same posts in each.

    python -m benchmarks.formats [--influencers 200] [--posts 60] [--workers 1]

Writes the sample dataset (tiny images: index never decodes them) in the release layout, as an
instaloader crawl (extract.sample_crawl, instaloader's own writer when installed: xz-compressed JSON
per post) and as a posts.jsonl (converted from the release's .info files), then indexes each in a
fresh process (peak memory its own) and the crawl again at half size (whether memory grows with the
posts). Prints posts/s, the ratio to the release reader (floor for instaloader: 0.5x, xz
decompression included) and peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from benchmarks._util import in_subprocess, scratch


def _jsonl_from_release(rel: str, out: str) -> None:
    """The release sample's posts as posts.jsonl + influencers.jsonl (images referenced in place)."""
    from extract import release
    os.makedirs(out, exist_ok=True)
    rows, _ = release.read_influencers(rel)
    with open(os.path.join(out, "influencers.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps({"username": r.username, "followers": r.followers, "followees": r.followees,
                                "category": r.category}) + "\n")
    os.symlink(os.path.join(rel, release.IMAGE_DIR), os.path.join(out, "image"))
    with open(os.path.join(out, "posts.jsonl"), "w", encoding="utf-8") as f:
        for row in release.iter_mapping(rel):
            if len(row) != 4:
                continue
            _, user, json_name, images = row
            try:
                with open(release.info_path(rel, user, json_name), encoding="utf-8") as g:
                    node = json.load(g)
            except (OSError, ValueError):
                continue
            edges = node["edge_media_to_caption"]["edges"]
            f.write(json.dumps({"influencer": user, "id": node["id"], "timestamp": node["taken_at_timestamp"],
                                "caption": edges[0]["node"]["text"] if edges else None,
                                "likes": node["edge_media_preview_like"]["count"],
                                "comments": node["edge_media_to_parent_comment"]["count"],
                                "image": [release.image_relpath(user, i) for i in images]},
                               ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--influencers", type=int, default=200)
    ap.add_argument("--posts", type=int, default=60)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    from extract.sample import make_sample
    from extract.sample_crawl import make_crawl_sample
    with scratch("bench-formats-", args.keep) as tmp:
        t = time.perf_counter()
        roots = {"release": os.path.join(tmp, "release"), "instaloader": os.path.join(tmp, "crawl"),
                 "jsonl": os.path.join(tmp, "jsonl"), "instaloader, half": os.path.join(tmp, "crawl-half")}
        make_sample(roots["release"], args.influencers, args.posts, seed=0, image_size=16, clean=True)
        make_crawl_sample(roots["instaloader"], args.influencers, args.posts, seed=0, image_size=16, clean=True)
        make_crawl_sample(roots["instaloader, half"], args.influencers // 2, args.posts, seed=0, image_size=16,
                          clean=True)
        _jsonl_from_release(roots["release"], roots["jsonl"])
        print(f"datasets written in {time.perf_counter() - t:.1f}s")
        runs = {}
        for name, root in roots.items():
            runs[name] = in_subprocess(f"""
                import time
                from extract.index import run_index
                t = time.perf_counter()
                r = run_index({root!r}, {os.path.join(tmp, name.replace(', ', '-') + '.zarr')!r},
                              workers={args.workers}, quiet=True)
                result = {{"posts": r.posts, "seconds": time.perf_counter() - t}}
            """)
        ref = runs["release"]["posts"] / runs["release"]["seconds"]
        print(f"extract index, {args.workers} worker(s)")
        print(f"{'format':<20} {'posts':>7} {'s':>7} {'posts/s':>8} {'x release':>9} {'peak MiB':>9} {'worker MiB':>10}")
        for name, r in runs.items():
            rate = r["posts"] / r["seconds"]
            print(f"{name:<20} {r['posts']:>7} {r['seconds']:>7.2f} {rate:>8.0f} {rate / ref:>9.2f} "
                  f"{r['peak_rss_mib']:>9.0f} {r['peak_child_rss_mib']:>10.0f}")
        ratio = runs["instaloader"]["posts"] / runs["instaloader"]["seconds"] / ref
        print(f"instaloader reader: {ratio:.2f}x the release reader's posts/s (floor 0.5x)")
        grow = runs["instaloader"]["peak_rss_mib"] - runs["instaloader, half"]["peak_rss_mib"]
        print(f"memory: {grow:+.0f} MiB peak from {runs['instaloader, half']['posts']} to "
              f"{runs['instaloader']['posts']} crawled posts")


if __name__ == "__main__":
    main()
