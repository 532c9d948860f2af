"""Reading the released Instagram influencer dataset exactly as it is on disk (DATASET.md).

Nothing here raises on a bad row: every reader reports problems as (kind, where, detail)
tuples so `extract index` can count and list them and go on.
"""
from __future__ import annotations

import os

from cache.schema import RELEASE_CATEGORIES, RELEASE_CATEGORY_FIXES
from extract.reading import (INT64_MAX, MAX_INFO_BYTES, MAX_LINE, InfluencerRow, Problem,  # noqa: F401
                             clean_text, dig, inside, json_count, json_id, load_json_object, read_lines,
                             read_or_report, read_regular, report_bad_fields, safe_name, sponsored_flag)
from runtime.errors import UserError

INFLUENCERS_FILE = "influencers.txt"
MAPPING_FILE = "JSON-Image_files_mapping.txt"
INFO_DIR = "info"
IMAGE_DIR = "image"

def _count(text: str) -> int:
    """A count column: digits (with thousands commas) within int64, else -1."""
    text = text.strip().replace(",", "")
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        return -1
    value = int(text)
    return value if value <= INT64_MAX else -1


def influencer_name(user, where: str, seen: set, problems: list) -> bool:
    """Whether a row's username is usable (one plain name) and new; records why not. Shared by the
    influencer lists of every format."""
    if not isinstance(user, str) or not safe_name(user):
        problems.append(("influencer_row_malformed", where, f"unusable username {str(user)[:80]!r}"))
        return False
    if user in seen:
        problems.append(("influencer_duplicate", where, user))
        return False
    seen.add(user)
    return True


def release_category(raw, where: str, problems: list, empty_is_unknown: bool) -> str:
    """A list's category as one of RELEASE_CATEGORIES (known typos fixed, recorded), '' when unknown."""
    category = raw.strip().lower() if isinstance(raw, str) else ""
    if category in RELEASE_CATEGORY_FIXES:
        problems.append(("category_misspelt", where, f"{category} -> {RELEASE_CATEGORY_FIXES[category]}"))
        return RELEASE_CATEGORY_FIXES[category]
    if category not in RELEASE_CATEGORIES and (category or empty_is_unknown):
        problems.append(("category_unknown", where, category[:80] or "(empty)"))
        return ""
    return category


def read_influencers(root: str) -> tuple[list[InfluencerRow], list[Problem]]:
    """influencers.txt: a header line, a line of '=', then one tab-separated row per influencer."""
    path = os.path.join(root, INFLUENCERS_FILE)
    if not os.path.exists(path):
        raise UserError(f"{path}: missing; is {root} the dataset root (DATASET.md)?")
    rows: list[InfluencerRow] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for lineno, line, bad in read_lines(path):
        where = f"{INFLUENCERS_FILE}:{lineno}"
        if line is None:
            problems.append(("influencer_row_malformed", where, bad))
            continue
        if bad:
            problems.append(("influencer_row_not_utf8", where, line[:80]))
        if lineno == 1 or not line.strip() or set(line.strip()) == {"="}:
            continue
        cols = line.split("\t")
        username = cols[0].strip()
        if not influencer_name(username, where, seen, problems):
            continue
        category = release_category(cols[1] if len(cols) > 1 else "", where, problems, empty_is_unknown=True)
        counts = [_count(cols[i]) if len(cols) > i else -1 for i in (2, 3, 4)]
        if -1 in counts:
            missing = [n for n, c in zip(("#Followers", "#Followees", "#Posts"), counts) if c == -1]
            problems.append(("influencer_count_missing", where, f"{username}: {', '.join(missing)}"))
        rows.append(InfluencerRow(username, category, *counts))
    return rows, problems


def parse_image_list(text: str) -> list[str]:
    """Column 3 of the mapping: a Python list literal of quoted file names, e.g. ['1.jpg', '2.jpg'].

    A plain parser of that one tiny grammar (never eval, never ast: no recursion, no numbers,
    no expressions); raises ValueError on anything else.
    """
    text = text.strip()
    if not text:
        return []
    if len(text) < 2 or text[0] != "[" or text[-1] != "]":
        raise UserError("not a list")
    body, names, i = text[1:-1], [], 0
    while True:
        while i < len(body) and body[i] in " \t":
            i += 1
        if i == len(body):
            if names and body.rstrip().endswith(","):
                pass                       # a trailing comma, as Python allows
            return names
        quote = body[i]
        if quote not in "'\"":
            raise UserError("list items must be quoted file names")
        end = body.find(quote, i + 1)
        if end < 0:
            raise UserError("unterminated string")
        name = body[i + 1:end]
        if "\\" in name:
            raise UserError("escapes in file names are not supported")
        names.append(name)
        i = end + 1
        while i < len(body) and body[i] in " \t":
            i += 1
        if i < len(body):
            if body[i] != ",":
                raise UserError("items must be separated by commas")
            i += 1


def iter_mapping(root: str):
    """Yield (where, influencer, json_name, images) per mapping row, or a Problem for bad rows."""
    path = os.path.join(root, MAPPING_FILE)
    if not os.path.exists(path):
        raise UserError(f"{path}: missing; is {root} the dataset root (DATASET.md)?")
    for lineno, line, bad in read_lines(path):
        where = f"{MAPPING_FILE}:{lineno}"
        if line is None:
            yield ("mapping_row_malformed", where, bad)
            continue
        if lineno == 1 or not line.strip():
            continue
        if bad:
            yield ("mapping_row_malformed", where, f"not UTF-8: {line[:60]!r}")
            continue
        cols = line.split("\t")
        if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
            yield ("mapping_row_malformed", where, line[:80])
            continue
        try:
            images = parse_image_list(cols[2]) if len(cols) > 2 else []
        except ValueError as e:
            yield ("mapping_row_malformed", where, f"bad image list {cols[2][:60]!r}: {e}")
            continue
        user, json_name = cols[0].strip(), cols[1].strip()
        unsafe = [n for n in [user, json_name] + images if not safe_name(n)]
        if unsafe:
            # names become paths under the dataset root: a separator or '..' would reach outside it
            yield ("mapping_row_unsafe", where, f"name is not a plain file name: {unsafe[0][:60]!r}")
            continue
        yield where, user, json_name, images


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


def parse_info(data: bytes | str) -> dict:
    """The fields the store keeps from one post's media node. Raises ValueError if unusable.

    `bad_fields` lists fields present but unusable (counts out of range or not integers,
    text with lone surrogates, replaced); the caller records them as problems.
    """
    node = load_json_object(data)
    timestamp = json_count(node.get("taken_at_timestamp"))
    if timestamp < 0:
        raise UserError("no usable taken_at_timestamp" if "taken_at_timestamp" in node else "no taken_at_timestamp")
    caption = dig(node, "edge_media_to_caption", "edges", 0, "node", "text")
    bad = []
    likes_raw = dig(node, "edge_media_preview_like", "count")
    comments_raw = dig(node, "edge_media_to_parent_comment", "count")
    if comments_raw is None:
        comments_raw = dig(node, "edge_media_preview_comment", "count")
    likes, comments = json_count(likes_raw), json_count(comments_raw)
    if likes_raw is not None and likes < 0:
        bad.append(f"likes {str(likes_raw)[:30]}")
    if comments_raw is not None and comments < 0:
        bad.append(f"comments {str(comments_raw)[:30]}")
    text = caption if isinstance(caption, str) else ""
    text, replaced = clean_text(text)
    if replaced:
        bad.append("caption has lone surrogates (replaced)")
    return {
        "sponsored": sponsored_flag(node),
        "id": json_id(node.get("id")),
        "caption": text,
        "caption_missing": not isinstance(caption, str),
        "timestamp": timestamp,
        "likes": likes,
        "comments": comments,
        "is_video": node.get("is_video") is True,
        "bad_fields": bad,
    }


class ReleaseSource:
    """The release's layout as one of `extract index`'s formats (extract.formats): influencers.txt,
    the mapping, info/ and image/. Manifest rows: key the .info file name, a the first image's file
    name (None for a post found in info/ only, '' for a mapping row without images), b where it was
    listed, n the number of images listed."""

    name = "release"
    count_posts = False     # influencers.txt has a #Posts column

    def __init__(self, root: str):
        self.root = root

    def check(self) -> None:
        for name in (INFLUENCERS_FILE, MAPPING_FILE):
            if not os.path.exists(os.path.join(self.root, name)):
                raise UserError(f"{os.path.join(self.root, name)}: missing; is {self.root} the dataset root "
                                f"(docs/dataset.md)?")

    def influencers(self) -> tuple[list[InfluencerRow], list[Problem]]:
        return read_influencers(self.root)

    def manifest(self, m) -> None:
        """Every (influencer, post) once, from the mapping and from info/ itself."""
        for row in iter_mapping(self.root):
            if len(row) == 3:
                m.problem(*row)
                continue
            where, user, json_name, images = row
            if not m.add(user, json_name, images[0] if images else "", where, len(images), where):
                m.problem("mapping_duplicate", where, f"{user} {json_name}")
        # Posts whose .info exists but that the mapping does not list (the real mapping has
        # fewer rows than posts): indexed with no image.
        info_dir = os.path.join(self.root, INFO_DIR)
        if os.path.isdir(info_dir):
            with os.scandir(info_dir) as it:
                for entry in it:
                    parts = split_info_name(entry.name)
                    if parts is None:
                        continue
                    user, json_name = parts
                    where = f"{INFO_DIR}/{entry.name}"
                    if not (safe_name(user) and safe_name(json_name)):
                        m.problem("info_name_unusable", where, "file name is not valid UTF-8 or not a plain name")
                        continue
                    if m.add(user, json_name, None, where, 0, where):
                        m.problem("post_not_in_mapping", where, "indexed without image")

    def parse(self, user: str, posts) -> tuple[list[dict], list[Problem]]:
        """Worker: the .info files of one influencer's listed posts, as store rows."""
        root, kept, problems = self.root, [], []
        for json_name, image, where, n_images in posts:
            path = info_path(root, user, json_name)
            rel = f"{INFO_DIR}/{user}-{json_name}"
            if not inside(root, path):      # names are checked as they are read; this is the last guard
                problems.append(("path_outside_dataset", rel, f"listed at {where}"))
                continue
            post = read_or_report(lambda p: parse_info(read_regular(p, MAX_INFO_BYTES)), path, rel, problems,
                                  f"listed at {where}")
            if post is None:
                continue
            report_bad_fields(post, rel, problems)
            if post["caption_missing"]:
                problems.append(("caption_missing", rel, ""))
            file_id = json_name.rsplit(".", 1)[0]
            if post["id"] and post["id"] != file_id:
                # the file name is the key the mapping and the label files use: a disagreeing id would
                # store one post twice and label the wrong one
                problems.append(("info_id_mismatch", rel, f"id {post['id'][:40]!r} is not the file's {file_id!r}; "
                                 f"the file name's id is kept"))
            post["id"] = file_id
            image_rel = ""     # image None: found in info/ only, already listed as post_not_in_mapping
            image_path = os.path.join(root, image_relpath(user, image)) if image else ""
            if image == "":
                problems.append(("image_not_listed", rel, f"at {where}"))
            elif image is not None and not inside(root, image_path):
                problems.append(("path_outside_dataset", image_relpath(user, image), f"listed at {where}"))
            elif image is not None and not os.path.isfile(image_path):
                problems.append(("image_missing", image_relpath(user, image), f"listed at {where}"))
            elif image is not None:
                image_rel = image_relpath(user, image)
            post["image"] = image_rel
            post["media_count"] = n_images
            kept.append(post)
        return kept, problems

