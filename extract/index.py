"""`extract index DATASET STORE`: the release format into the store's post and influencer tables.

Memory stays bounded at 10 M posts: the list of posts lives in an on-disk SQLite
manifest (which also drops duplicate mapping rows), JSON files are parsed by worker
processes one group of influencers at a time, and rows are appended to the Zarr tables
in batches. Only the influencer table (34 K rows) is held whole.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sqlite3
import tempfile
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from cache import schema
from cache.store import create_features, create_labels, create_store, write_influencers
from extract import release
from extract.target import prepare_target
from runtime.cpus import usable_cpus
from runtime.errors import UserError
from runtime.progress import Progress

POSTS_PER_TASK = 2000   # posts handed to a worker at once: amortises IPC, keeps memory small
FLUSH_ROWS = 8192       # rows buffered before an append to the store: the bound on index's memory


@dataclass
class IndexReport:
    posts: int = 0
    influencers: int = 0
    problems: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.posts / self.seconds if self.seconds else 0.0
        lines = [f"indexed {self.posts} posts of {self.influencers} influencers in {self.seconds:.1f}s "
                 f"({rate:.0f} posts/s)"]
        if self.problems:
            lines.append("problems (listed in the store, see `cache info`): " +
                         ", ".join(f"{k} {v}" for k, v in sorted(self.problems.items())))
        return "\n".join(lines)


class _ProblemLog:
    """Buffers problems and appends them to the store's problems/ table in batches."""

    def __init__(self, store):
        self.store = store
        self.buffer: list[tuple[str, str, str]] = []
        self.counts: Counter = Counter()

    def add(self, kind: str, where: str, detail: str = "") -> None:
        self.counts[kind] += 1
        # names and details come from the release's text: lone surrogates (undecodable file names)
        # cannot be stored, so they are replaced, and each entry is bounded
        self.buffer.append((kind, release.clean_text(where)[0][:500], release.clean_text(detail)[0][:500]))
        if len(self.buffer) >= 4096:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        cols = list(zip(*self.buffer))
        for name, values in zip(("kind", "where", "detail"), cols):
            self.store[f"problems/{name}"].append(np.array(values, dtype=object))
        self.buffer.clear()


def _build_manifest(root: str, db: sqlite3.Connection, names: dict[str, int], extra: list[str],
                    problems: _ProblemLog) -> None:
    """Every (influencer, post) once, from the mapping and from info/ itself."""
    db.execute("CREATE TABLE m (infl INTEGER, json TEXT, image TEXT, src TEXT, PRIMARY KEY (infl, json))")

    def index_of(user: str, where: str) -> int:
        if user not in names:
            names[user] = len(names)
            extra.append(user)
            problems.add("influencer_not_listed", where, user)
        return names[user]

    cur = db.cursor()
    for row in release.iter_mapping(root):
        if len(row) == 3:
            problems.add(*row)
            continue
        where, user, json_name, images = row
        cur.execute("INSERT OR IGNORE INTO m VALUES (?,?,?,?)",
                    (index_of(user, where), json_name, images[0] if images else "", where))
        if cur.rowcount == 0:
            problems.add("mapping_duplicate", where, f"{user} {json_name}")
    # Posts whose .info exists but that the mapping does not list (the real mapping has
    # fewer rows than posts): indexed with no image.
    info_dir = os.path.join(root, release.INFO_DIR)
    if os.path.isdir(info_dir):
        with os.scandir(info_dir) as it:
            for entry in it:
                parts = release.split_info_name(entry.name)
                if parts is None:
                    continue
                user, json_name = parts
                where = f"{release.INFO_DIR}/{entry.name}"
                if not (release.safe_name(user) and release.safe_name(json_name)):
                    problems.add("info_name_unusable", where, "file name is not valid UTF-8 or not a plain name")
                    continue
                cur.execute("INSERT OR IGNORE INTO m VALUES (?,?,?,?)",
                            (index_of(user, where), json_name, None, where))
                if cur.rowcount:
                    problems.add("post_not_in_mapping", where, "indexed without image")
    db.commit()


def _parse_group(root: str, group: list[tuple[int, str, list[tuple[str, str | None, str]]]],
                 max_posts: int) -> tuple[list[tuple[int, list[dict]]], list[tuple[str, str, str]], int]:
    """Worker: parse the .info files of a few influencers; keep each one's newest posts."""
    out, problems = [], []
    for infl, user, posts in group:
        kept = []
        for json_name, image, where in posts:
            path = release.info_path(root, user, json_name)
            rel = f"{release.INFO_DIR}/{user}-{json_name}"
            if not release.inside(root, path):      # names are checked as they are read; this is the last guard
                problems.append(("path_outside_dataset", rel, f"listed at {where}"))
                continue
            try:
                data = release.read_regular(path, release.MAX_INFO_BYTES)
            except FileNotFoundError:
                problems.append(("info_missing", rel, f"listed at {where}"))
                continue
            except OSError as e:
                problems.append(("info_unreadable", rel, e.strerror or str(e)))
                continue
            except ValueError as e:
                problems.append(("info_malformed", rel, str(e)))
                continue
            try:
                post = release.parse_info(data)
            except ValueError as e:
                problems.append(("info_malformed", rel, str(e)))
                continue
            for bad in post.pop("bad_fields"):
                problems.append(("info_field_invalid", rel, f"{bad}; stored as missing" if "surrogate" not in bad
                                 else bad))
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
            image_path = os.path.join(root, release.image_relpath(user, image)) if image else ""
            if image == "":
                problems.append(("image_not_listed", rel, f"at {where}"))
            elif image is not None and not release.inside(root, image_path):
                problems.append(("path_outside_dataset", release.image_relpath(user, image), f"listed at {where}"))
            elif image is not None and not os.path.isfile(image_path):
                problems.append(("image_missing", release.image_relpath(user, image), f"listed at {where}"))
            elif image is not None:
                image_rel = release.image_relpath(user, image)
            post["image"] = image_rel
            kept.append(post)
        # Newest first; the post id breaks ties so the order is deterministic.
        kept.sort(key=lambda p: (p["timestamp"], p["id"]), reverse=True)
        out.append((infl, kept[:max_posts]))
    return out, problems, sum(len(posts) for _, _, posts in group)


def _groups(db: sqlite3.Connection, users: list[str]):
    """Tasks of whole influencers, about POSTS_PER_TASK posts each, in influencer order."""
    group, size = [], 0
    for infl, user in enumerate(users):
        posts = db.execute("SELECT json, image, src FROM m WHERE infl=? ORDER BY json", (infl,)).fetchall()
        group.append((infl, user, posts))
        size += len(posts)
        if size >= POSTS_PER_TASK:
            yield group
            group, size = [], 0
    if group:
        yield group


def _bounded_map(fn, tasks, workers: int):
    """Ordered map with at most 2×workers tasks in flight (Pool.imap would read all tasks ahead)."""
    if workers <= 1:
        for t in tasks:
            yield fn(t)
        return
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        window: deque = deque()
        for t in tasks:
            window.append(pool.submit(fn, t))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


class _Task:
    """Picklable callable for the worker pool."""

    def __init__(self, root: str, max_posts: int):
        self.root, self.max_posts = root, max_posts

    def __call__(self, group):
        return _parse_group(self.root, group, self.max_posts)


def run_index(dataset: str, url: str, *, max_posts: int = 300, block: int = schema.DEFAULT_BLOCK,
              workers: int | None = None, overwrite: bool = False, quiet: bool = False) -> IndexReport:
    start = time.perf_counter()
    root = os.path.abspath(dataset)
    if max_posts < 1:
        raise UserError("--max-posts must be at least 1")
    if block < 1 or block > schema.MAX_BLOCK or block % min(schema.FEATURE_CHUNK, block):
        raise UserError(f"--block must be a positive multiple of {schema.FEATURE_CHUNK} (or smaller than it), "
                        f"at most {schema.MAX_BLOCK:,}; got {block}")
    if workers is not None and workers < 0:
        raise UserError(f"--workers must be 0 or more, got {workers}")
    workers = usable_cpus() if workers is None else workers
    rows, infl_problems = release.read_influencers(root)
    if not os.path.exists(os.path.join(root, release.MAPPING_FILE)):
        raise UserError(f"{os.path.join(root, release.MAPPING_FILE)}: missing")
    lock = prepare_target(root, url, overwrite)
    try:
        return _index(root, url, rows, infl_problems, max_posts, block, workers, quiet, start,
                      mode="w" if lock is None else "a")
    finally:
        if lock is not None:
            os.close(lock)      # releases the lock


class _PostBatch:
    """Posts gathered in columns and appended to the store's post arrays every FLUSH_ROWS rows."""

    def __init__(self, store):
        self.store = store
        self.cols: dict[str, list] = {k: [] for k in schema.POST_STR + schema.POST_INT + ["influencer"]}
        self.written = 0

    def add(self, infl: int, post: dict) -> None:
        for k in schema.POST_STR + schema.POST_INT:
            self.cols[k].append(post[k])
        self.cols["influencer"].append(infl)
        if len(self.cols["id"]) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.cols["id"]:
            return
        for k, values in self.cols.items():
            dtype = object if k in schema.POST_STR else ("int32" if k == "influencer" else "int64")
            self.store[f"posts/{k}"].append(np.asarray(values, dtype=dtype))
        self.written += len(self.cols["id"])
        for v in self.cols.values():
            v.clear()


def _index(root, url, rows, infl_problems, max_posts, block, workers, quiet, start, mode) -> IndexReport:
    store = create_store(url, root, block, mode=mode)
    problems = _ProblemLog(store)
    for p in infl_problems:
        problems.add(*p)
    names = {r.username: i for i, r in enumerate(rows)}
    extra: list[str] = []
    tmp = tempfile.mkdtemp(prefix="influencer-index-")
    try:
        db = sqlite3.connect(os.path.join(tmp, "manifest.sqlite"))
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        _build_manifest(root, db, names, extra, problems)
        users = [r.username for r in rows] + extra
        total = db.execute("SELECT COUNT(*) FROM m").fetchone()[0]
        progress = Progress(total, "posts", "index", quiet=quiet)
        offsets = np.zeros(len(users) + 1, dtype=np.int64)
        batch = _PostBatch(store)
        for results, worker_problems, n_seen in _bounded_map(_Task(root, max_posts), _groups(db, users), workers):
            for p in worker_problems:
                problems.add(*p)
            for infl, posts in results:
                if not posts:
                    problems.add("influencer_no_posts", users[infl], "no readable post")
                offsets[infl + 1] = len(posts)
                for p in posts:
                    batch.add(infl, p)
            progress.update(n_seen, failures=len(worker_problems))
        batch.flush()
        progress.close()
        db.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    np.cumsum(offsets, out=offsets)
    n_written = batch.written
    assert offsets[-1] == n_written == store.n_posts, "posts appended out of step with offsets"
    _write_influencer_table(store, rows, users, extra, offsets)
    problems.flush()
    create_labels(store)
    create_features(store)
    seconds = time.perf_counter() - start
    store.group.attrs.update(
        release_categories=schema.RELEASE_CATEGORIES,
        max_posts=max_posts,
        index_stats={"posts": int(n_written), "influencers": len(users), "seconds": round(seconds, 2),
                     "problems": dict(problems.counts)},
        complete=True,
    )
    return IndexReport(int(n_written), len(users), problems.counts, seconds)


def _write_influencer_table(store, rows, users: list[str], extra: list[str], offsets: np.ndarray) -> None:
    """influencers/*: influencers.txt's rows, then the unlisted influencers whose posts were found (-1 counts)."""
    release_cat = {c: i for i, c in enumerate(schema.RELEASE_CATEGORIES)}
    pad = [-1] * len(extra)
    write_influencers(store, {
        "username": np.array(users, dtype=object),
        "offsets": offsets,
        "followers": np.array([r.followers for r in rows] + pad, dtype=np.int64),
        "followees": np.array([r.followees for r in rows] + pad, dtype=np.int64),
        "posts_total": np.array([r.posts_total for r in rows] + pad, dtype=np.int64),
        # The release's own category (model-assigned, not ground truth; -1 unknown),
        # indexing root attribute release_categories.
        "release_category": np.array([release_cat.get(r.category, -1) for r in rows] + pad, dtype=np.int8),
    })
