"""A tiny release-format dataset written by hand, for hostile-input tests and the fuzz suite."""
from __future__ import annotations

import json
import os

from extract import release

USERS = [("alice.cooks", "food"), ("bob_travels", "travel"), ("cara.fit", "fitness")]
POSTS_PER_USER = 3


def info_json(post_id: str, caption: str, ts: int, likes: int = 10, comments: int = 2) -> dict:
    return {"id": post_id, "taken_at_timestamp": ts, "is_video": False,
            "edge_media_to_caption": {"edges": [{"node": {"text": caption}}]},
            "edge_media_preview_like": {"count": likes}, "edge_media_to_parent_comment": {"count": comments}}


def post_ids(u: int) -> list[str]:
    return [f"{1000 + 10 * u + k}" for k in range(POSTS_PER_USER)]


def write_dataset(root: str) -> dict:
    """influencers.txt, the mapping, one .info and one (tiny, never decoded) .jpg per post.

    Returns {"files": {relative path: bytes}} so a test can corrupt one file and rewrite it."""
    files: dict[str, bytes] = {}
    lines = ["Username\tCategory\t#Followers\t#Followees\t#Posts", "=" * 40]
    mapping = ["Influencer_name\tJSON_PostMetadata_file_name\tImage_file_name"]
    for u, (user, cat) in enumerate(USERS):
        lines.append(f"{user}\t{cat}\t{1000 * (u + 1)}\t{10 + u}\t{POSTS_PER_USER}")
        for k, pid in enumerate(post_ids(u)):
            files[f"{release.INFO_DIR}/{user}-{pid}.info"] = json.dumps(
                info_json(pid, f"{cat} post {k} #{cat}", 1_600_000_000 + 1000 * u + k)).encode()
            files[f"{release.IMAGE_DIR}/{user}-{pid}.jpg"] = b"\xff\xd8 not decoded by index \xff\xd9"
            mapping.append(f"{user}\t{pid}.info\t['{pid}.jpg']")
    files[release.INFLUENCERS_FILE] = ("\n".join(lines) + "\n").encode()
    files[release.MAPPING_FILE] = ("\n".join(mapping) + "\n").encode()
    for d in (release.INFO_DIR, release.IMAGE_DIR):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for rel, data in files.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    return {"files": files}


def posts_by_user(store) -> dict[str, list[tuple]]:
    """What the store holds per influencer, comparable across runs."""
    users = [str(u) for u in store["influencers/username"][:]]
    off = store.offsets()
    cols = {k: store[f"posts/{k}"][:] for k in ("id", "caption", "image", "timestamp", "likes", "comments")}
    return {u: [tuple(str(cols[k][r]) if k in ("id", "caption", "image") else int(cols[k][r]) for k in cols)
                for r in range(off[j], off[j + 1])] for j, u in enumerate(users)}
