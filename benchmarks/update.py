"""Benchmark of `extract index --update` on a grown crawl, against indexing and extracting it all again.

    python -m benchmarks.update [--posts 1000000] [--half] [--workers 2]

A posts.jsonl of `--posts` posts (250 per influencer, ten-word captions, images among 1,000 small
JPEG files) is indexed, and every block is given features (random float16, committed through the
block protocol under a fingerprint: the stand-in for a finished extraction). The crawl then grows:
1 % new posts (half of them new influencers, half new posts of existing ones) and 0.1 % changed
posts (half a new caption, half another image). `extract index --update` runs in a fresh process
(wall time, peak memory); the rows it leaves pending per modality are counted and must be exactly
the new and changed ones. The shard jobs' work is those rows at an encoder rate: this 2-core CPU's
(benchmarks/text.py and images.py: 24.4 captions/s, 6.7 images/s) and the H200's job rates
(docs/benchmarks.md: 20,514 captions/s, 6,046 images/s). The reference is a full `extract index`
of the grown crawl (measured) plus extracting every post at the same rates.
`--half` repeats the update at half the posts: whether peak memory grows with the store.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import time

import numpy as np

from benchmarks._util import in_subprocess, scratch

RATES = {"this CPU (2 cores)": (24.4, 6.7), "H200 job rates": (20_514.0, 6_046.0)}
PER_INFLUENCER = 250
IMAGES = 1000
WORDS = ("makeup lipstick outfit denim workout protein recipe pasta sofa decor puppy kitten beach hiking "
         "kids family sunset coffee giveaway brand").split()


def _write_images(root: str) -> None:
    from PIL import Image
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="JPEG")
        with open(os.path.join(root, "img", f"{i}.jpg"), "wb") as f:
            f.write(buf.getvalue())


def _post(rng, user: str, pid: str, ts: int, image: int) -> str:
    return json.dumps({"influencer": user, "id": pid, "timestamp": ts, "likes": int(rng.integers(0, 9999)),
                       "comments": int(rng.integers(0, 99)), "caption": " ".join(rng.choice(WORDS, 10)),
                       "image": f"img/{image}.jpg"})


def write_crawl(root: str, n: int, grown: bool) -> dict:
    """posts.jsonl of n posts (grown: +1 % new, 0.1 % changed); returns what changed."""
    m = max(1, n // PER_INFLUENCER)
    new_influencers = max(1, int(0.005 * n) // PER_INFLUENCER) if grown else 0
    extra_posts = int(0.005 * n) if grown else 0
    n_changed = int(0.001 * n) if grown else 0
    changed = set(np.random.default_rng(2).choice(m * PER_INFLUENCER, n_changed, replace=False).tolist())
    counts = {"new": 0, "text": 0, "image": 0}
    with open(os.path.join(root, "posts.jsonl"), "w") as f:
        for u in range(m):
            for k in range(PER_INFLUENCER + (5 if grown and u < extra_posts // 5 else 0)):
                i = u * PER_INFLUENCER + k
                seed, image = i, i % IMAGES
                if k >= PER_INFLUENCER:
                    counts["new"] += 1
                elif i in changed and i % 2:
                    seed = i + 10**9                          # another caption
                    counts["text"] += 1
                elif i in changed:
                    image = (image + 1) % IMAGES              # another image
                    counts["image"] += 1
                pid = f"p{i}" if k < PER_INFLUENCER else f"n{u}-{k}"
                f.write(_post(np.random.default_rng(seed), f"user{u}", pid, 1_500_000_000 + i, image) + "\n")
        for u in range(m, m + new_influencers):
            for k in range(PER_INFLUENCER):
                i = u * PER_INFLUENCER + k
                f.write(_post(np.random.default_rng(i), f"user{u}", f"p{i}", 1_500_000_000 + i, i % IMAGES) + "\n")
                counts["new"] += 1
    return counts


def plant_features(path: str) -> None:
    """Every block given features and statuses through the commit protocol, under one fingerprint."""
    from cache.blocks import claim_fingerprint, commit_block
    from cache.store import open_store
    s = open_store(path, "r+")
    rng = np.random.default_rng(0)
    for m, dim in (("image", 1024), ("text", 768)):
        claim_fingerprint(s, m, {"kind": m, "model": "benchmark-planted"})
        block = rng.standard_normal((s.block, dim)).astype(np.float16)
        for b in range(s.n_blocks):
            r = s.block_rows(b)
            n = r.stop - r.start
            commit_block(s, m, b, block[:n], np.ones(n, np.uint8))


def measure(tmp: str, n: int, workers: int) -> dict:
    root, store = os.path.join(tmp, f"crawl{n}"), os.path.join(tmp, f"s{n}.zarr")
    os.makedirs(root, exist_ok=True)
    _write_images(root)
    write_crawl(root, n, grown=False)
    full_old = in_subprocess(f"""
        import time
        from extract.index import run_index
        t = time.perf_counter()
        r = run_index({root!r}, {store!r}, workers={workers}, quiet=True)
        result = {{"posts": r.posts, "seconds": time.perf_counter() - t}}
    """)
    t = time.perf_counter()
    plant_features(store)
    planted_s = time.perf_counter() - t
    expected = write_crawl(root, n, grown=True)
    update = in_subprocess(f"""
        import time
        from extract.update import run_update
        t = time.perf_counter()
        r = run_update({root!r}, {store!r}, workers={workers}, quiet=True)
        result = {{"posts": r.posts, "seconds": time.perf_counter() - t, "pending": r.pending, "kept": r.kept,
                   "new": r.new_posts, "vanished": r.vanished_posts}}
    """)
    full_new = in_subprocess(f"""
        import time
        from extract.index import run_index
        t = time.perf_counter()
        r = run_index({root!r}, {os.path.join(tmp, f"ref{n}.zarr")!r}, workers={workers}, quiet=True)
        result = {{"posts": r.posts, "seconds": time.perf_counter() - t}}
    """)
    return {"n": n, "index_old": full_old, "planted_s": planted_s, "expected": expected, "update": update,
            "index_new": full_new}


def report(r: dict) -> None:
    u, e = r["update"], r["expected"]
    want = {"text": e["new"] + e["text"], "image": e["new"] + e["image"]}
    print(f"\n{r['n']:,} posts: index {r['index_old']['seconds']:.1f}s (peak {r['index_old']['peak_rss_mib']:.0f} MiB); "
          f"features planted in {r['planted_s']:.1f}s")
    print(f"grown crawl: {u['posts']:,} posts, {e['new']:,} new, {e['text']:,} new captions, {e['image']:,} new images")
    print(f"--update: {u['seconds']:.1f}s, peak {u['peak_rss_mib']:.0f} MiB (workers {u['peak_child_rss_mib']:.0f} MiB); "
          f"full index of the grown crawl {r['index_new']['seconds']:.1f}s")
    for m in ("text", "image"):
        ok = "exactly the new and changed" if u["pending"][m] == want[m] else f"EXPECTED {want[m]:,}"
        print(f"  {m}: {u['kept'][m]:,} kept, {u['pending'][m]:,} pending ({ok})")
    for name, (text_rate, image_rate) in RATES.items():
        inc = u["seconds"] + u["pending"]["text"] / text_rate + u["pending"]["image"] / image_rate
        full = r["index_new"]["seconds"] + u["posts"] / text_rate + u["posts"] / image_rate
        print(f"  at {name}: update + encoding {inc:,.0f}s vs index + full extraction {full:,.0f}s: "
              f"{100 * inc / full:.2f} % (floor 5 %)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=1_000_000)
    ap.add_argument("--half", action="store_true", help="also at half the posts (memory growth)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    results = []
    with scratch("bench-update-", args.keep) as tmp:
        sizes = ([args.posts // 2] if args.half else []) + [args.posts]
        for n in sizes:
            results.append(measure(tmp, n, args.workers))
            report(results[-1])
            for name in os.listdir(tmp):                        # room for the next size
                if name.endswith(".zarr") or name.startswith("crawl"):
                    import shutil
                    shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
    if len(results) == 2:
        a, b = results[0]["update"]["peak_rss_mib"], results[1]["update"]["peak_rss_mib"]
        print(f"\nupdate peak memory: {a:.0f} MiB at {results[0]['n']:,} posts, {b:.0f} MiB at {results[1]['n']:,} "
              f"({b - a:+.0f} MiB)")


if __name__ == "__main__":
    main()
