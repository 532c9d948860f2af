"""Blocks, shards and the block commit protocol (DESIGN.md, "Blocks, shards and the commit protocol").

A block is one Zarr shard of rows. A job computes a whole block in memory, writes its
features and statuses in one go, and only then sets the block's done flag; the flag is
its own chunk, so setting it never rewrites another block's data.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from cache import schema
from cache.store import Store, StoreError
from runtime.errors import UserError


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def blocks(self, n_blocks: int) -> list[int]:
        # Round robin rather than contiguous ranges: every shard's share of the store
        # then looks alike (same mix of influencers), and progress is even.
        return list(range(self.index, n_blocks, self.count))


def parse_shard(text: str) -> Shard:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise UserError(f"--shard must look like i/N (e.g. 0/4), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text}: need 0 <= i < N and N >= 1")
    return Shard(i, n)


def _check_modality(store: Store, modality: str) -> None:
    if modality not in schema.MODALITIES:
        raise UserError(f"unknown modality {modality!r}; expected one of {sorted(schema.MODALITIES)}")
    if not store.has_features(modality):
        raise StoreError(f"{store.url}: no features/{modality} array (the store was not fully indexed)")


def done_flags(store: Store, modality: str) -> np.ndarray:
    _check_modality(store, modality)
    return store[f"features/{modality}_done"][:]


def pending_blocks(store: Store, modality: str, shard: Shard) -> list[int]:
    done = done_flags(store, modality)
    return [b for b in shard.blocks(store.n_blocks) if not done[b]]


def carried_rows(store: Store, modality: str, rows: slice) -> np.ndarray:
    """Rows of a block not yet done whose statuses are already final: features carried over by
    `extract index --update` (posts whose inputs did not change), or rows of a commit that stopped
    before its done flag (features are written before statuses). Shard jobs keep them as they are and
    encode only the rest. A done block has none: a job run on it again (a benchmark) recomputes it."""
    if store[f"features/{modality}_done"][rows.start // store.block]:
        return np.zeros(rows.stop - rows.start, dtype=bool)
    return store[f"features/{modality}_status"][rows] != schema.Status.PENDING


def claim_fingerprint(store: Store, modality: str, fingerprint: dict) -> None:
    """Record the encoder that writes features/{modality}, or refuse a different one.

    Features from two encoders must never be mixed in one array: a job whose encoder
    differs from the recorded one stops before computing anything.
    """
    _check_modality(store, modality)
    arr = store[f"features/{modality}"]
    current = arr.attrs.get("encoder")
    if current is None:
        arr.attrs["encoder"] = fingerprint
        return
    if dict(current) != dict(fingerprint):
        diff = sorted(k for k in set(current) | set(fingerprint) if current.get(k) != fingerprint.get(k))
        raise StoreError(
            f"{store.url}: features/{modality} was written by another encoder "
            f"(differs in {', '.join(diff)}: stored {[current.get(k) for k in diff]}, "
            f"this job {[fingerprint.get(k) for k in diff]}); use the same encoder, or a new store")


def commit_block(store: Store, modality: str, b: int, features: np.ndarray, status: np.ndarray) -> None:
    """Write one whole block (features, then statuses), then set its done flag, last."""
    rows = store.block_rows(b)
    n = rows.stop - rows.start
    dim = schema.MODALITIES[modality]
    if features.shape != (n, dim) or status.shape != (n,):
        raise UserError(f"block {b}: expected features {(n, dim)} and status {(n,)}, "
                         f"got {features.shape} and {status.shape}")
    if (status == schema.Status.PENDING).any():
        raise UserError(f"block {b}: every row needs a final status before commit")
    if np.isnan(features).any(axis=1).any():
        raise UserError(f"block {b}: refusing to commit rows holding NaN features")
    store[f"features/{modality}"][rows] = features.astype(np.float16, copy=False)
    store[f"features/{modality}_status"][rows] = status.astype(np.uint8, copy=False)
    store[f"features/{modality}_done"][b] = True
