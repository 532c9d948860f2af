"""The GPU check's release-like sample, and the same store repeated for the jobs."""
from __future__ import annotations

import os
import shutil

import numpy as np


def build(tmp: str, posts: int, image_size: int, workers: int, repeat: int) -> dict:
    """The release-like sample: patterns drawn at 90 px (drawing 360 px ones took 340 s for 12 k
    posts on one core), enlarged to `image_size`, softened and saved as ~15 KB JPEGs in `workers`
    processes; then indexed and labelled."""
    from benchmarks.images import photo_like
    from cache.labels import apply_labels
    from cache.store import open_store
    from extract.index import run_index
    from extract.sample import make_sample
    data, url = os.path.join(tmp, "data"), os.path.join(tmp, "pil.zarr")
    per = 50 if posts >= 1000 else 2           # the dry run: 24 influencers, 3 per category, so every split has some
    make_sample(data, max(24, posts // per), per, seed=0, image_size=min(90, image_size), clean=True)
    kb = photo_like(data, size=image_size, workers=max(1, workers))
    # blocks of 2,048 rows (the release's store uses 16,384): ~9 blocks, so the jobs reach their steady
    # state (tokenising or decoding the next block while the model runs this one) and it can be measured
    run_index(data, url, block=2048 if posts >= 1000 else 16, workers=min(os.cpu_count() or 1, 16), quiet=True)
    apply_labels(open_store(url, "r+"), os.path.join(data, "labels/influencers.csv"),
                 os.path.join(data, "labels/posts.csv"), seed=0)
    repeated(url, os.path.join(tmp, "jobs.zarr"), repeat)
    apply_labels(open_store(os.path.join(tmp, "jobs.zarr"), "r+"), os.path.join(data, "labels/influencers.csv"),
                 os.path.join(data, "labels/posts.csv"), seed=0)
    shutil.copytree(os.path.join(tmp, "jobs.zarr"), os.path.join(tmp, "jobs-b.zarr"))    # the second job of each kind
    shutil.copytree(os.path.join(tmp, "jobs.zarr"), os.path.join(tmp, "jobs-c.zarr"))    # the fp32 image job's
    shutil.copytree(url, os.path.join(tmp, "oom.zarr"))       # oom_recovery's (its first block only)
    s, j = open_store(url), open_store(os.path.join(tmp, "jobs.zarr"))
    return {"data": data, "posts": s.n_posts, "jpeg_kb": round(kb, 1),
            "images": sum(1 for p in s["posts/image"][:] if str(p)), "job_rows": j.n_posts, "job_blocks": j.n_blocks,
            "repeat": repeat}


def repeated(src: str, dst: str, times: int) -> None:
    """The sample's store with its posts and influencers repeated `times` over (ids and usernames made
    unique, the same captions and image files), unlabelled (`cache labels` with the sample's files
    labels the first copy only: the others' ids are not in them), features empty.
    The jobs run on it so that they last long enough for a steady state: a 20 k-post sample is one
    second of text at the floor's rate, and the jobs' workers would tokenise or decode all of it ahead
    while the first block starts up, so the rate after the first block would not include them."""
    from cache import schema
    from cache.store import create_features, create_labels, create_store, open_store, write_influencers
    s = open_store(src)
    d = create_store(dst, s.group.attrs["dataset_root"], s.block)
    n, m = s.n_posts, s.n_influencers
    for name in schema.POST_STR + ["influencer"] + schema.POST_INT:
        a = s[f"posts/{name}"][:]
        if name == "id":
            parts = [a if k == 0 else np.array([f"{x}.{k}" for x in a], dtype=object) for k in range(times)]
        elif name == "influencer":
            parts = [a + k * m for k in range(times)]
        else:
            parts = [a] * times
        d[f"posts/{name}"].append(np.concatenate(parts))
    offsets = s["influencers/offsets"][:]
    table = {"username": np.concatenate([np.array([f"{u}.{k}" if k else str(u) for u in s["influencers/username"][:]],
                                                  dtype=object) for k in range(times)]),
             "offsets": np.concatenate([offsets[:-1] + k * n for k in range(times)] + [[times * n]]).astype(np.int64)}
    for name in schema.INFLUENCER_INT + ["release_category"]:
        table[name] = np.tile(s[f"influencers/{name}"][:], times)
    write_influencers(d, table)
    create_labels(d)
    create_features(d)
    d.group.attrs.update({k: v for k, v in s.group.attrs.items()
                          if k not in ("block", "dataset_root", "index_stats", "labels")})
