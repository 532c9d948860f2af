"""Reading a crawl made with instaloader (PyPI `instaloader`, 4.x): one folder per profile, as its
default `--dirname-pattern={target}` writes it (docs/dataset.md, "An instaloader crawl").

Only the standard library is needed (`lzma`, `json`). Per profile folder:
- a post's files share a base name `{date_utc}_UTC` (`%Y-%m-%d_%H-%M-%S`): `BASE.json.xz` (or
  `BASE.json`) its metadata, `BASE.jpg|.webp|.png` its image (or a video's thumbnail), `BASE_1.jpg`,
  `BASE_2.jpg`, ... a carousel's, `BASE.txt` its caption; `.mp4`, `BASE_comments.json`,
  `BASE_location.txt`, `BASE_old_NN.txt` (an edited caption's old text) and
  `BASE_profile_pic.jpg` are not read;
- `{username}_{userid}.json.xz` the profile (followers, followees, media count);
- `iterator_*.json.xz`: left by an interrupted crawl (reported once, not read).
Every JSON file is `{"node": {...}, "instaloader": {"node_type": ...}}`; a post's node comes in three
shapes (classic GraphQL, the logged-in iPhone one, 4.16's anonymous Polaris one), mapped by
`post_fields` with the key precedence instaloader's own `Post` properties use.

Nothing here raises on a bad file: problems are (kind, where, detail) tuples, as in extract.release.
"""
from __future__ import annotations

import json
import lzma
import os
import re
from calendar import timegm
from time import strptime

from extract.reading import (MAX_INFO_BYTES, InfluencerRow, Problem, clean_text, dig, inside, json_count, json_id,
                             load_json_object, read_or_report, read_regular, report_bad_fields, safe_name,
                             sponsored_flag)
from runtime.errors import UserError

BASE = r"(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})_UTC"
_META = re.compile(BASE + r"\.json(\.xz)?$")
_IMAGE = re.compile(BASE + r"(?:_(\d{1,4}))?\.(jpg|jpeg|png|webp|heic|gif)$", re.IGNORECASE)
_CAPTION = re.compile(BASE + r"\.txt$")
_PROFILE = re.compile(r"^(.+)_(\d{1,30})\.json(\.xz)?$")
MAX_XZ_BYTES = 64 << 20       # a post's .json.xz on disk (real ones are a few KB)
MAX_CAPTION_BYTES = 1 << 20   # BASE.txt


def read_json_file(path: str) -> dict:
    """The JSON object of a `.json` or `.json.xz` file, never holding more than MAX_INFO_BYTES of it
    decompressed: an xz bomb (a tiny file that expands to gigabytes) stops at the bound. ValueError
    (one line) for a truncated, oversized or malformed file; OSError when unreadable."""
    if not path.endswith(".xz"):
        return load_json_object(read_regular(path, MAX_INFO_BYTES))
    raw = read_regular(path, MAX_XZ_BYTES)
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_AUTO, memlimit=256 << 20)
    try:
        data = dec.decompress(raw, max_length=MAX_INFO_BYTES + 1)
    except lzma.LZMAError as e:
        raise UserError(f"not a valid .xz file ({e})") from None
    if len(data) > MAX_INFO_BYTES:
        raise UserError(f"decompresses to over {MAX_INFO_BYTES} bytes (not a post's metadata)")
    if not dec.eof:
        raise UserError("truncated .xz file")
    return load_json_object(data)


def unwrap(doc: dict) -> tuple[str, dict]:
    """(node_type, node) of instaloader's wrapper; ValueError when the file is not one."""
    node, info = doc.get("node"), doc.get("instaloader")
    if not isinstance(node, dict) or not isinstance(info, dict):
        raise UserError("not an instaloader metadata file (no node/instaloader keys)")
    kind = info.get("node_type")
    return (kind if isinstance(kind, str) else ""), node


def _first(*values):
    return next((v for v in values if v is not None), None)


def post_fields(node: dict) -> dict:
    """The store's fields from a post node of any of the three shapes. Key precedence (instaloader's):
    - id: `id`, then `pk`, then `shortcode`, then `code`;
    - time: `date`, then `taken_at_timestamp`, then `taken_at` (None: the caller uses the file name's);
    - caption: `edge_media_to_caption.edges[0].node.text`, then `caption` (a string, or Polaris' object's
      `text`); `caption_missing` when none is there;
    - likes: `edge_media_preview_like.count`, then `edge_liked_by.count`, then `like_count`;
    - comments: `edge_media_to_comment.count`, then `edge_media_to_parent_comment.count`, then
      `comments` (iPhone), then `comment_count`;
    - media count: `edge_sidecar_to_children.edges`, then `carousel_media`, else 1.
    `bad_fields` lists values present but unusable, `missing` the fields no known key holds."""
    bad, missing = [], []
    post_id = ""
    for key in ("id", "pk", "shortcode", "code"):
        post_id = json_id(node.get(key))
        if post_id:
            break
    ts_raw = _first(node.get("date"), node.get("taken_at_timestamp"), node.get("taken_at"))
    timestamp = json_count(ts_raw) if ts_raw is not None else None
    if ts_raw is not None and timestamp < 0:
        bad.append(f"timestamp {str(ts_raw)[:30]}")
        timestamp = None
    if ts_raw is None:
        missing.append("timestamp")
    caption = None
    edges = dig(node, "edge_media_to_caption", "edges")
    if isinstance(edges, list) and edges:
        caption = dig(edges, 0, "node", "text")
    elif "caption" in node:
        raw = node["caption"]
        caption = raw if isinstance(raw, str) else (raw.get("text") if isinstance(raw, dict) else None)
    elif isinstance(edges, list):
        caption = None          # an empty edge list: the post has no caption, not a missing key
    likes_raw = _first(dig(node, "edge_media_preview_like", "count"), dig(node, "edge_liked_by", "count"),
                       node.get("like_count"))
    comments_raw = _first(dig(node, "edge_media_to_comment", "count"),
                          dig(node, "edge_media_to_parent_comment", "count"),
                          node.get("comments") if not isinstance(node.get("comments"), (dict, list)) else None,
                          node.get("comment_count"))
    likes, comments = json_count(likes_raw), json_count(comments_raw)
    for name, raw, value in (("likes", likes_raw, likes), ("comments", comments_raw, comments)):
        if raw is None:
            missing.append(name)
        elif value < 0:
            bad.append(f"{name} {str(raw)[:30]}")
    if caption is None and "caption" not in node and not isinstance(edges, list):
        missing.append("caption")
    text, replaced = clean_text(caption if isinstance(caption, str) else "")
    if replaced:
        bad.append("caption has lone surrogates (replaced)")
    children = dig(node, "edge_sidecar_to_children", "edges")
    if not isinstance(children, list):
        children = node.get("carousel_media")
    media_count = len(children) if isinstance(children, list) and children else 1
    return {"id": post_id, "caption": text, "caption_missing": not isinstance(caption, str),
            "sponsored": sponsored_flag(node),
            "timestamp": timestamp, "likes": likes, "comments": comments, "media_count": media_count,
            "bad_fields": bad, "missing": missing}


def profile_counts(node: dict) -> tuple[int, int, int]:
    """(followers, followees, posts) of a profile node; -1 where unknown. GraphQL keys first, then the
    iPhone/Polaris ones (`follower_count`, `following_count`, `media_count`)."""
    followers = _first(dig(node, "edge_followed_by", "count"), node.get("follower_count"))
    followees = _first(dig(node, "edge_follow", "count"), node.get("following_count"))
    posts = _first(dig(node, "edge_owner_to_timeline_media", "count"), node.get("media_count"))
    return tuple(json_count(v) if v is not None else -1 for v in (followers, followees, posts))


def _timestamp_of(base: str) -> int:
    """The Unix time of a base name `YYYY-mm-dd_HH-MM-SS` (instaloader writes the post's UTC date)."""
    return timegm(strptime(base, "%Y-%m-%d_%H-%M-%S"))


def scan_profile(folder: str) -> tuple[dict[str, dict], list[str], bool, list[str]]:
    """The posts of one profile folder by base name ({"meta", "images": [(index, name)], "txt"}), the
    profile metadata files found, whether an interrupted crawl's iterator file is there, and the
    symbolic links among the crawl's files (never followed: one could lead outside the crawl). Reads
    names only."""
    posts: dict[str, dict] = {}
    profiles: list[str] = []
    links: list[str] = []
    interrupted = False
    with os.scandir(folder) as it:
        for entry in it:
            name = entry.name
            if entry.is_symlink():
                if _META.match(name) or _IMAGE.match(name) or _CAPTION.match(name) or _PROFILE.match(name):
                    links.append(name)
                continue
            if name.startswith("iterator_") and ".json" in name:
                interrupted = True
                continue
            m = _META.match(name)
            if m:
                post = posts.setdefault(m.group(1), {"meta": "", "images": [], "txt": ""})
                # BASE.json.xz and BASE.json both: the compressed one (instaloader's default) is read
                if not post["meta"] or name.endswith(".xz"):
                    post["meta"] = name
                continue
            m = _IMAGE.match(name)
            if m:
                if name.endswith("_profile_pic.jpg"):
                    continue
                post = posts.setdefault(m.group(1), {"meta": "", "images": [], "txt": ""})
                post["images"].append((int(m.group(2) or 0), name))
                continue
            m = _CAPTION.match(name)
            if m:
                posts.setdefault(m.group(1), {"meta": "", "images": [], "txt": ""})["txt"] = name
                continue
            if _PROFILE.match(name):
                profiles.append(name)
    return posts, sorted(profiles), interrupted, sorted(links)


def looks_like_crawl(root: str, limit: int = 64) -> bool:
    """Whether `root` holds profile folders instaloader would write (the first `limit` folders looked at)."""
    try:
        with os.scandir(root) as it:
            folders = [e.path for e, _ in zip((e for e in it if e.is_dir(follow_symlinks=False)), range(limit))]
    except OSError:
        return False
    for folder in folders:
        try:
            with os.scandir(folder) as it:
                if any(_META.match(e.name) or _PROFILE.match(e.name) for e in it):
                    return True
        except OSError:
            continue
    return False


class InstaloaderSource:
    """An instaloader crawl as one of `extract index`'s formats (extract.formats).

    Influencers are the profile folders (sorted by name; the folder name is the username, as
    instaloader's `{target}` is). Manifest rows: key the post's base name, a the first image's file
    name ('' none), b the metadata file and caption file names (JSON), n the number of images."""

    name = "instaloader"
    count_posts = True       # profiles seldom carry a posts count: the posts found stand in

    def __init__(self, root: str):
        self.root = root

    def check(self) -> None:
        if not os.path.isdir(self.root):
            raise UserError(f"{self.root}: not a folder")

    def _folders(self):
        with os.scandir(self.root) as it:
            entries = sorted((e for e in it if e.is_dir()), key=lambda e: e.name)
        for e in entries:
            yield e.name, e.path

    def influencers(self) -> tuple[list[InfluencerRow], list[Problem]]:
        rows, problems = [], []
        for name, path in self._folders():
            if name.startswith((".", "#", ":")) or not safe_name(name):
                # a hashtag (#tag), the feed (:feed) or a name that is not valid UTF-8: not one profile
                problems.append(("folder_not_a_profile", clean_text(name)[0][:200],
                                 "not a profile folder (a hashtag, :feed, hidden or an unusable name); skipped"))
                continue
            posts, profiles, interrupted, _ = scan_profile(path)
            if not posts and not profiles:
                problems.append(("folder_not_a_profile", name, "no instaloader metadata or post files; skipped"))
                continue
            if interrupted:
                problems.append(("crawl_interrupted", name, "an iterator_*.json.xz is left: the crawl of this "
                                 "profile was interrupted; posts found so far are indexed"))
            counts, detail = (-1, -1, -1), ""
            for prof in profiles:
                try:
                    kind, node = unwrap(read_json_file(os.path.join(path, prof)))
                except (OSError, ValueError) as e:
                    detail = f"{prof}: {getattr(e, 'strerror', None) or e}"
                    continue
                if kind == "Profile":
                    counts, detail = profile_counts(node), ""
                    break
            if counts == (-1, -1, -1):
                problems.append(("profile_missing" if not detail else "profile_malformed", name,
                                 detail or "no {username}_{userid}.json.xz: followers and followees unknown"))
            rows.append(InfluencerRow(name, "", *counts))
        return rows, problems

    def manifest(self, m) -> None:
        for name, path in self._folders():
            if name not in m.names:
                continue                      # skipped above
            posts, _, _, links = scan_profile(path)
            for link in links:
                m.problem("link_not_followed", clean_text(f"{name}/{link}")[0], "a symbolic link among a profile's "
                          "files is not read (it could lead outside the crawl)")
            for base in sorted(posts):
                post = posts[base]
                images = [n for _, n in sorted(post["images"])]
                where = f"{name}/{base}_UTC"
                if not post["meta"]:
                    m.problem("post_metadata_missing", where, "no .json.xz beside the post's files "
                              "(crawled with --no-metadata-json?): skipped")
                    continue
                m.add(name, base, images[0] if images else "", json.dumps([post["meta"], post["txt"]]),
                      len(images), where)

    def parse(self, user: str, posts) -> tuple[list[dict], list[Problem]]:
        """Worker: one profile folder's posts, as store rows."""
        kept, problems = [], []
        folder = os.path.join(self.root, user)
        for base, image, files, n_images in posts:
            meta, txt = json.loads(files)
            rel = f"{user}/{meta}"
            path = os.path.join(folder, meta)
            if not inside(self.root, path):
                problems.append(("path_outside_dataset", rel, ""))
                continue
            doc = read_or_report(lambda p: unwrap(read_json_file(p)), path, rel, problems, "vanished while indexing")
            if doc is None:
                continue
            kind, node = doc
            if kind != "Post":
                problems.append(("info_not_a_post", rel, f"node_type {kind[:40]!r}, not Post: skipped"))
                continue
            post = post_fields(node)
            report_bad_fields(post, rel, problems)
            missing = post.pop("missing")
            if len(missing) == 4:
                problems.append(("info_field_missing", rel, "no known caption, likes, comments or time key "
                                 "(an unknown node shape?); time taken from the file name"))
            if post["timestamp"] is None:
                post["timestamp"] = _timestamp_of(base)
            if not post["id"]:
                problems.append(("info_id_missing", rel, "no id, pk or shortcode: skipped"))
                continue
            if not safe_name(post["id"]):
                problems.append(("info_id_unusable", rel, f"id {post['id'][:40]!r} is not a plain name: skipped"))
                continue
            if post["caption_missing"] and txt:
                text = self._caption_file(os.path.join(folder, txt), problems, f"{user}/{txt}")
                if text is not None:
                    post["caption"], post["caption_missing"] = text, False
            if post["caption_missing"]:
                problems.append(("caption_missing", rel, ""))
            post["media_count"] = max(post["media_count"], n_images)
            post["image"] = f"{user}/{image}" if image else ""
            if not image:
                problems.append(("image_missing", rel, "no image file beside the metadata (--no-pictures?)"))
            kept.append(post)
        return kept, problems

    @staticmethod
    def _caption_file(path: str, problems: list, rel: str) -> str | None:
        try:
            data = read_regular(path, MAX_CAPTION_BYTES)
        except (OSError, ValueError) as e:
            problems.append(("caption_unreadable", rel, getattr(e, "strerror", None) or str(e)))
            return None
        text = data.decode("utf-8", "replace")
        return clean_text(text[:-1] if text.endswith("\n") else text)[0]
