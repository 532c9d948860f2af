"""The report's explorer data: one row per influencer of the store, column-wise (compact), from the
store's predictions/ arrays and a chunked pass over the posts tables (engagement)."""
from __future__ import annotations

import math
import os

import numpy as np

from cache import schema
from cache.outputs import predictions_run

CHUNK = schema.TABLE_CHUNK * 4
TIERS = [(10_000, "nano"), (100_000, "micro"), (1_000_000, "macro"), (math.inf, "mega")]


def tier(followers: int) -> str:
    if followers < 0:
        return "unknown"
    return next(name for limit, name in TIERS if followers < limit)


# ------------------------------------------------------------------ per-influencer columns

def influencer_columns(store) -> dict:
    """Followers, posts, engagement (mean likes + comments per post over followers) and sponsored share
    (paid posts over posts whose paid status is known; NaN when none is) of every influencer, from a
    chunked pass over the posts tables."""
    m, n = store.n_influencers, store.n_posts
    inter = np.zeros(m, np.float64)
    paid, known = np.zeros(m, np.float64), np.zeros(m, np.float64)
    owner_arr, likes, comments = store["posts/influencer"], store["posts/likes"], store["posts/comments"]
    sponsored = store["posts/sponsored"] if "posts/sponsored" in store else None     # older stores: unknown
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        owner = owner_arr[start:stop].astype(np.int64)
        both = np.maximum(likes[start:stop], 0) + np.maximum(comments[start:stop], 0)
        inter += np.bincount(owner, weights=both.astype(np.float64), minlength=m)
        if sponsored is not None:
            s = sponsored[start:stop]
            paid += np.bincount(owner, weights=(s == 1).astype(np.float64), minlength=m)
            known += np.bincount(owner, weights=(s >= 0).astype(np.float64), minlength=m)
    counts = np.diff(store.offsets())
    followers = store["influencers/followers"][:]
    with np.errstate(divide="ignore", invalid="ignore"):
        engagement = np.where((counts > 0) & (followers > 0), inter / np.maximum(counts, 1) / followers, np.nan)
        share = np.where(known > 0, paid / np.maximum(known, 1), np.nan)
    return {"followers": followers, "posts": counts, "engagement": engagement, "sponsored": share}


def store_predictions(store, run: str) -> tuple[dict | None, str]:
    """The store's predictions/ arrays when complete, and a sentence on where they came from."""
    attrs = predictions_run(store)
    if not attrs or "predictions/influencer_label" not in store:
        return None, "no predictions in the store yet: run `heads predict RUN STORE` for the explorer and the cards"
    if not attrs.get("complete"):
        return None, "the store's predictions are incomplete (an interrupted `heads predict`): rerun it"
    note = f"predictions of run {attrs.get('run')}"
    if os.path.abspath(run) != attrs.get("run"):
        note += f" (not of this report's run, {os.path.abspath(run)})"
    emb = f"predictions/{schema.EMBEDDING}"
    return {"label": store["predictions/influencer_label"][:], "prob": store["predictions/influencer_prob"][:],
            "embedding": store[emb][:] if emb in store else None}, note


def explorer_rows(store, pred: dict | None, cols: dict, similar: list[list[int]] | None = None) -> dict:
    """The explorer's data, column-wise (compact): one entry per influencer of the store; `similar`: each
    one's lookalikes (row indices, heads.discover.lookalikes), precomputed so the page stays offline."""
    icats = store.influencer_categories
    m = store.n_influencers
    rel = (store["influencers/release_category"][:] if "influencers/release_category" in store
           else np.full(m, -1, np.int8))
    rel_names = [str(c) for c in store.attrs.get("release_categories") or []]
    label = pred["label"] if pred else np.full(m, -1, np.int8)
    prob = pred["prob"] if pred else np.full(m, np.nan, np.float32)
    split = store["influencers/split"][:]
    rel_name = [rel_names[r] if 0 <= r < len(rel_names) else "" for r in rel.tolist()]
    pred_name = [icats[c] if c >= 0 else "" for c in label.tolist()]
    agree = [(1 if p == r else 0) if p and r and r != "other" else -1 for p, r in zip(pred_name, rel_name)]
    return {
        "username": [str(u) for u in store["influencers/username"][:]],
        "category": pred_name,
        "probability": [None if math.isnan(p) else round(float(p), 3) for p in prob.tolist()],
        "followers": cols["followers"].tolist(),
        "tier": [tier(int(f)) for f in cols["followers"].tolist()],
        "posts": cols["posts"].tolist(),
        "engagement": [None if math.isnan(e) else round(float(e), 5) for e in cols["engagement"].tolist()],
        "sponsored": [None if math.isnan(e) else round(float(e), 3) for e in cols["sponsored"].tolist()],
        "similar": similar if similar is not None else [[] for _ in range(m)],
        "release": rel_name,
        "agree": agree,
        "split": [schema.SPLIT_NAMES.get(int(s), "") for s in split.tolist()],
    }
