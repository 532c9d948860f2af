"""Reading untrusted dataset files, for every format `extract index` reads (extract.formats): bounded
reads that never block, lines of bounded length, JSON values that are what they claim, names that
stay one path component, and problems as (kind, where, detail) tuples, never exceptions.
"""
from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass

from cache import schema
from runtime.errors import UserError

Problem = tuple[str, str, str]

INT64_MAX = 2**63 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_LINE = 1 << 20          # bytes of one line of a list file (influencers.txt, the mapping, JSONL); a longer line is a problem
MAX_INFO_BYTES = 16 << 20   # a post's metadata larger than this is not a media node (real ones are ~5 KB)


def clean_text(text: str) -> tuple[str, bool]:
    """`text` with lone UTF-16 surrogates (split emoji escapes in scraped JSON, undecodable file
    name bytes) replaced by U+FFFD, and whether any were: a store can only hold valid UTF-8.
    (json already joins a valid surrogate pair into one character, so any surrogate left is lone.)"""
    cleaned = _SURROGATE.sub("\ufffd", text)
    return cleaned, cleaned != text


def safe_name(name: str) -> bool:
    """A name from the release's text that may become part of a path: one plain path component
    (the store's one rule for post ids and usernames, which `cache import` applies too)."""
    return schema.valid_name(name)


def inside(root: str, path: str) -> bool:
    """Whether `path` lies inside the dataset root, by its text ('..' resolved, links not: a user
    may keep image/ on another disk behind a symbolic link; text from the release may not leave)."""
    base = os.path.normpath(os.path.abspath(root))
    return os.path.normpath(os.path.abspath(path)).startswith(base.rstrip(os.sep) + os.sep)


def read_regular(path: str, limit: int) -> bytes:
    """The bytes of a regular file, opened without blocking (a FIFO named like a post never hangs
    the job). Raises OSError naming what is wrong; ValueError when larger than `limit`."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError("not a regular file")
        if st.st_size > limit:
            raise UserError(f"{st.st_size} bytes, over the {limit}-byte limit")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit + 1)
    finally:
        os.close(fd)


def read_lines(path: str):
    """(line number, text) of a text file, each line at most MAX_LINE bytes and decoded as UTF-8.

    Yields (lineno, None, problem) for a line that is too long (skipped without holding it in
    memory) or not UTF-8 (decoded with replacement characters, so the row can still be used
    with its bad characters visible)."""
    with open(path, "rb") as f:
        lineno = 0
        while True:
            raw = f.readline(MAX_LINE)
            if not raw:
                return
            lineno += 1
            if len(raw) == MAX_LINE and not raw.endswith(b"\n"):
                while True:                      # skip the rest of the line, a bounded piece at a time
                    more = f.readline(MAX_LINE)
                    if not more or more.endswith(b"\n"):
                        break
                yield lineno, None, f"line longer than {MAX_LINE} bytes"
                continue
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\r\n"), None
            except UnicodeDecodeError:
                yield lineno, raw.decode("utf-8", "replace").rstrip("\r\n"), "not UTF-8"


@dataclass
class InfluencerRow:
    username: str
    category: str          # release category after fixing known typos ('' when unknown)
    followers: int         # -1 when missing or not a number
    followees: int
    posts_total: int



def dig(node, *keys):
    for k in keys:
        if isinstance(node, dict):
            node = node.get(k)
        elif isinstance(node, list) and isinstance(k, int) and -len(node) <= k < len(node):
            node = node[k]
        else:
            return None
    return node


def json_count(value, default: int = -1) -> int:
    """A JSON count: an integer (or an integral float) in 0..int64 max; anything else is `default`.

    `true` is not 1, 1e400 (inf) and 10**30 are not counts: they are reported, never stored."""
    if isinstance(value, bool):
        return default
    if isinstance(value, float):
        if not value.is_integer():
            return default
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        return default
    return value


def load_json_object(data: bytes | str) -> dict:
    """A JSON object from untrusted bytes; ValueError (one line) for anything else."""
    try:
        node = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    except RecursionError:
        raise UserError("JSON nested too deeply") from None
    if not isinstance(node, dict):
        raise UserError("JSON is not an object")
    return node


def json_id(value) -> str:
    """A post or user id from JSON: a string, or an integer written as one; '' otherwise or when it holds
    lone surrogates."""
    text = value if isinstance(value, str) else (str(value) if isinstance(value, int) and
                                                 not isinstance(value, bool) else "")
    text, bad = clean_text(text)
    return "" if bad else text



def sponsored_flag(node: dict) -> int:
    """Whether a media node is paid content: 1 yes, 0 no, -1 unknown (none of the keys present).
    Found on the release's `.info` files and the classic GraphQL nodes: `edge_media_to_sponsor_user.edges`
    (a non-empty list: the brand tagged as sponsor). Read where present, from instaloader's other node
    shapes (not seen on the sample): `is_paid_partnership`, `is_ad` (true), `sponsor_tags` (non-empty)."""
    known, paid = False, False
    edges = dig(node, "edge_media_to_sponsor_user", "edges")
    if isinstance(edges, list):
        known, paid = True, paid or bool(edges)
    for key in ("is_paid_partnership", "is_ad"):
        if isinstance(node.get(key), bool):
            known, paid = True, paid or node[key]
    tags = node.get("sponsor_tags")
    if isinstance(tags, list):
        known, paid = True, paid or bool(tags)
    return 1 if paid else (0 if known else -1)


def read_or_report(read, path: str, rel: str, problems: list, missing_detail: str):
    """`read(path)`, or None with the problem recorded: info_missing, info_unreadable, info_malformed."""
    try:
        return read(path)
    except FileNotFoundError:
        problems.append(("info_missing", rel, missing_detail))
    except OSError as e:
        problems.append(("info_unreadable", rel, e.strerror or str(e)))
    except ValueError as e:
        problems.append(("info_malformed", rel, str(e)))
    return None


def report_bad_fields(post: dict, rel: str, problems: list) -> None:
    """Record (and take out of `post`) the fields a parser found present but unusable."""
    for bad in post.pop("bad_fields"):
        problems.append(("info_field_invalid", rel, f"{bad}; stored as missing" if "surrogate" not in bad else bad))
