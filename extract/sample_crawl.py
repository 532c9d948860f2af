"""`extract sample-data OUT --format instaloader`: the sample dataset laid out as instaloader writes
a crawl (one folder per profile; extract.crawl reads it), written by instaloader's own writer
(`Instaloader.download_post`, `save_metadata_json`; offline: pictures are copied, never downloaded)
when instaloader is installed, and by an equivalent writer of the same files otherwise.

What a real crawl holds is planted too (unless --clean): carousels and video thumbnails (from the
release sample), some images as WebP, a profile without its metadata file, a profile crawled with
--no-compress-json (plain .json), an edited caption (`_old_01.txt`), a leftover `iterator_*.json.xz`,
an unreadable (truncated) `.json.xz`. labels/ holds the same label CSVs as the release sample.
"""
from __future__ import annotations

import json
import lzma
import os
import shutil
import tempfile
from datetime import datetime, timezone

from PIL import Image

from extract import release
from extract.sample import make_sample


def _writer(out: str, compress: bool):
    """instaloader's own writer, or None when instaloader is not installed."""
    try:
        import instaloader
    except ImportError:
        return None
    pattern = os.path.join(out.replace("{", "{{").replace("}", "}}"), "{target}")
    return instaloader.Instaloader(download_pictures=False, download_videos=False, download_video_thumbnails=False,
                                   quiet=True, dirname_pattern=pattern, compress_json=compress, sleep=False)


def _save(loader, out: str, user: str, base: str, kind: str, node: dict, compress: bool) -> None:
    """BASE.json(.xz) (and for a post its caption file BASE.txt) as instaloader writes them."""
    folder = os.path.join(out, user)
    os.makedirs(folder, exist_ok=True)
    if loader is not None:
        from instaloader import Post, Profile
        if kind == "Post":
            loader.download_post(Post(loader.context, node), target=user)
        else:
            loader.save_metadata_json(os.path.join(folder, base), Profile(loader.context, node))
        return
    doc = {"node": node, "instaloader": {"version": "4.16", "node_type": kind}}
    path = os.path.join(folder, base + (".json.xz" if compress else ".json"))
    if compress:
        with lzma.open(path, "wt", check=lzma.CHECK_NONE) as f:
            json.dump(doc, f, separators=(",", ":"))
    else:
        with open(path, "w") as f:
            json.dump(doc, f, indent=4, sort_keys=True)
    caption = (node.get("edge_media_to_caption") or {}).get("edges") or []
    text = caption[0]["node"]["text"].strip() if caption else ""
    if kind == "Post" and text:
        with open(os.path.join(folder, base + ".txt"), "w", encoding="utf-8") as f:
            f.write(text + "\n")


def make_crawl_sample(out: str, influencers: int = 48, posts: int = 30, seed: int = 0, *,
                      image_size: int = 256, clean: bool = False) -> dict:
    """Write the crawl; returns counts of what was written."""
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="sample-release-")
    try:
        make_sample(tmp, influencers, posts, seed, image_size=image_size, clean=True)
        rows, _ = release.read_influencers(tmp)
        mapping = {}
        for row in release.iter_mapping(tmp):
            if len(row) == 4:
                mapping.setdefault(row[1], []).append((row[2], row[3]))
        shutil.copytree(os.path.join(tmp, "labels"), os.path.join(out, "labels"), dirs_exist_ok=True)
        counts = {"profiles": 0, "posts": 0, "images": 0}
        for i, row in enumerate(rows):
            plain = not clean and i % 5 == 4          # crawled with --no-compress-json
            loader = _writer(out, compress=not plain)
            owner = str(10_000 + i)
            folder = os.path.join(out, row.username)
            os.makedirs(folder, exist_ok=True)
            if clean or i != 2:                       # one profile's metadata file is missing
                profile = {"id": owner, "username": row.username, "full_name": row.username.title(),
                           "biography": "", "is_verified": False, "is_business_account": False,
                           "business_category_name": None, "is_private": False,
                           "edge_followed_by": {"count": row.followers}, "edge_follow": {"count": row.followees}}
                _save(loader, out, row.username, f"{row.username}_{owner}", "Profile", profile, not plain)
            counts["profiles"] += 1
            for n_post, (json_name, images) in enumerate(mapping.get(row.username, [])):
                with open(release.info_path(tmp, row.username, json_name), "rb") as f:
                    node = json.load(f)
                base = datetime.fromtimestamp(node["taken_at_timestamp"], timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
                base += "_UTC"
                if os.path.exists(os.path.join(folder, base + ".json.xz")) or \
                        os.path.exists(os.path.join(folder, base + ".json")):
                    continue                          # two posts in one second: instaloader keeps one
                if len(images) > 1:
                    node["__typename"] = "GraphSidecar"
                    node["edge_sidecar_to_children"] = {"edges": [{"node": {"display_url": "", "is_video": False}}
                                                                  for _ in images]}
                node["display_url"] = ""
                _save(loader, out, row.username, base, "Post", node, not plain)
                webp = not clean and n_post % 6 == 5
                for k, name in enumerate(images):
                    src = os.path.join(tmp, release.image_relpath(row.username, name))
                    stem = base if len(images) == 1 else f"{base}_{k + 1}"
                    if webp:
                        Image.open(src).convert("RGB").save(os.path.join(folder, stem + ".webp"), "WEBP", quality=85)
                    else:
                        shutil.copyfile(src, os.path.join(folder, stem + ".jpg"))
                    counts["images"] += 1
                edges = node["edge_media_to_caption"]["edges"]
                if not clean and n_post == 1 and edges and edges[0]["node"]["text"].strip():
                    # the caption edited since the last crawl: crawled again, instaloader keeps the old
                    # caption file as BASE_old_01.txt and writes the new caption and metadata
                    edges[0]["node"]["text"] = "edited: " + edges[0]["node"]["text"]
                    if loader is None:
                        os.rename(os.path.join(folder, base + ".txt"), os.path.join(folder, base + "_old_01.txt"))
                    _save(loader, out, row.username, base, "Post", node, not plain)
                counts["posts"] += 1
            if not clean and i == 1:
                with open(os.path.join(folder, "iterator_abc123.json.xz"), "wb") as f:
                    f.write(lzma.compress(b'{"node": {}, "instaloader": {"node_type": "FrozenNodeIterator"}}'))
            if not clean and i == 3:
                metas = sorted(n for n in os.listdir(folder) if n.endswith("_UTC.json.xz"))
                if metas:
                    path = os.path.join(folder, metas[0])
                    data = open(path, "rb").read()
                    with open(path, "wb") as f:
                        f.write(data[: len(data) // 2])
        return counts
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
