"""Per-influencer means of post features over the whole store, with dask: one task per block.

Each task opens the store itself (inside the worker), reads one block of rows of each
modality asked for, and returns the sums and counts of the influencers whose posts lie
in that block (a contiguous run, since posts are sorted by influencer). Only posts whose
status is ok count; an influencer with no usable post gets NaN. Runs on dask's local
threaded scheduler by default, or on a dask.distributed cluster (cache/compute.py).
"""
from __future__ import annotations

import numpy as np

from cache import schema
from cache.readers import MODALITY_SETS
from cache.store import open_store
from runtime.compute import ordered_results


def _block_sums(url: str, modality: str, rows: slice, wanted: np.ndarray | None):
    store = open_store(url)
    owner = store["posts/influencer"][rows].astype(np.int64)
    j0 = int(owner[0])
    local = owner - j0
    k = int(local[-1]) + 1
    parts, counts = [], []
    for m in MODALITY_SETS[modality]:
        # float32 sums: a bag is at most a few hundred posts, far inside float32's precision
        x = store[f"features/{m}"][rows].astype(np.float32)
        ok = store[f"features/{m}_status"][rows] == schema.Status.OK
        if not ok.all():
            x[~ok] = 0
        sums = np.zeros((k, x.shape[1]), dtype=np.float32)
        _segment_add(sums, local, x)
        parts.append(sums)
        counts.append(np.bincount(local, weights=ok, minlength=k))
    if wanted is not None:
        keep = np.isin(np.arange(j0, j0 + k), wanted)
    else:
        keep = np.ones(k, bool)
    return j0, np.concatenate(parts, axis=1), np.stack(counts, axis=1), keep


def _segment_add(out: np.ndarray, local: np.ndarray, x: np.ndarray) -> None:
    """Sum of consecutive runs of rows (local is sorted): reduceat, no per-row Python."""
    starts = np.flatnonzero(np.r_[True, local[1:] != local[:-1]])
    out[local[starts]] += np.add.reduceat(x, starts, axis=0)


def influencer_means(url: str, modality: str = "both", influencers: np.ndarray | None = None,
                     scheduler: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(M or len(influencers), dim) float32 means, in the order asked, and the usable-post counts.

    Each modality is averaged over its own ok posts, so a post missing its image still
    counts towards the text mean. Influencers with no posts get NaN rows and count 0.
    """
    store = open_store(url)
    offsets = store.offsets()
    m_all = store.n_influencers
    wanted = None if influencers is None else np.asarray(influencers, dtype=np.int64)
    blocks = range(store.n_blocks)
    if wanted is not None:
        need = np.zeros(store.n_blocks, bool)
        for j in wanted:
            a, b = offsets[j], offsets[j + 1]
            if b > a:
                need[a // store.block:(b - 1) // store.block + 1] = True
        blocks = np.flatnonzero(need)
    tasks = ((store.location, modality, store.block_rows(int(b)), wanted) for b in blocks)
    dims = [schema.MODALITIES[m] for m in MODALITY_SETS[modality]]
    sums = np.zeros((m_all, sum(dims)))
    counts = np.zeros((m_all, len(dims)))
    for j0, s, c, keep in ordered_results(_block_sums, tasks, scheduler):
        idx = np.arange(j0, j0 + len(s))[keep]
        sums[idx] += s[keep]
        counts[idx] += c[keep]
    edges = np.cumsum([0] + dims)
    means = np.empty_like(sums, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(len(dims)):
            means[:, edges[i]:edges[i + 1]] = sums[:, edges[i]:edges[i + 1]] / counts[:, i:i + 1]
    sel = np.arange(m_all) if wanted is None else wanted
    return means[sel], counts[sel].max(axis=1)
