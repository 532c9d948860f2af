"""The dataset formats `extract index` reads, and which one a folder holds (docs/dataset.md).

Each format is a reader with one interface (extract.index drives it):
- `check()`: the one-line error when the folder is not of this format;
- `influencers()`: (rows, problems): the influencer list, in store order;
- `manifest(m)`: lists every post once through `m.add(user, key, a, b, n, where)`, problems through
  `m.problem(...)`; runs in the main process and reads names, not contents, where it can;
- `parse(user, rows)`: in a worker process, one influencer's manifest rows as store rows (dicts with
  posts/ fields and media_count) and problems;
- `name`, `count_posts` (whether an unknown posts count is the number of posts found).
"""
from __future__ import annotations

import os

from extract import crawl, jsonl, release
from runtime.errors import UserError

READERS = {"release": release.ReleaseSource, "instaloader": crawl.InstaloaderSource, "jsonl": jsonl.JsonlSource}


def detect(root: str) -> list[str]:
    """The formats whose files are at `root` (release: influencers.txt and the mapping; jsonl:
    posts.jsonl; instaloader: profile folders holding instaloader's metadata files)."""
    found = []
    if os.path.exists(os.path.join(root, release.INFLUENCERS_FILE)) or \
            os.path.exists(os.path.join(root, release.MAPPING_FILE)):
        found.append("release")
    if os.path.exists(os.path.join(root, jsonl.POSTS_FILE)):
        found.append("jsonl")
    if crawl.looks_like_crawl(root):
        found.append("instaloader")
    return found


def open_source(root: str, fmt: str | None = None):
    """The reader of the dataset at `root`: `fmt` when given, else the one format found there; one
    line naming what was found otherwise."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: no such folder")
    if fmt is not None:
        if fmt not in READERS:
            raise UserError(f"--format must be one of {', '.join(READERS)}; got {fmt!r}")
        source = READERS[fmt](root)
        source.check()
        return source
    found = detect(root)
    if not found:
        raise UserError(f"{root}: no dataset found: expected the release's influencers.txt and "
                        f"{release.MAPPING_FILE}, a {jsonl.POSTS_FILE}, or instaloader's profile folders "
                        f"(docs/dataset.md)")
    if len(found) > 1:
        raise UserError(f"{root}: holds files of {len(found)} formats ({', '.join(found)}); pass --format to say "
                        f"which to read")
    source = READERS[found[0]](root)
    source.check()
    return source
