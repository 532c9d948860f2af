"""Finding influencers for a brief: `heads similar` (lookalikes by cosine on the influencer
embeddings h that `heads predict` writes) and `heads search` (a ranked, filtered list).

Both read the store's predictions/ (those of the run named, complete) and a chunked pass over the
posts tables (engagement, sponsored share: heads.explorer.influencer_columns). Exact search with
numpy: at 33,935 influencers a query is one (M, D) x (D,) product (benchmarks/discovery.py measures
it and how it grows); an approximate index is only needed far beyond that.
"""
from __future__ import annotations

import csv
import difflib
import math
import os
from dataclasses import dataclass

import numpy as np

from cache import schema
from cache.outputs import predictions_run
from heads.explorer import TIERS, influencer_columns, tier
from runtime.errors import UserError
from runtime.files import atomic_files, csv_rows

TIER_NAMES = [name for _, name in TIERS]
SORTS = ("probability", "engagement", "followers")
TOP_POSTS = 3


@dataclass
class Filters:
    """What a brief asks for; every field optional."""
    category: str | None = None
    tiers: tuple[str, ...] = ()
    min_engagement: float | None = None
    min_followers: int | None = None
    min_probability: float | None = None
    max_sponsored: float | None = None

    def check(self, categories: list[str]) -> None:
        if self.category is not None and self.category not in categories:
            raise UserError(f"--category {self.category!r} is not one of the run's categories: {', '.join(categories)}")
        bad = [t for t in self.tiers if t not in TIER_NAMES]
        if bad:
            close = difflib.get_close_matches(bad[0], TIER_NAMES, n=1)
            raise UserError(f"--tier {bad[0]!r} is not a tier ({', '.join(TIER_NAMES)})"
                            + (f"; did you mean {close[0]!r}?" if close else ""))
        for name, value, lo, hi in (("--min-engagement", self.min_engagement, 0, math.inf),
                                    ("--min-probability", self.min_probability, 0, 1),
                                    ("--max-sponsored", self.max_sponsored, 0, 1),
                                    ("--min-followers", self.min_followers, 0, math.inf)):
            if value is not None and not (lo <= value <= hi):
                raise UserError(f"{name} must be in [{lo}, {hi}], got {value}")


def parse_tiers(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else ()


class Directory:
    """Every influencer of a predicted store, column-wise: what the queries filter, rank and show."""

    def __init__(self, store, run: str, need_embeddings: bool = False):
        attrs = predictions_run(store)
        if not attrs or "predictions/influencer_label" not in store:
            raise UserError(f"{store.url}: no predictions yet; run `heads predict {run} {store.url}` first")
        if not attrs.get("complete"):
            raise UserError(f"{store.url}: its predictions are incomplete (an interrupted `heads predict`); rerun it")
        if attrs.get("run") != os.path.abspath(run):
            raise UserError(f"{store.url}: its predictions are those of run {attrs.get('run')}, not of {run}; "
                            f"run `heads predict {run} {store.url}`")
        if need_embeddings and f"predictions/{schema.EMBEDDING}" not in store:
            raise UserError(f"{store.url}: its predictions were written before influencer embeddings were kept; "
                            f"rerun `heads predict {run} {store.url}`")
        self.store = store
        self.categories = store.influencer_categories
        self.username = np.array([str(u) for u in store["influencers/username"][:]], dtype=object)
        self.label = store["predictions/influencer_label"][:].astype(np.int64)
        self.prob = store["predictions/influencer_prob"][:].astype(np.float64)
        cols = influencer_columns(store)
        self.followers, self.posts, self.engagement = cols["followers"], cols["posts"], cols["engagement"]
        self.sponsored = cols["sponsored"]
        self.tier = np.array([tier(int(f)) for f in self.followers], dtype=object)
        self._tier_code = np.array([(TIER_NAMES + ["unknown"]).index(t) for t in self.tier], dtype=np.int8)
        self.offsets = store.offsets()
        self.attention = store["predictions/attention"][:]       # 2 bytes a post: 20 MB at the release's 10.2 M
        self.embedding = self.valid = None
        if need_embeddings:
            e = store[f"predictions/{schema.EMBEDDING}"][:].astype(np.float32)
            norm = np.linalg.norm(e, axis=1, keepdims=True)
            self.valid = (norm[:, 0] > 0) & ~np.isnan(e).any(axis=1)
            self.embedding = np.where(self.valid[:, None], e / np.where(norm > 0, norm, 1), 0).astype(np.float32)

    def __len__(self) -> int:
        return len(self.username)

    def mask(self, f: Filters) -> np.ndarray:
        """Influencers that satisfy every filter (a missing value never passes a filter on it)."""
        keep = self.label >= 0
        if f.category is not None:
            keep &= self.label == self.categories.index(f.category)
        if f.tiers:
            keep &= np.isin(self._tier_code, [TIER_NAMES.index(t) for t in f.tiers])
        if f.min_engagement is not None:
            keep &= np.nan_to_num(self.engagement, nan=-1.0) >= f.min_engagement
        if f.min_followers is not None:
            keep &= self.followers >= f.min_followers
        if f.min_probability is not None:
            keep &= np.nan_to_num(self.prob, nan=-1.0) >= f.min_probability
        if f.max_sponsored is not None:
            keep &= np.nan_to_num(self.sponsored, nan=math.inf) <= f.max_sponsored
        return keep

    def find(self, username: str) -> int:
        hits = np.flatnonzero(self.username == username)
        if not len(hits):
            close = difflib.get_close_matches(username, self.username.tolist(), n=3)
            raise UserError(f"no influencer {username!r} in {self.store.url}"
                            + (f"; closest names: {', '.join(close)}" if close else ""))
        return int(hits[0])

    def top_posts(self, influencers) -> list[list[str]]:
        """The ids of the posts each influencer attended to most (one read of their ids, in row order)."""
        picks = []
        for j in influencers:
            a, b = int(self.offsets[j]), int(self.offsets[j + 1])
            w = self.attention[a:b].astype(np.float32) if b > a else np.zeros(0, np.float32)
            order = np.argsort(-np.nan_to_num(w, nan=-1.0), kind="stable")[:TOP_POSTS]
            picks.append([a + int(t) for t in order if not np.isnan(w[t])])
        rows = np.array(sorted({r for p in picks for r in p}), dtype=np.int64)
        ids = dict(zip(rows.tolist(), self.store["posts/id"].get_orthogonal_selection((rows,)))) if len(rows) else {}
        return [[str(ids[r]) for r in p] for p in picks]

    def rows(self, idx, score: np.ndarray | None = None, score_name: str = "similarity") -> list[dict]:
        out = []
        tops = self.top_posts(idx)
        for r, j in enumerate(idx):
            row = {"username": self.username[j], "category": self.categories[self.label[j]] if self.label[j] >= 0
                   else "", "probability": _num(self.prob[j], 4), "tier": self.tier[j],
                   "followers": int(self.followers[j]), "engagement": _num(self.engagement[j], 5),
                   "sponsored": _num(self.sponsored[j], 3), "posts": int(self.posts[j]),
                   "top_posts": " ".join(tops[r])}
            if score is not None:
                row = {score_name: _num(score[r], 4), **row}
            out.append(row)
        return out


def _num(x: float, digits: int):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) or (np.isscalar(x) and np.isnan(x)) \
        else round(float(x), digits)


def similar(d: Directory, username: str, k: int, f: Filters, include_self: bool = False) -> list[dict]:
    """The k influencers nearest `username` by cosine on h, among those the filters keep."""
    if k < 1:
        raise UserError(f"--k must be at least 1, got {k}")
    f.check(d.categories)
    j = d.find(username)
    if not d.valid[j]:
        raise UserError(f"{username!r} has no usable posts (no embedding): nothing to compare with")
    keep = d.mask(f) & d.valid
    if not include_self:
        keep[j] = False
    sims = d.embedding @ d.embedding[j]
    idx = np.flatnonzero(keep)
    s = sims[idx]
    if len(idx) > k:                      # the k best, then only those sorted (ties: store order)
        part = np.argpartition(-s, k - 1)[:k]
        cut = s[part].min()
        part = np.flatnonzero(s >= cut)   # every row tied with the k-th stays a candidate
        idx, s = idx[part], s[part]
    order = np.lexsort((idx, -s))[:k]
    return d.rows(idx[order], s[order])


def lookalikes(embedding: np.ndarray, k: int = 10, chunk: int = 1024) -> list[list[int]]:
    """Each influencer's k nearest others by cosine (row indices, nearest first; [] without an embedding),
    exact, a chunk of rows at a time (memory: chunk x M similarities). For the report's explorer."""
    e = np.asarray(embedding, dtype=np.float32)
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    valid = (norm[:, 0] > 0) & ~np.isnan(e).any(axis=1)
    e = np.where(valid[:, None], e / np.where(norm > 0, norm, 1), 0).astype(np.float32)
    out: list[list[int]] = []
    k_eff = min(k, max(int(valid.sum()) - 1, 0))
    for a in range(0, len(e), chunk):
        sims = e[a:a + chunk] @ e.T
        sims[:, ~valid] = -np.inf
        for r in range(len(sims)):
            j = a + r
            if not valid[j] or not k_eff:
                out.append([])
                continue
            sims[r, j] = -np.inf
            top = np.argpartition(-sims[r], k_eff - 1)[:k_eff]
            top = top[np.lexsort((top, -sims[r, top]))]
            out.append([int(t) for t in top])
    return out


def search(d: Directory, f: Filters, sort: str = "probability", top: int = 50) -> list[dict]:
    """The influencers the filters keep, best first by `sort` (ties: more followers, then name order)."""
    if sort not in SORTS:
        raise UserError(f"--sort must be one of {', '.join(SORTS)}, got {sort!r}")
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    f.check(d.categories)
    idx = np.flatnonzero(d.mask(f))
    key = {"probability": d.prob, "engagement": d.engagement, "followers": d.followers.astype(np.float64)}[sort][idx]
    order = np.lexsort((idx, -d.followers[idx], -np.nan_to_num(key, nan=-np.inf)))[:top]
    return d.rows(idx[order])


def table(rows: list[dict]) -> str:
    """The rows as a plain aligned table for the terminal (top posts left to the CSV)."""
    if not rows:
        return "(no influencer matches)"
    cols = [c for c in rows[0] if c != "top_posts"]
    cells = [[("" if r[c] is None else str(r[c])) for c in cols] for r in rows]
    width = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, width))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(x, width)) for x in cells]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: str) -> None:
    """The rows as a CSV file, whole or absent (runtime.files), formula cells neutralised."""
    with atomic_files([path], newline="") as (f,):
        w = csv.writer(f)
        cols = list(rows[0]) if rows else ["username"]
        w.writerow(cols)
        w.writerows(csv_rows([[("" if r[c] is None else r[c]) for c in cols] for r in rows]))
