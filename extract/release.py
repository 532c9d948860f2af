"""Reading the released Instagram influencer dataset exactly as it is on disk (DATASET.md).

Nothing here raises on a bad row: every reader reports problems as (kind, where, detail)
tuples so `extract index` can count and list them and go on.
"""
from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass

from cache.schema import RELEASE_CATEGORIES, RELEASE_CATEGORY_FIXES

INFLUENCERS_FILE = "influencers.txt"
MAPPING_FILE = "JSON-Image_files_mapping.txt"
INFO_DIR = "info"
IMAGE_DIR = "image"

Problem = tuple[str, str, str]


@dataclass
class InfluencerRow:
    username: str
    category: str          # release category after fixing known typos ('' when unknown)
    followers: int         # -1 when missing or not a number
    followees: int
    posts_total: int


def _count(text: str) -> int:
    text = text.strip().replace(",", "")
    return int(text) if text.lstrip("-").isdigit() else -1


def read_influencers(root: str) -> tuple[list[InfluencerRow], list[Problem]]:
    """influencers.txt: a header line, a line of '=', then one tab-separated row per influencer."""
    path = os.path.join(root, INFLUENCERS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing; is {root} the dataset root (DATASET.md)?")
    rows: list[InfluencerRow] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if lineno == 1 or not line.strip() or set(line.strip()) == {"="}:
                continue
            cols = line.split("\t")
            where = f"{INFLUENCERS_FILE}:{lineno}"
            username = cols[0].strip()
            if not username:
                problems.append(("influencer_row_malformed", where, line[:80]))
                continue
            if username in seen:
                problems.append(("influencer_duplicate", where, username))
                continue
            seen.add(username)
            category = cols[1].strip().lower() if len(cols) > 1 else ""
            if category in RELEASE_CATEGORY_FIXES:
                problems.append(("category_misspelt", where, f"{category} -> {RELEASE_CATEGORY_FIXES[category]}"))
                category = RELEASE_CATEGORY_FIXES[category]
            elif category not in RELEASE_CATEGORIES:
                problems.append(("category_unknown", where, category or "(empty)"))
                category = ""
            counts = [_count(cols[i]) if len(cols) > i else -1 for i in (2, 3, 4)]
            if -1 in counts:
                missing = [n for n, c in zip(("#Followers", "#Followees", "#Posts"), counts) if c == -1]
                problems.append(("influencer_count_missing", where, f"{username}: {', '.join(missing)}"))
            rows.append(InfluencerRow(username, category, *counts))
    return rows, problems


def parse_image_list(text: str) -> list[str]:
    """Column 3 of the mapping: a Python list literal of file names (never eval'd)."""
    text = text.strip()
    if not text:
        return []
    value = ast.literal_eval(text)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a list of file names")
    return list(value)


def iter_mapping(root: str):
    """Yield (where, influencer, json_name, images) per mapping row, or a Problem for bad rows."""
    path = os.path.join(root, MAPPING_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing; is {root} the dataset root (DATASET.md)?")
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if lineno == 1:
                continue
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            where = f"{MAPPING_FILE}:{lineno}"
            cols = line.split("\t")
            if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
                yield ("mapping_row_malformed", where, line[:80])
                continue
            try:
                images = parse_image_list(cols[2]) if len(cols) > 2 else []
            except (ValueError, SyntaxError):
                yield ("mapping_row_malformed", where, f"bad image list {cols[2][:60]!r}")
                continue
            yield where, cols[0].strip(), cols[1].strip(), images


def info_path(root: str, influencer: str, json_name: str) -> str:
    return os.path.join(root, INFO_DIR, f"{influencer}-{json_name}")


def image_relpath(influencer: str, image_name: str) -> str:
    return f"{IMAGE_DIR}/{influencer}-{image_name}"


def split_info_name(name: str) -> tuple[str, str] | None:
    """'user.name_1-123.info' -> ('user.name_1', '123.info'); usernames have no '-'."""
    if not name.endswith(".info") or "-" not in name:
        return None
    user, _, json_name = name.rpartition("-")
    return (user, json_name) if user and json_name != ".info" else None


def _dig(node, *keys):
    for k in keys:
        if isinstance(node, dict):
            node = node.get(k)
        elif isinstance(node, list) and isinstance(k, int) and -len(node) <= k < len(node):
            node = node[k]
        else:
            return None
    return node


def _int(value, default: int = -1) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def parse_info(data: bytes | str) -> dict:
    """The fields the store keeps from one post's media node. Raises ValueError if unusable."""
    try:
        node = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(node, dict):
        raise ValueError("JSON is not an object")
    timestamp = _int(node.get("taken_at_timestamp"))
    if timestamp < 0:
        raise ValueError("no taken_at_timestamp")
    caption = _dig(node, "edge_media_to_caption", "edges", 0, "node", "text")
    comments = _dig(node, "edge_media_to_parent_comment", "count")
    if comments is None:
        comments = _dig(node, "edge_media_preview_comment", "count")
    return {
        "id": str(node.get("id") or ""),
        "caption": caption if isinstance(caption, str) else "",
        "caption_missing": not isinstance(caption, str),
        "timestamp": timestamp,
        "likes": _int(_dig(node, "edge_media_preview_like", "count")),
        "comments": _int(comments),
        "is_video": bool(node.get("is_video")),
    }
