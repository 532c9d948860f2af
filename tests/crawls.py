"""Instaloader crawls for the tests, written by instaloader itself (offline: `download_post` and
`save_metadata_json` from node dicts, `download_pictures=False`; the test writes the images, since
downloading them needs the network)."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

instaloader = __import__("pytest").importorskip("instaloader")
from instaloader import Instaloader, Post, Profile  # noqa: E402


def loader(root, compress: bool = True) -> Instaloader:
    pattern = os.path.join(str(root).replace("{", "{{").replace("}", "}}"), "{target}")
    return Instaloader(download_pictures=False, download_videos=False, download_video_thumbnails=False, quiet=True,
                       dirname_pattern=pattern, compress_json=compress, sleep=False)


def graphql_node(pid: str, ts: int, caption: str | None, likes: int = 10, comments: int = 2,
                 typename: str = "GraphImage", children: list[bool] | None = None, owner: str = "anna") -> dict:
    """The classic GraphQL media node (the release's `.info` keys)."""
    node = {"__typename": typename, "id": pid, "shortcode": f"C{pid[-8:]}", "is_video": typename == "GraphVideo",
            "display_url": "https://example.invalid/x.jpg",
            "edge_media_to_caption": {"edges": [] if caption is None else [{"node": {"text": caption}}]},
            "taken_at_timestamp": ts, "edge_media_preview_like": {"count": likes},
            "edge_media_to_comment": {"count": comments}, "owner": {"id": "1", "username": owner}}
    if children is not None:
        node["edge_sidecar_to_children"] = {"edges": [{"node": {"display_url": "u", "is_video": v}} for v in children]}
    return node


def _user(name: str) -> dict:
    return {"pk": "1", "username": name, "is_private": False, "full_name": name, "profile_pic_url": "u"}


def iphone_post(L: Instaloader, pid: str, ts: int, caption: str | None, likes: int, comments: int,
                media_type: int = 1, owner: str = "anna") -> Post:
    """The logged-in iPhone shape (`caption` a plain string, `date`, `comments`, `iphone_struct`)."""
    media = {"code": f"I{pid[-8:]}", "pk": pid, "media_type": media_type, "taken_at": ts,
             "caption": None if caption is None else {"text": caption}, "has_liked": False, "like_count": likes,
             "comment_count": comments, "user": _user(owner), "image_versions2": {"candidates": [{"url": "u"}]}}
    if media_type == 8:
        media["carousel_media"] = [{"media_type": 1, "image_versions2": {"candidates": [{"url": "u"}]}}] * 2
    return Post.from_iphone_struct(L.context, media)


def polaris_post(L: Instaloader, pid: str, ts: int, caption: str | None, likes: int, comments: int,
                 owner: str = "anna") -> Post:
    """4.16's anonymous shape: the raw Polaris media item normalised by instaloader (raw keys + legacy)."""
    media = {"code": f"P{pid[-8:]}", "pk": pid, "media_type": 1, "taken_at": ts,
             "caption": None if caption is None else {"text": caption}, "like_count": likes,
             "comment_count": comments, "user": {"pk": "1", "username": owner},
             "image_versions2": {"candidates": [{"url": "u"}]}}
    return Post(L.context, Post._normalize_post_data(media))


def save_post(L: Instaloader, post_or_node, target: str) -> None:
    post = post_or_node if isinstance(post_or_node, Post) else Post(L.context, post_or_node)
    L.download_post(post, target=target)


def save_profile(L: Instaloader, root, username: str, userid: str = "1", followers: int = 1000,
                 followees: int = 100, **extra) -> None:
    node = {"id": userid, "username": username, "full_name": username, "biography": "", "is_private": False,
            "edge_followed_by": {"count": followers}, "edge_follow": {"count": followees}, **extra}
    L.save_metadata_json(os.path.join(str(root), username, f"{username}_{userid}"), Profile(L.context, node))


def base_name(ts: int) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d_%H-%M-%S") + "_UTC"


def write_image(folder, name: str, seed: int = 0, fmt: str = "JPEG", size: int = 48) -> None:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format=fmt)
    with open(os.path.join(str(folder), name), "wb") as f:
        f.write(buf.getvalue())
