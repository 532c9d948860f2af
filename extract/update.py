"""`extract index DATASET STORE --update`: a grown (or shrunk, or edited) crawl into STORE, keeping
every feature whose inputs did not change.

The dataset is indexed again, in any format, into a new store built beside STORE (`STORE.updating`);
then, a block at a time (memory stays flat at 10 M posts: the old posts are looked up in an on-disk
SQLite table), each post found in the old store by its id keeps, per modality, its features and
status when that modality's input is unchanged: the same caption text for text (compared by
digest), the same image path, size and modification time for images. New and changed posts are
left pending, for the shard jobs, which encode only those (cache.blocks.carried_rows); blocks whose
rows were all kept are done. Labels are kept by username and post id; predictions are dropped (they
no longer cover the store) and `cache info` says so. Only then is STORE replaced: renamed to
`STORE.replaced`, the new one renamed into place, the old one deleted. A killed update leaves STORE
whole (before the swap) and a rerun starts the new one again, or finishes a swap that was cut
between its two renames.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from cache import schema
from cache.labels import carry_labels
from cache.store import StoreError, open_store
from extract.index import run_index
from extract.target import is_our_store, lock_store
from runtime.errors import UserError
from runtime.progress import Progress

UPDATING, REPLACED = ".updating", ".replaced"
STEP = 65536        # old rows read at a time into the lookup table


@dataclass
class UpdateReport:
    posts: int = 0
    influencers: int = 0
    new_posts: int = 0
    vanished_posts: int = 0
    vanished_influencers: int = 0
    kept: dict = field(default_factory=dict)         # modality -> rows whose features were kept
    pending: dict = field(default_factory=dict)      # modality -> rows left for the shard jobs
    labels: dict = field(default_factory=dict)       # table -> {"kept": n, "dropped": n}
    notes: list = field(default_factory=list)
    index_summary: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [self.index_summary,
                 f"updated: {self.posts} posts of {self.influencers} influencers; {self.new_posts} new, "
                 f"{self.vanished_posts} posts and {self.vanished_influencers} influencers no longer in the dataset "
                 f"(dropped)"]
        for m in schema.MODALITIES:
            if m in self.kept:
                lines.append(f"{m}: features of {self.kept[m]} posts kept, {self.pending[m]} to encode "
                             f"(`extract {'images' if m == 'image' else m} --shard i/N`)")
        for table, c in self.labels.items():
            lines.append(f"labels {table}: {c['kept']} kept, {c['dropped']} dropped with their rows")
        lines += self.notes
        lines.append(f"update finished in {self.seconds:.1f}s; predictions were dropped: rerun `heads predict`")
        return "\n".join(line for line in lines if line)


def finish_swap(path: str) -> bool:
    """A swap cut between its renames (STORE gone, STORE.replaced and a finished STORE.updating there):
    finish it. True when it did."""
    beside, replaced = path + UPDATING, path + REPLACED
    if os.path.lexists(path) or not os.path.isdir(replaced) or not os.path.isdir(beside):
        return False
    try:
        done = open_store(beside, "r").attrs.get("update") or {}
    except StoreError:
        return False
    if not done.get("finished"):
        return False
    os.rename(beside, path)
    shutil.rmtree(replaced)
    return True


def run_update(dataset: str, url: str, *, max_posts: int | None = None, workers: int | None = None,
               format: str | None = None, quiet: bool = False, images_by_path: bool = False) -> UpdateReport:
    """`images_by_path`: for a store indexed before image signatures were kept, take an image whose path
    is unchanged as unchanged (the user vouches that no image file was replaced in place)."""
    start = time.perf_counter()
    if "://" in url:
        raise UserError(f"{url}: --update works on a local store (an object store has no atomic rename to swap "
                        f"the new store in); update a local copy, then upload it")
    path = os.path.abspath(url.rstrip("/"))
    report = UpdateReport()
    if finish_swap(path):
        report.notes.append(f"finished the swap an earlier update was stopped in ({url} is the updated store)")
    if not os.path.lexists(path):
        raise StoreError(f"{url}: no store here to update; run `extract index DATASET {url}` (without --update)")
    if not is_our_store(path):
        raise StoreError(f"{url}: not an Influencer Profiler store; nothing was changed")
    lock = lock_store(path, url)            # a second update or index of STORE waits for this one
    try:
        return _update(dataset, url, path, report, max_posts=max_posts, workers=workers, format=format, quiet=quiet,
                       start=start, images_by_path=images_by_path)
    finally:
        os.close(lock)


def _update(dataset, url, path, report, *, max_posts, workers, format, quiet, start, images_by_path) -> UpdateReport:
    beside, replaced = path + UPDATING, path + REPLACED
    old = open_store(path, "r")
    _check_keepable(old)
    for leftover in (beside, replaced):
        if os.path.lexists(leftover):
            if not (is_our_store(leftover) or (os.path.isdir(leftover) and not os.listdir(leftover))):
                raise StoreError(f"{leftover}: is in the way of the update and is not an Influencer Profiler store; "
                                 f"move it away (nothing was changed)")
            shutil.rmtree(leftover)         # an update stopped before its swap: started again
    idx = run_index(dataset, beside, max_posts=max_posts or int(old.attrs.get("max_posts") or 300),
                    block=old.block, workers=workers, quiet=quiet, format=format)
    report.index_summary = idx.summary()
    new = open_store(beside, "r+")
    new.group.attrs["update"] = {"from": path, "finished": False}
    _carry(old, new, report, quiet, images_by_path)
    report.seconds = time.perf_counter() - start
    new.group.attrs.update(
        update={"from": path, "finished": True, "new_posts": report.new_posts, "vanished_posts": report.vanished_posts,
                "vanished_influencers": report.vanished_influencers, "kept": report.kept, "pending": report.pending,
                "seconds": round(report.seconds, 2)},
        predictions_dropped={"reason": "extract index --update", "run": _predicted_by(old)} if "predictions" in
        old.group else None)
    os.rename(path, replaced)       # the swap: two renames; finish_swap completes one cut between them
    os.rename(beside, path)
    shutil.rmtree(replaced)
    return report


def _predicted_by(store) -> str | None:
    run = dict(store.group["predictions"].attrs).get("run")
    return run if isinstance(run, str) else None


def _check_keepable(old) -> None:
    """Refuse an update that cannot keep the old store's features and labels under the same meaning."""
    for attr, want in (("influencer_categories", schema.INFLUENCER_CATEGORIES), ("post_categories",
                                                                                  schema.POST_CATEGORIES)):
        if list(old.attrs.get(attr) or []) != want:
            raise StoreError(f"{old.url}: its {attr.replace('_', ' ')} differ from this code's; its labels cannot "
                             f"be kept; index into a new store")
    for m in schema.MODALITIES:
        if not old.has_features(m):
            continue
        fp = old[f"features/{m}"].attrs.get("encoder")
        if fp is not None and not isinstance(fp, dict):
            raise StoreError(f"{old.url}: features/{m} records no readable encoder fingerprint, so its features "
                             f"cannot be kept under one; index into a new store")


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _old_posts(old, db: sqlite3.Connection, quiet: bool) -> None:
    """The old store's posts, by id, in an on-disk table: row, caption digest, image and its signature."""
    db.execute("CREATE TABLE o (id TEXT PRIMARY KEY, row INTEGER, cap BLOB, img TEXT, size INTEGER, mtime INTEGER)")
    n = old.n_posts
    has_sig = "posts/image_bytes" in old and "posts/image_mtime" in old
    progress = Progress(n, "posts", "update: reading the old store", quiet=quiet)
    for a in range(0, n, STEP):
        b = min(a + STEP, n)
        ids, caps, imgs = old["posts/id"][a:b], old["posts/caption"][a:b], old["posts/image"][a:b]
        size = old["posts/image_bytes"][a:b] if has_sig else np.full(b - a, -1)
        mtime = old["posts/image_mtime"][a:b] if has_sig else np.full(b - a, -1)
        db.executemany("INSERT OR IGNORE INTO o VALUES (?,?,?,?,?,?)",
                       ((str(ids[i]), a + i, _digest(str(caps[i])), str(imgs[i]), int(size[i]), int(mtime[i]))
                        for i in range(b - a)))
        progress.update(b - a)
    progress.close()
    db.commit()


def _lookup(db: sqlite3.Connection, ids) -> list[tuple]:
    """(old row, caption digest, image, size, mtime) of each id, or None for a post the old store lacks."""
    db.execute("DELETE FROM q")
    db.executemany("INSERT INTO q VALUES (?,?)", ((i, str(x)) for i, x in enumerate(ids)))
    found: list = [None] * len(ids)
    for i, row, cap, img, size, mtime in db.execute(
            "SELECT q.i, o.row, o.cap, o.img, o.size, o.mtime FROM q JOIN o ON o.id = q.id"):
        found[i] = (row, cap, img, size, mtime)
    return found


def _carry(old, new, report: UpdateReport, quiet: bool, images_by_path: bool = False) -> None:
    tmp = tempfile.mkdtemp(prefix="influencer-update-")
    try:
        db = sqlite3.connect(os.path.join(tmp, "old.sqlite"))
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        _old_posts(old, db, quiet)
        db.execute("CREATE TEMP TABLE q (i INTEGER, id TEXT)")
        modalities = [m for m in schema.MODALITIES if old.has_features(m) and new.has_features(m)]
        status_old = {m: old[f"features/{m}_status"][:] for m in modalities}   # one byte a post
        for m in modalities:
            fp = old[f"features/{m}"].attrs.get("encoder")
            if fp is not None:
                new[f"features/{m}"].attrs["encoder"] = fp
            report.kept[m] = report.pending[m] = 0
        by_path = images_by_path and "posts/image_bytes" not in old
        if "posts/image_bytes" not in old:
            report.notes.append("the store was indexed before image signatures were kept: " + (
                "images with an unchanged path are kept (--images-by-path)" if by_path else
                "every image is taken as changed and encoded once more (later updates keep them; "
                "--images-by-path keeps those whose path is unchanged)"))
        seen_old = np.zeros(old.n_posts, dtype=bool)
        post_label = np.full(new.n_posts, -1, np.int8)
        post_split = np.zeros(new.n_posts, np.int8)
        old_pl = old["posts/label"] if "posts/label" in old else None
        progress = Progress(new.n_posts, "posts", "update: keeping features", quiet=quiet)
        for b in range(new.n_blocks):
            rows = new.block_rows(b)
            ids = new["posts/id"][rows]
            found = _lookup(db, ids)
            orow = np.array([f[0] if f else -1 for f in found], dtype=np.int64)
            known = orow >= 0
            seen_old[orow[known]] = True
            report.new_posts += int((~known).sum())
            caps = new["posts/caption"][rows]
            imgs = new["posts/image"][rows]
            size, mtime = new["posts/image_bytes"][rows], new["posts/image_mtime"][rows]
            same = {
                "text": np.array([f is not None and f[1] == _digest(str(c)) for f, c in zip(found, caps)]),
                "image": np.array([f is not None and f[2] == str(p) and (str(p) == "" or by_path or (
                                   f[3] >= 0 and f[3] == s and f[4] == t)) for f, p, s, t in zip(found, imgs, size, mtime)]),
            }
            for m in modalities:
                keep = same[m] & known
                keep[keep] = status_old[m][orow[keep]] != schema.Status.PENDING
                _write_kept(old, new, m, b, rows, orow, keep)
                report.kept[m] += int(keep.sum())
                report.pending[m] += int((~keep).sum())
            if old_pl is not None and known.any():
                pick = np.sort(np.unique(orow[known]))
                lab = dict(zip(pick, old_pl.get_orthogonal_selection((pick,))))
                spl = dict(zip(pick, old["posts/split"].get_orthogonal_selection((pick,))))
                at = np.flatnonzero(known)
                post_label[rows.start + at] = [lab[r] for r in orow[at]]
                post_split[rows.start + at] = [spl[r] for r in orow[at]]
            progress.update(rows.stop - rows.start)
        progress.close()
        db.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.posts, report.influencers = new.n_posts, new.n_influencers
    report.vanished_posts = int((~seen_old).sum())
    old_users = old["influencers/username"][:]
    new_index = {str(u): i for i, u in enumerate(new["influencers/username"][:])}
    report.vanished_influencers = int(sum(str(u) not in new_index for u in old_users))
    _carry_labels(old, new, old_users, new_index, post_label, post_split, report)


def _write_kept(old, new, m: str, b: int, rows: slice, orow: np.ndarray, keep: np.ndarray) -> None:
    """Block b of the new store's features/{m}: the kept rows' old features and statuses, the rest pending
    (NaN); the block is done when every row was kept."""
    n = rows.stop - rows.start
    if not keep.any():
        return                                     # the fresh store is already NaN and pending here
    feats = np.full((n, schema.MODALITIES[m]), np.nan, dtype=np.float16)
    status = np.zeros(n, dtype=np.uint8)
    at = np.flatnonzero(keep)
    src = orow[at]
    order = np.argsort(src, kind="stable")
    pick, inverse = np.unique(src[order], return_inverse=True)
    got, stat = _old_rows(old, m, pick)
    feats[at[order]] = got[inverse]
    status[at[order]] = stat[inverse]
    new[f"features/{m}"][rows] = feats
    new[f"features/{m}_status"][rows] = status
    if keep.all():
        new[f"features/{m}_done"][b] = True


def _old_rows(old, m: str, pick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features and statuses of the old store's rows `pick` (sorted, unique). The rows of a new block
    mostly come from one stretch of the old store (posts keep their order): read the stretch as a slice
    (whole chunks, decoded once) when it is at most twice the rows wanted, else row by row."""
    lo, hi = int(pick[0]), int(pick[-1]) + 1
    if hi - lo <= 2 * len(pick):
        return old[f"features/{m}"][lo:hi][pick - lo], old[f"features/{m}_status"][lo:hi][pick - lo]
    return (old[f"features/{m}"].get_orthogonal_selection((pick, slice(None))),
            old[f"features/{m}_status"].get_orthogonal_selection((pick,)))


def _carry_labels(old, new, old_users, new_index: dict, post_label, post_split, report: UpdateReport) -> None:
    """Influencer labels by username and post labels by post id, written as `cache labels` writes them."""
    recorded = old.group.attrs.get("labels") or {}
    if not recorded or "influencers/label" not in old:
        return
    n = new.n_influencers
    label, split, source = np.full(n, -1, np.int8), np.zeros(n, np.int8), np.zeros(n, np.int8)
    ol, osp = old["influencers/label"][:], old["influencers/split"][:]
    osrc = old["influencers/label_source"][:] if "influencers/label_source" in old else np.where(ol >= 0, 1, 0)
    dropped = 0
    for i, u in enumerate(old_users):
        j = new_index.get(str(u))
        if j is None:
            dropped += int(ol[i] >= 0)
            continue
        label[j], split[j], source[j] = ol[i], osp[i], osrc[i]
    old_post_labelled = int((old["posts/label"][:] >= 0).sum()) if "posts/label" in old else 0
    report.labels = {"influencers": {"kept": int((label >= 0).sum()), "dropped": dropped},
                     "posts": {"kept": int((post_label >= 0).sum()),
                               "dropped": old_post_labelled - int((post_label >= 0).sum())}}
    tables = {"influencers": (label, split, source), "posts": (post_label, post_split, None)}
    carry_labels(new, {t: recorded.get(t) for t in tables if recorded.get(t)},
                 {t: v for t, v in tables.items() if recorded.get(t)}, report.labels)
