"""`cache labels`: hand labels from CSV (DATASET.md, "Labels") and the splits, stored once.

Heads and baselines read labels and splits from the store only, so every model is
trained and scored on the same influencers and posts.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os

import numpy as np

from cache import schema
from cache.store import Store


class LabelError(ValueError):
    """A label CSV that cannot be used; the message names the file and the first bad rows."""


def _read_csv(path: str, key: str) -> list[tuple[int, str, str, str]]:
    """Rows as (line number, key, category, split) with whitespace stripped, case folded."""
    if not os.path.exists(path):
        raise LabelError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise LabelError(f"{path}: not a regular file")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise LabelError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8")
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        fields = [h.strip().lower() for h in (reader.fieldnames or [])]
        if key not in fields or "category" not in fields:
            raise LabelError(f"{path}: header must be '{key},category[,split]', got {','.join(fields) or '(empty)'}")
        reader.fieldnames = fields
        rows = []
        for row in reader:
            rows.append((reader.line_num, (row.get(key) or "").strip(), (row.get("category") or "").strip().lower(),
                         (row.get("split") or "").strip().lower()))
    return rows


def _fail(path: str, what: str, bad: list[str]) -> None:
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise LabelError(f"{path}: {what}: {'; '.join(bad[:5])}{more}")


def _validate(path: str, rows, categories: list[str], known) -> dict[str, tuple[int, str]]:
    """key -> (category index, split name); refuses unknown keys/categories and conflicts."""
    _fail(path, "unknown category", [f"line {n}: {c!r}" for n, _, c, _ in rows if c not in categories])
    _fail(path, "unknown split", [f"line {n}: {s!r}" for n, _, _, s in rows if s and s not in schema.SPLITS])
    _fail(path, "unknown id", [f"line {n}: {k!r}" for n, k, _, _ in rows if k not in known])
    out: dict[str, tuple[int, str, int]] = {}
    conflicts = []
    for n, k, c, s in rows:
        if k in out and out[k][:2] != (categories.index(c), s):
            conflicts.append(f"line {n}: {k!r} (line {out[k][2]} says otherwise)")
        out.setdefault(k, (categories.index(c), s, n))
    _fail(path, "conflicting duplicate rows", conflicts)
    return {k: v[:2] for k, v in out.items()}


def assign_splits(labels: np.ndarray, given: np.ndarray, seed: int,
                  fractions=(0.6, 0.2, 0.2)) -> np.ndarray:
    """Stratified, seeded split for the rows whose split is 0 ('none'); given splits are kept."""
    rng = np.random.default_rng(seed)
    split = given.astype(np.int8).copy()
    for c in np.unique(labels):
        idx = np.flatnonzero((labels == c) & (given == 0))
        rng.shuffle(idx)
        n = len(idx)
        n_train = int(round(fractions[0] * n))
        n_val = int(round(fractions[1] * n))
        if n >= 3:   # every class gets at least one validation and one test row when it can
            n_val = max(1, n_val)
            n_train = min(n_train, n - n_val - 1)
        split[idx[:n_train]] = schema.SPLITS["train"]
        split[idx[n_train:n_train + n_val]] = schema.SPLITS["val"]
        split[idx[n_train + n_val:]] = schema.SPLITS["test"]
    return split


def _post_rows(store: Store, wanted: set[str]) -> dict[str, int]:
    """Row of each wanted post id, reading posts/id a chunk at a time (10 M ids never in memory)."""
    ids = store["posts/id"]
    step = schema.TABLE_CHUNK * 4
    found: dict[str, int] = {}
    for start in range(0, ids.shape[0], step):
        chunk = ids[start:start + step]
        for j in np.flatnonzero(np.isin(chunk.astype(object), list(wanted))):
            found.setdefault(str(chunk[j]), start + int(j))
    return found


def apply_labels(store: Store, influencers_csv: str | None, posts_csv: str | None, seed: int = 0) -> dict:
    """Validate both files completely, then write labels and splits; returns a summary."""
    summary: dict = {}
    plans = []
    if influencers_csv:
        rows = _read_csv(influencers_csv, "username")
        users = {str(u): j for j, u in enumerate(store["influencers/username"][:])}
        labels = _validate(influencers_csv, rows, store.influencer_categories, users)
        plans.append(("influencers", influencers_csv, {users[k]: v for k, v in labels.items()},
                      store.n_influencers, store.influencer_categories))
    if posts_csv:
        rows = _read_csv(posts_csv, "post_id")
        where = _post_rows(store, {k for _, k, _, _ in rows})
        labels = _validate(posts_csv, rows, store.post_categories, where)
        plans.append(("posts", posts_csv, {where[k]: v for k, v in labels.items()},
                      store.n_posts, store.post_categories))
    for table, path, by_row, n, categories in plans:
        if not by_row:
            raise LabelError(f"{path}: no label rows (a header only?); nothing was changed")
    previous = dict(store.group.attrs.get("labels") or {})
    # The write protocol, as for feature blocks: flip a marker, write the arrays, then record what was
    # written and clear the marker in one metadata write. A killed run leaves the marker set, which
    # `cache verify` and every reader of labels report, instead of new labels beside old splits.
    store.group.attrs["labels_pending"] = [p[0] for p in plans]
    for table, path, by_row, n, categories in plans:
        rows_idx = np.fromiter(by_row.keys(), dtype=np.int64, count=len(by_row))
        cats = np.array([v[0] for v in by_row.values()], dtype=np.int8)
        given = np.array([schema.SPLITS[v[1]] if v[1] else 0 for v in by_row.values()], dtype=np.int8)
        split = assign_splits(cats, given, seed)
        label_arr = np.full(n, -1, dtype=np.int8)
        split_arr = np.zeros(n, dtype=np.int8)
        label_arr[rows_idx] = cats
        split_arr[rows_idx] = split
        store[f"{table}/label"][:] = label_arr
        store[f"{table}/split"][:] = split_arr
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        counts = {name: int((split == code).sum()) for name, code in schema.SPLITS.items() if code}
        per_class = {categories[c]: int((cats == c).sum()) for c in range(len(categories))}
        summary[table] = {"file": os.path.abspath(path), "sha256": digest, "seed": seed, "labelled": len(by_row),
                          "splits": counts, "per_class": per_class, "arrays": arrays_digest(label_arr, split_arr)}
    labels_attr = dict(previous)
    labels_attr.update(summary)
    store.group.attrs.update(labels=labels_attr, labels_pending=[])
    for table in summary:
        if isinstance(previous.get(table), dict) and "labelled" in previous[table]:
            summary[table]["replaced"] = {"file": previous[table].get("file"), "labelled": previous[table]["labelled"]}
    return summary


def arrays_digest(label: np.ndarray, split: np.ndarray) -> str:
    """What `cache labels` wrote into a table's label and split arrays (checked by `cache verify`)."""
    return hashlib.sha256(np.asarray(label, np.int8).tobytes() + np.asarray(split, np.int8).tobytes()).hexdigest()[:16]


def label_state_errors(store: Store) -> list[str]:
    """Half-written or altered label sets, one sentence each (empty when sound)."""
    errors = []
    pending = store.group.attrs.get("labels_pending") or []
    if pending:
        errors.append(f"labels are half-written: a `cache labels` writing {' and '.join(pending)} was interrupted; "
                      f"rerun `cache labels`")
    for table, rec in (store.group.attrs.get("labels") or {}).items():
        if isinstance(rec, dict) and rec.get("arrays") and f"{table}/label" in store and table not in pending:
            got = arrays_digest(store[f"{table}/label"][:], store[f"{table}/split"][:])
            if got != rec["arrays"]:
                errors.append(f"{table}/label and {table}/split differ from what `cache labels` wrote "
                              f"(from {rec.get('file')}); rerun `cache labels`")
    return errors


def require_sound_labels(store: Store) -> None:
    """For readers of labels (heads, baselines): refuse a half-written label set with one sentence."""
    errors = label_state_errors(store)
    if errors:
        from cache.store import StoreError
        raise StoreError(f"{store.url}: {errors[0]}")
