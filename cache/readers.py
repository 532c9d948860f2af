"""Reading features back: post matrices for training and prediction, bags per influencer, groups of
influencers for whole-store tasks (dask runs them: runtime.compute).

A post's image or text half is zeroed where that modality's status is not ok (missing or
unreadable input, or not extracted yet); such a post is still usable through the other
half. A post is unusable when neither half is ok.
"""
from __future__ import annotations

import numpy as np

from cache import schema
from cache.store import Store

MODALITY_SETS = {"both": ("image", "text"), "image": ("image",), "text": ("text",)}


def feature_dim(modality: str) -> int:
    return sum(schema.MODALITIES[m] for m in MODALITY_SETS[modality])


def _gather(store: Store, modality: str, n: int, read) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the modalities' features read by `read(array)`, and which of them each post holds.

    Returns x (n, dim) with the halves that are not ok zeroed, and `present` (n, k) bool, one column
    per modality of the set (its status is ok). A post is usable where any column is true. Readers
    of features use `present`, never zeros, to tell a missing half: a genuine all-zero feature (a ReLU
    layer may give one) is still a feature."""
    mods = MODALITY_SETS[modality]
    parts, present = [], np.zeros((n, len(mods)), dtype=bool)
    for k, m in enumerate(mods):
        if not store.has_features(m):
            raise KeyError(m)
        x = read(store[f"features/{m}"])
        ok = read(store[f"features/{m}_status"]) == schema.Status.OK
        x[~ok] = 0
        parts.append(x)
        present[:, k] = ok
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0], present


def post_features(store: Store, rows: slice, modality: str = "both") -> tuple[np.ndarray, np.ndarray]:
    """Features of a contiguous range of posts, float16 (n, dim), and `present` (n, k): see _gather."""
    return _gather(store, modality, rows.stop - rows.start, lambda arr: arr[rows])


def require_features(store: Store, modality: str) -> None:
    """Refuse clearly when a modality asked for has not been extracted at all."""
    from cache.store import StoreError
    for m in MODALITY_SETS[modality]:
        if not store.has_features(m):
            raise StoreError(f"{store.url}: no features/{m} array")
        done = store[f"features/{m}_done"][:]
        if not done.any():
            raise StoreError(f"{store.url}: no {m} features yet (0/{len(done)} blocks done): run "
                             f"`extract {'images' if m == 'image' else 'text'} {store.url} --shard 0/1` first")


def require_same_encoders(store: Store, modality: str, fitted_on: dict | None) -> None:
    """Refuse a store whose features come from other encoders than those a run was fitted on (a run
    predicts any store, of any format, whose features the same encoders wrote). Runs that recorded
    no fingerprints are not checked."""
    from cache.store import StoreError
    for m in MODALITY_SETS[modality]:
        want = (fitted_on or {}).get(m)
        have = store[f"features/{m}"].attrs.get("encoder") if store.has_features(m) else None
        if isinstance(want, dict) and isinstance(have, dict) and dict(want) != dict(have):
            diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            raise StoreError(f"{store.url}: features/{m} were written by another encoder than the run was fitted on "
                             f"(differs in {', '.join(diff)}); extract this store with the run's encoder, or fit a "
                             f"run on it")


def bag_rows(store: Store, influencers: np.ndarray) -> list[slice]:
    offsets = store.offsets()
    return [slice(int(offsets[j]), int(offsets[j + 1])) for j in influencers]


def influencer_groups(offsets: np.ndarray, target_rows: int, subset: np.ndarray | None = None):
    """Consecutive runs of influencers covering about `target_rows` posts each: (j0, j1, rows)."""
    m = len(offsets) - 1
    j = 0
    while j < m:
        k = int(np.searchsorted(offsets, offsets[j] + target_rows, side="right")) - 1
        k = min(max(k, j + 1), m)
        yield j, k, slice(int(offsets[j]), int(offsets[k]))
        j = k


def load_bags(store: Store, influencers: np.ndarray, modality: str = "both", max_posts: int | None = None,
              gap: int = 1024):
    """Bags of the given influencers: a list of (posts, dim) float16 arrays and their `present` masks
    (posts, k), one column per modality (see _gather; a post is usable where any is true).

    Influencers are sorted, then read in runs: consecutive ones whose rows lie within one
    block's span and at most `gap` rows apart share one read, never one read per post. Each bag
    is copied out of its run, so a run's rows of other influencers are freed at once: memory is
    the bags themselves, however sparse the chosen influencers are in the store.
    """
    order = np.argsort(influencers)
    bags: list = [None] * len(influencers)
    masks: list = [None] * len(influencers)
    offsets = store.offsets()
    sorted_j = influencers[order]
    i = 0
    while i < len(sorted_j):
        start = offsets[sorted_j[i]]
        k = i
        while (k + 1 < len(sorted_j) and offsets[sorted_j[k + 1] + 1] - start <= store.block
               and offsets[sorted_j[k + 1]] - offsets[sorted_j[k] + 1] <= gap):
            k += 1
        rows = slice(int(start), int(offsets[sorted_j[k] + 1]))
        x, ok = post_features(store, rows, modality)
        for t in range(i, k + 1):
            j = sorted_j[t]
            a, b = offsets[j] - start, offsets[j + 1] - start
            if max_posts is not None:
                b = min(b, a + max_posts)
            bags[order[t]] = x[a:b].copy()
            masks[order[t]] = ok[a:b].copy()
        i = k + 1
    return bags, masks


def post_features_at(store: Store, rows: np.ndarray, modality: str = "both") -> tuple[np.ndarray, np.ndarray]:
    """Features of scattered posts (e.g. the labelled ones), in the order given.

    Read one block at a time (only the inner chunks holding the rows), so memory is the
    result plus one block's touched chunks, not every touched chunk of the store at once.
    """
    rows = np.asarray(rows, dtype=np.int64)
    dim = feature_dim(modality)
    x = np.zeros((len(rows), dim), np.float16)
    ok = np.zeros((len(rows), len(MODALITY_SETS[modality])), bool)
    if len(rows) == 0:
        return x, ok
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    cuts = np.flatnonzero(np.diff(srt // store.block)) + 1
    for part in np.split(np.arange(len(srt)), cuts):
        sel = srt[part]
        px, pok = _gather(store, modality, len(sel),
                          lambda arr: arr.oindex[(sel,) + (slice(None),) * (arr.ndim - 1)])
        x[order[part]] = px
        ok[order[part]] = pok
    return x, ok
