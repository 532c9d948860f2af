"""`cache labels`: hand labels from CSV (DATASET.md, "Labels") and/or labels drawn from the release's
own categories (`--from-release`), and the splits, stored once with where each label came from.

Heads and baselines read labels and splits from the store only, so every model is
trained and scored on the same influencers and posts.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass

import numpy as np

from cache import schema
from cache.store import Store, create_label_source
from runtime.errors import UserError


class LabelError(UserError):
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


@dataclass
class ReleaseDraw:
    """`cache labels --from-release`: the paper's protocol (§4.2) drawn from influencers.txt's categories.

    Per influencer category, `per_category` influencers split train:val by `val_fraction`,
    plus `test` influencers drawn at random from the rest; the release's `other` and rows
    without a category are never drawn (the paper's model has eight classes).
    """
    per_category: int = 200
    val_fraction: float = 0.2
    test: int = 1142


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def release_categories(store: Store) -> tuple[np.ndarray, dict]:
    """Each influencer's release category as an index into store.influencer_categories (-1: none or
    `other`), and counts of what was set aside. Refuses a store without the column, or one whose
    column holds categories this code does not know."""
    if "influencers/release_category" not in store or not store.attrs.get("release_categories"):
        raise LabelError(f"{store.url}: this store has no release categories (indexed before they were stored); "
                         f"rerun `extract index DATASET {store.url} --overwrite`")
    names = [str(c) for c in store.attrs["release_categories"]]
    unknown = [c for c in names if c not in store.influencer_categories and c != "other"]
    if unknown:
        raise LabelError(f"{store.url}: the release column has categories the model does not know: "
                         f"{', '.join(map(repr, unknown))} (known: {', '.join(store.influencer_categories)}, other)")
    raw = store["influencers/release_category"][:].astype(np.int64)
    if len(raw) and (raw == -1).all():
        fmt = store.attrs.get("dataset_format", "release")
        source = "an instaloader crawl, which has none" if fmt == "instaloader" else f"a {fmt} dataset without categories"
        raise LabelError(f"{store.url}: no release category: no influencer in this store has one (indexed from "
                         f"{source}); label influencers by hand with --influencers FILE.csv")
    bad = np.flatnonzero((raw < -1) | (raw >= len(names)))
    if len(bad):
        users = store["influencers/username"].get_orthogonal_selection((bad[:3],))
        raise LabelError(f"{store.url}: influencers/release_category holds {len(bad)} codes outside 0..{len(names) - 1} "
                         f"(first: {', '.join(map(str, users))}); rerun `extract index --overwrite`")
    lookup = np.array([store.influencer_categories.index(c) if c in store.influencer_categories else -1
                       for c in names] + [-1], dtype=np.int64)      # the trailing -1 serves raw == -1
    mapped = lookup[raw]
    problems = (store.attrs.get("index_stats") or {}).get("problems") or {}
    excluded = {"other": int((raw == names.index("other")).sum()) if "other" in names else 0,
                "no category": int((raw == -1).sum()),
                "misspelt, fixed at index": int(problems.get("category_misspelt", 0))}
    return mapped, excluded


def _draw_release(store: Store, draw: ReleaseDraw, seed: int, taken: np.ndarray):
    """(label, split) arrays of the release draw over influencers not `taken` (hand-labelled), and its summary."""
    if draw.per_category < 1 or draw.test < 0 or not 0 <= draw.val_fraction < 1:
        raise LabelError(f"--per-category must be >= 1, --test >= 0 and --val-fraction in [0, 1); got "
                         f"{draw.per_category}, {draw.test}, {draw.val_fraction}")
    mapped, excluded = release_categories(store)
    cats = store.influencer_categories
    has_posts = np.diff(store.offsets()) > 0
    excluded["no posts"] = int(((mapped >= 0) & ~has_posts).sum())
    free = (mapped >= 0) & has_posts & ~taken
    have = np.bincount(mapped[free], minlength=len(cats))
    short = [f"{cats[c]} has {have[c]}" for c in range(len(cats)) if have[c] < draw.per_category]
    if short:
        hand = " without a hand label" if taken.any() else ""
        raise LabelError(f"{store.url}: too few influencers{hand} for --per-category {draw.per_category}: "
                         f"{'; '.join(short)}; nothing was written")
    rng = np.random.default_rng(seed)
    label = np.full(len(mapped), -1, np.int8)
    split = np.zeros(len(mapped), np.int8)
    n_val = int(np.floor(draw.per_category * draw.val_fraction + 0.5))    # half rounds up
    for c in range(len(cats)):
        pick = rng.permutation(np.flatnonzero(free & (mapped == c)))[:draw.per_category]
        label[pick] = c
        split[pick[:n_val]] = schema.SPLITS["val"]
        split[pick[n_val:]] = schema.SPLITS["train"]
    rest = np.flatnonzero(free & (label < 0))
    if draw.test > len(rest):
        raise LabelError(f"{store.url}: --test {draw.test} asks for more influencers than the {len(rest)} left "
                         f"after the per-category draw; nothing was written")
    test = np.sort(rng.choice(rest, draw.test, replace=False))
    label[test] = mapped[test]
    split[test] = schema.SPLITS["test"]
    info = {"per_category": draw.per_category, "val_fraction": draw.val_fraction, "test": draw.test, "seed": seed,
            "eligible": int(free.sum()), "excluded": excluded}
    return label, split, mapped, info


def _disagreements(store: Store, mapped: np.ndarray, hand_rows: np.ndarray, hand_cats: np.ndarray) -> dict:
    """Hand labels that differ from the release's category of the same influencer (the hand label is kept)."""
    known = mapped[hand_rows] >= 0
    differ = hand_rows[known][mapped[hand_rows][known] != hand_cats[known]]
    cats = store.influencer_categories
    first = []
    if len(differ):
        users = store["influencers/username"].get_orthogonal_selection((differ[:3],))
        first = [f"{u}: hand {cats[int(hand_cats[hand_rows == r][0])]}, release {cats[int(mapped[r])]}"
                 for u, r in zip(users, differ[:3])]
    return {"compared": int(known.sum()), "differ": int(len(differ)), "first": first}


def apply_labels(store: Store, influencers_csv: str | None, posts_csv: str | None, seed: int = 0,
                 release: ReleaseDraw | None = None) -> dict:
    """Validate everything and build every array in memory, then write labels and splits; returns a summary.

    `release`: also draw influencer labels from the release's categories; a hand label from
    `influencers_csv` always wins for its influencer (hand-labelled influencers are not drawn).
    """
    plans = []     # (table, label array, split array, source array or None, record, categories)
    if influencers_csv or release:
        plans.append(_influencer_plan(store, influencers_csv, seed, release))
    if posts_csv:
        plans.append(_post_plan(store, posts_csv, seed))
    return _write_plans(store, plans)


def _influencer_plan(store: Store, influencers_csv: str | None, seed: int, release: ReleaseDraw | None) -> tuple:
    n = store.n_influencers
    label_arr = np.full(n, -1, dtype=np.int8)
    split_arr = np.zeros(n, dtype=np.int8)
    source = np.zeros(n, dtype=np.int8)
    rec: dict = {"seed": seed, "file": None, "sha256": None}
    hand_rows = np.zeros(0, np.int64)
    if influencers_csv:
        rows = _read_csv(influencers_csv, "username")
        users = {str(u): j for j, u in enumerate(store["influencers/username"][:])}
        labels = _validate(influencers_csv, rows, store.influencer_categories, users)
        if not labels:
            raise LabelError(f"{influencers_csv}: no label rows (a header only?); nothing was changed")
        hand_rows = np.array([users[k] for k in labels], dtype=np.int64)
        cats = np.array([v[0] for v in labels.values()], dtype=np.int8)
        given = np.array([schema.SPLITS[v[1]] if v[1] else 0 for v in labels.values()], dtype=np.int8)
        label_arr[hand_rows] = cats
        split_arr[hand_rows] = assign_splits(cats, given, seed)
        source[hand_rows] = schema.LABEL_SOURCES["hand"]
        rec.update(file=os.path.abspath(influencers_csv), sha256=_file_digest(influencers_csv))
    if release:
        taken = np.zeros(n, dtype=bool)
        taken[hand_rows] = True
        r_label, r_split, mapped, info = _draw_release(store, release, seed, taken)
        drawn = r_label >= 0
        label_arr[drawn], split_arr[drawn] = r_label[drawn], r_split[drawn]
        source[drawn] = schema.LABEL_SOURCES["release"]
        info["drawn"] = int(drawn.sum())
        if len(hand_rows):
            info["hand_vs_release"] = _disagreements(store, mapped, hand_rows, label_arr[hand_rows])
        rec["from_release"] = info
    rec["source"] = "+".join(k for k in ("hand", "release") if (source == schema.LABEL_SOURCES[k]).any())
    return "influencers", label_arr, split_arr, source, rec, store.influencer_categories


def _post_plan(store: Store, posts_csv: str, seed: int) -> tuple:
    rows = _read_csv(posts_csv, "post_id")
    where = _post_rows(store, {k for _, k, _, _ in rows})
    labels = _validate(posts_csv, rows, store.post_categories, where)
    if not labels:
        raise LabelError(f"{posts_csv}: no label rows (a header only?); nothing was changed")
    rows_idx = np.fromiter((where[k] for k in labels), dtype=np.int64, count=len(labels))
    cats = np.array([v[0] for v in labels.values()], dtype=np.int8)
    given = np.array([schema.SPLITS[v[1]] if v[1] else 0 for v in labels.values()], dtype=np.int8)
    label_arr = np.full(store.n_posts, -1, dtype=np.int8)
    split_arr = np.zeros(store.n_posts, dtype=np.int8)
    label_arr[rows_idx] = cats
    split_arr[rows_idx] = assign_splits(cats, given, seed)
    return ("posts", label_arr, split_arr, None,
            {"seed": seed, "file": os.path.abspath(posts_csv), "sha256": _file_digest(posts_csv), "source": "hand"},
            store.post_categories)


def _write_plans(store: Store, plans: list[tuple]) -> dict:
    """The write protocol, as for feature blocks: flip a marker, write the arrays, then record what was
    written and clear the marker in one metadata write. A killed run leaves the marker set, which
    `cache verify` and every reader of labels report, instead of new labels beside old splits."""
    summary: dict = {}
    previous = dict(store.group.attrs.get("labels") or {})
    store.group.attrs["labels_pending"] = [p[0] for p in plans]
    for table, label_arr, split_arr, source, rec, categories in plans:
        store[f"{table}/label"][:] = label_arr
        store[f"{table}/split"][:] = split_arr
        if source is not None:
            if f"{table}/label_source" not in store:      # a store indexed before label sources were kept
                create_label_source(store)
            store[f"{table}/label_source"][:] = source
        labelled = label_arr >= 0
        rec.update(labelled=int(labelled.sum()),
                   splits={name: int((split_arr[labelled] == code).sum()) for name, code in schema.SPLITS.items()
                           if code},
                   per_class={categories[c]: int((label_arr == c).sum()) for c in range(len(categories))},
                   arrays=arrays_digest(label_arr, split_arr))
        summary[table] = rec
    labels_attr = dict(previous)
    labels_attr.update(summary)
    store.group.attrs.update(labels=labels_attr, labels_pending=[])
    for table in summary:
        if isinstance(previous.get(table), dict) and "labelled" in previous[table]:
            summary[table]["replaced"] = {"file": previous[table].get("file"), "labelled": previous[table]["labelled"],
                                          "source": previous[table].get("source", "hand")}
    return summary


def carry_labels(store: Store, previous: dict, tables: dict, carried: dict) -> dict:
    """Labels kept by `extract index --update` (by username and post id: `tables` maps a table to its
    (label, split, source or None) arrays), written under `cache labels`' protocol and recorded as the
    old store recorded them, with what the update kept and dropped."""
    plans = []
    for table, (label, split, source) in tables.items():
        rec = {k: v for k, v in dict(previous.get(table) or {}).items() if k not in ("replaced",)}
        rec["carried_by_update"] = carried.get(table)
        cats = store.influencer_categories if table == "influencers" else store.post_categories
        plans.append((table, label, split, source, rec, cats))
    return _write_plans(store, plans) if plans else {}


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
