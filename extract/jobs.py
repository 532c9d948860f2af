"""The shard job loop shared by `extract text` and `extract images`.

For each pending block of the shard: read and prepare its inputs (in a background thread,
so tokenising or decoding the next block overlaps the model on this one), compute the
whole block, commit it (features, statuses, then the done flag). Done blocks are skipped,
so rerunning the same command after a kill redoes only the blocks that were in flight.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from cache.blocks import Shard, claim_fingerprint, commit_block, pending_blocks
from cache.progress import Progress
from cache.schema import Status
from cache.store import Store


@dataclass
class JobReport:
    blocks_done: int
    blocks_skipped: int
    rows: int
    no_input: int
    unreadable: int
    seconds: float

    def summary(self, unit: str) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        return (f"{self.blocks_done} blocks ({self.rows} {unit}) written, {self.blocks_skipped} already done; "
                f"{rate:.1f} {unit}/s; no input {self.no_input}, unreadable {self.unreadable}")


def run_shard(store: Store, modality: str, shard: Shard, fingerprint: dict,
              prepare: Callable[[slice], Any], compute: Callable[[Any], tuple[np.ndarray, np.ndarray]],
              *, unit: str, throttle: float = 0.0, quiet: bool = False,
              pending: list[int] | None = None) -> JobReport:
    """`pending`: the blocks to do, when the caller planned its inputs from them (extract images
    lays out its decoding batches ahead); by default the shard's blocks not yet done."""
    claim_fingerprint(store, modality, fingerprint)
    mine = shard.blocks(store.n_blocks)
    if pending is None:
        pending = pending_blocks(store, modality, shard)
    rows = [store.block_rows(b) for b in pending]
    progress = Progress(sum(r.stop - r.start for r in rows), unit, f"{modality} {shard}",
                        quiet=quiet)
    start = time.perf_counter()
    counts = np.zeros(4, dtype=np.int64)
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as pool:
        ahead = pool.submit(prepare, rows[0]) if rows else None
        for i, (b, r) in enumerate(zip(pending, rows)):
            inputs = ahead.result()
            if i + 1 < len(rows):
                ahead = pool.submit(prepare, rows[i + 1])
            features, status = compute(inputs)
            commit_block(store, modality, b, features, status)
            counts += np.bincount(status, minlength=4)[:4]
            progress.update(r.stop - r.start, failures=int((status == Status.UNREADABLE).sum()),
                            extra=f"blocks {len(mine) - len(pending) + i + 1}/{len(mine)}")
            if throttle:
                time.sleep(throttle)   # crash drills: keep a job alive long enough to be killed mid-run
    progress.close()
    return JobReport(len(pending), len(mine) - len(pending), int(counts.sum()),
                     int(counts[Status.NO_INPUT]), int(counts[Status.UNREADABLE]), time.perf_counter() - start)
