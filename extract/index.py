"""`extract index DATASET STORE`: a dataset (the release, an instaloader crawl or a JSONL file; see
extract.formats) into the store's post and influencer tables.

Memory stays bounded at 10 M posts: the list of posts lives in an on-disk SQLite
manifest (which also drops duplicate rows), JSON files are parsed by worker
processes one group of influencers at a time (by the format's reader), and rows are appended to the Zarr tables
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
from cache.store import create_features, create_labels, create_post_extras, create_store, write_influencers
from extract import formats, release
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


class Manifest:
    """The posts to read, on disk (SQLite, so memory stays flat at 10 M posts): each (influencer, key)
    once, with two text columns and an image count whose meaning is the format reader's own
    (`extract.formats`). Influencers are numbered in the order they are first met."""

    def __init__(self, db: sqlite3.Connection, names: dict[str, int], extra: list[str], problems: _ProblemLog):
        self.db, self.names, self.extra, self.problems = db, names, extra, problems
        db.execute("CREATE TABLE m (infl INTEGER, key TEXT, a TEXT, b TEXT, n INTEGER, PRIMARY KEY (infl, key))")
        self.cur = db.cursor()

    def influencer(self, user: str, where: str) -> int:
        """The number of `user`; an influencer the influencer list does not name is added (and reported)."""
        if user not in self.names:
            self.names[user] = len(self.names)
            self.extra.append(user)
            self.problems.add("influencer_not_listed", where, user)
        return self.names[user]

    def add(self, user: str, key: str, a, b, n: int, where: str) -> bool:
        """List a post; False (nothing listed) when (user, key) is listed already."""
        self.cur.execute("INSERT OR IGNORE INTO m VALUES (?,?,?,?,?)", (self.influencer(user, where), key, a, b, n))
        return self.cur.rowcount > 0

    def problem(self, kind: str, where: str, detail: str = "") -> None:
        self.problems.add(kind, where, detail)


class _UniqueIds:
    """Post ids already stored (on disk): a post id is unique per store, the first influencer keeps it."""

    def __init__(self, db: sqlite3.Connection):
        db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY)")
        self.cur = db.cursor()

    def first(self, post_id: str) -> bool:
        self.cur.execute("INSERT OR IGNORE INTO ids VALUES (?)", (post_id,))
        return self.cur.rowcount > 0


def _groups(db: sqlite3.Connection, users: list[str]):
    """Tasks of whole influencers, about POSTS_PER_TASK posts each, in influencer order."""
    group, size = [], 0
    for infl, user in enumerate(users):
        posts = db.execute("SELECT key, a, b, n FROM m WHERE infl=? ORDER BY key", (infl,)).fetchall()
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


def image_signature(root: str, rel: str) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of a post's image, (-1, -1) without one: what
    `extract index --update` compares to tell an unchanged image from a replaced one."""
    if not rel:
        return -1, -1
    try:
        st = os.stat(os.path.join(root, rel))
    except OSError:
        return -1, -1
    return int(st.st_size), int(st.st_mtime_ns)


class _Task:
    """Picklable callable for the worker pool: a format reader's parse of a few influencers, each
    one's newest `max_posts` posts kept (newest first; the post id breaks ties so the order is
    deterministic)."""

    def __init__(self, source, max_posts: int):
        self.source, self.max_posts = source, max_posts

    def __call__(self, group):
        out, problems = [], []
        for infl, user, posts in group:
            kept, found = self.source.parse(user, posts)
            problems.extend(found)
            for p in kept:
                p["image_bytes"], p["image_mtime"] = image_signature(self.source.root, p["image"])
            kept.sort(key=lambda p: (p["timestamp"], p["id"]), reverse=True)
            out.append((infl, kept[:self.max_posts], len(kept)))
        return out, problems, sum(len(posts) for _, _, posts in group)


def run_index(dataset: str, url: str, *, max_posts: int = 300, block: int = schema.DEFAULT_BLOCK,
              workers: int | None = None, overwrite: bool = False, quiet: bool = False,
              format: str | None = None) -> IndexReport:
    """Index DATASET (any of `extract.formats`, detected unless `format` names one) into a new store."""
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
    source = formats.open_source(root, format)
    rows, infl_problems = source.influencers()
    lock = prepare_target(root, url, overwrite)
    try:
        return _index(source, url, rows, infl_problems, max_posts=max_posts, block=block, workers=workers, quiet=quiet,
                      start=start, mode="w" if lock is None else "a")
    finally:
        if lock is not None:
            os.close(lock)      # releases the lock


class _PostBatch:
    """Posts gathered in columns and appended to the store's post arrays every FLUSH_ROWS rows."""

    def __init__(self, store):
        self.store = store
        self.cols: dict[str, list] = {k: [] for k in schema.POST_STR + schema.POST_INT + ["influencer"] + schema.POST_EXTRA}
        self.written = 0

    def add(self, infl: int, post: dict) -> None:
        for k in schema.POST_STR + schema.POST_INT + schema.POST_EXTRA:
            self.cols[k].append(post[k])
        self.cols["influencer"].append(infl)
        if len(self.cols["id"]) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.cols["id"]:
            return
        for k, values in self.cols.items():
            dtype = object if k in schema.POST_STR else schema.DTYPES[f"posts/{k}"]
            self.store[f"posts/{k}"].append(np.asarray(values, dtype=dtype))
        self.written += len(self.cols["id"])
        for v in self.cols.values():
            v.clear()


def _index(source, url, rows, infl_problems, *, max_posts, block, workers, quiet, start, mode) -> IndexReport:
    store = create_store(url, source.root, block, mode=mode)
    create_post_extras(store)
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
        source.manifest(Manifest(db, names, extra, problems))
        users = [r.username for r in rows] + extra
        total = db.execute("SELECT COUNT(*) FROM m").fetchone()[0]
        progress = Progress(total, "posts", "index", quiet=quiet)
        offsets = np.zeros(len(users) + 1, dtype=np.int64)
        found = np.zeros(len(users), dtype=np.int64)     # readable posts per influencer, before --max-posts
        batch = _PostBatch(store)
        ids = _UniqueIds(db)
        for results, worker_problems, n_seen in _bounded_map(_Task(source, max_posts), _groups(db, users), workers):
            for p in worker_problems:
                problems.add(*p)
            for infl, posts, n_found in results:
                found[infl] = n_found
                kept = 0
                for p in posts:
                    if not ids.first(p["id"]):
                        problems.add("post_id_duplicate", f"{users[infl]} {p['id']}",
                                     "another influencer's post has this id; the first one is kept")
                        continue
                    batch.add(infl, p)
                    kept += 1
                if not kept:
                    problems.add("influencer_no_posts", users[infl], "no readable post")
                offsets[infl + 1] = kept
            progress.update(n_seen, failures=len(worker_problems))
        batch.flush()
        progress.close()
        db.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    np.cumsum(offsets, out=offsets)
    n_written = batch.written
    assert offsets[-1] == n_written == store.n_posts, "posts appended out of step with offsets"
    _write_influencer_table(store, rows, users, extra, offsets, found if source.count_posts else None)
    problems.flush()
    create_labels(store)
    create_features(store)
    seconds = time.perf_counter() - start
    store.group.attrs.update(
        release_categories=schema.RELEASE_CATEGORIES,
        dataset_format=source.name,
        max_posts=max_posts,
        index_stats={"posts": int(n_written), "influencers": len(users), "seconds": round(seconds, 2),
                     "problems": dict(problems.counts)},
        complete=True,
    )
    return IndexReport(int(n_written), len(users), problems.counts, seconds)


def _write_influencer_table(store, rows, users: list[str], extra: list[str], offsets: np.ndarray,
                            found: np.ndarray | None = None) -> None:
    """influencers/*: the influencer list's rows, then the unlisted influencers whose posts were found (-1
    counts). `found`: where a format has no posts count (instaloader), an unknown one is the posts found."""
    release_cat = {c: i for i, c in enumerate(schema.RELEASE_CATEGORIES)}
    pad = [-1] * len(extra)
    posts_total = np.array([r.posts_total for r in rows] + pad, dtype=np.int64)
    if found is not None:
        posts_total = np.where(posts_total < 0, found, posts_total)
    write_influencers(store, {
        "username": np.array(users, dtype=object),
        "offsets": offsets,
        "followers": np.array([r.followers for r in rows] + pad, dtype=np.int64),
        "followees": np.array([r.followees for r in rows] + pad, dtype=np.int64),
        "posts_total": posts_total,
        # The release's own category (model-assigned, not ground truth; -1 unknown),
        # indexing root attribute release_categories.
        "release_category": np.array([release_cat.get(r.category, -1) for r in rows] + pad, dtype=np.int8),
    })
