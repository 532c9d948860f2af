"""Reading a plain JSONL dataset: `posts.jsonl` (one post per line) and an optional
`influencers.jsonl` (one influencer per line), for every source that is neither the release nor an
instaloader crawl (docs/dataset.md, "A plain JSONL"). Standard library only.

posts.jsonl fields: `influencer` (str, required), `id` (str or int, required), `caption` (str),
`image` (a path relative to the file's folder, or a list of them: the first is encoded), `timestamp`
(Unix seconds), `likes`, `comments` (counts). influencers.jsonl: `username` (required), `followers`,
`followees`, `posts` (counts), `category` (one of the release's categories: what `cache labels
--from-release` draws from). A bad value is recorded in problems/ and stored as missing; a line that
is not a JSON object, or lacks a usable influencer or id, is recorded and skipped.
"""
from __future__ import annotations

import json
import os

from cache.schema import valid_image_path
from extract.reading import (InfluencerRow, Problem, clean_text, inside, json_count, json_id,
                             load_json_object, read_lines, safe_name)
from extract.release import influencer_name, release_category
from runtime.errors import UserError

POSTS_FILE = "posts.jsonl"
INFLUENCERS_FILE = "influencers.jsonl"
MAX_IMAGES = 64          # images listed for one post (a carousel has at most 20)


def _count(obj: dict, key: str, where: str, problems: list) -> int:
    if key not in obj or obj[key] is None:
        return -1
    value = json_count(obj[key])
    if value < 0:
        problems.append(("info_field_invalid", where, f"{key} {str(obj[key])[:30]}; stored as missing"))
    return value


def _flag(obj: dict, key: str, where: str, problems: list) -> int:
    """A boolean field: 1 true, 0 false, -1 missing (or not a boolean: recorded)."""
    if key not in obj or obj[key] is None:
        return -1
    if not isinstance(obj[key], bool):
        problems.append(("info_field_invalid", where, f"{key} {str(obj[key])[:30]} is not true/false; stored as "
                                                      f"unknown"))
        return -1
    return int(obj[key])


def read_influencer_lines(root: str) -> tuple[list[InfluencerRow], list[Problem]]:
    rows, problems, seen = [], [], set()
    path = os.path.join(root, INFLUENCERS_FILE)
    if not os.path.exists(path):
        return rows, problems
    for lineno, line, bad in read_lines(path):
        where = f"{INFLUENCERS_FILE}:{lineno}"
        if line is None or bad:
            problems.append(("influencer_row_malformed", where, bad or "not UTF-8"))
            continue
        if not line.strip():
            continue
        try:
            obj = load_json_object(line)
        except ValueError as e:
            problems.append(("influencer_row_malformed", where, str(e)))
            continue
        user = obj.get("username")
        if not influencer_name(user, where, seen, problems):
            continue
        category = release_category(obj.get("category"), where, problems, empty_is_unknown=False)
        counts = [_count(obj, k, where, problems) for k in ("followers", "followees", "posts")]
        rows.append(InfluencerRow(user, category, *counts))
    return rows, problems


def parse_post_line(line: str, where: str) -> tuple[dict | None, list[Problem]]:
    """One line of posts.jsonl as a store row ('image' the list of names as given); None if unusable."""
    problems: list[Problem] = []
    try:
        obj = load_json_object(line)
    except ValueError as e:
        return None, [("post_row_malformed", where, str(e))]
    user, post_id = obj.get("influencer"), json_id(obj.get("id"))
    if not isinstance(user, str) or not safe_name(user):
        return None, [("post_row_malformed", where, f"unusable influencer {str(user)[:80]!r}")]
    if not post_id or not safe_name(post_id):
        return None, [("post_row_malformed", where, f"unusable id {str(obj.get('id'))[:80]!r}")]
    caption = obj.get("caption")
    if caption is not None and not isinstance(caption, str):
        problems.append(("info_field_invalid", where, "caption is not a string; stored as missing"))
        caption = None
    text, replaced = clean_text(caption or "")
    if replaced:
        problems.append(("info_field_invalid", where, "caption has lone surrogates (replaced)"))
    images = obj.get("image")
    images = [images] if isinstance(images, str) else images
    if images is None:
        images = []
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images) or len(images) > MAX_IMAGES:
        problems.append(("info_field_invalid", where, f"image must be a path or a list of at most {MAX_IMAGES} "
                                                      f"paths; stored as no image"))
        images = []
    timestamp = _count(obj, "timestamp", where, problems)
    post = {"influencer": user, "id": post_id, "caption": text, "caption_missing": caption is None,
            "timestamp": timestamp,          # -1: unknown (sorted oldest for --max-posts)
            "likes": _count(obj, "likes", where, problems), "comments": _count(obj, "comments", where, problems),
            "images": images, "sponsored": _flag(obj, "sponsored", where, problems)}
    return post, problems


class JsonlSource:
    """posts.jsonl (+ influencers.jsonl) as one of `extract index`'s formats (extract.formats).

    The main process parses each line once (the influencer is on it); manifest rows: key the post id,
    a the parsed row (JSON), b where it was, n the number of images. Influencers: influencers.jsonl's
    rows in order, then those only posts.jsonl names (reported as not listed, as in the release)."""

    name = "jsonl"
    count_posts = True

    def __init__(self, root: str):
        self.root = root

    def check(self) -> None:
        if not os.path.isfile(os.path.join(self.root, POSTS_FILE)):
            raise UserError(f"{os.path.join(self.root, POSTS_FILE)}: missing")

    def influencers(self) -> tuple[list[InfluencerRow], list[Problem]]:
        return read_influencer_lines(self.root)

    def manifest(self, m) -> None:
        for lineno, line, bad in read_lines(os.path.join(self.root, POSTS_FILE)):
            where = f"{POSTS_FILE}:{lineno}"
            if line is None or bad:
                m.problem("post_row_malformed", where, bad or "not UTF-8")
                continue
            if not line.strip():
                continue
            post, problems = parse_post_line(line, where)
            for p in problems:
                m.problem(*p)
            if post is None:
                continue
            if not m.add(post["influencer"], post["id"], json.dumps(post, ensure_ascii=False), where,
                         len(post["images"]), where):
                m.problem("post_duplicate", where, f"{post['influencer']} {post['id']} is listed already")

    def parse(self, user: str, posts) -> tuple[list[dict], list[Problem]]:
        """Worker: check each post's image path (relative to the dataset root, inside it, a file)."""
        kept, problems = [], []
        for _, row, where, n_images in posts:
            post = json.loads(row)
            del post["influencer"]
            images = post.pop("images")
            post["image"] = ""
            post["media_count"] = n_images
            if post["caption_missing"]:
                problems.append(("caption_missing", where, ""))
            if images:
                rel = images[0].replace("\\", "/")
                full = os.path.join(self.root, rel)
                if not valid_image_path(rel) or not inside(self.root, full):
                    problems.append(("path_outside_dataset", clean_text(rel)[0][:200], f"at {where}"))
                elif not os.path.isfile(full):
                    problems.append(("image_missing", rel, f"at {where}"))
                else:
                    post["image"] = rel
            kept.append(post)
        return kept, problems
