"""The shard job protocol shared by `extract text` and `extract images`.

An encoder job (`BlockJob`) says what it is (`modality`, `unit`, `fingerprint`), lays out its
inputs for the blocks it is given (`plan`: images start their decoding workers on exactly those
blocks), reads one block's inputs (`prepare`, run in a background thread so tokenising or
decoding the next block overlaps the model on this one) and encodes them (`encode`: features,
statuses and the failures to report). `run_shard` owns everything else: claiming the store's
fingerprint (a different encoder is refused before any input is read), finding the pending
blocks, committing each block (features, statuses, then the done flag), reporting failures
(one line each, naming the post) and progress. Done blocks are skipped, so rerunning the same
command after a kill redoes only the blocks that were in flight.

Writing overlaps encoding too: block i is committed in a writer thread while block i+1 is
encoded (one block in flight, so one block's features more in memory; the commit protocol's
order within a block is unchanged). Writing a 16,384-row block took 180-300 ms on a 2-core CPU,
half the time an H200 needs to encode a text block (benchmarks/writes.py); in the loop it
left the GPU idle. A job that fails or is interrupted still finishes the commit in flight before it stops.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

import numpy as np

from cache.blocks import Shard, carried_rows, claim_fingerprint, commit_block, pending_blocks
from cache.schema import Status
from cache.store import Store
from runtime.console import say
from runtime.progress import Progress

# Called with the block's number after each committed block, where set. Nothing in the package sets
# it: crash drills inject one (tests/delayed.py) to wait after each block, so that a job can be
# killed mid-run; production code reads no test switch.
after_block: Callable[[int], None] | None = None
MAX_FAILURE_LINES = 100        # per block; the rest are counted in one line


class BlockJob(Protocol):
    modality: str               # "text" or "image": which features/ arrays it writes
    unit: str                   # what progress counts: "captions", "images"
    fingerprint: dict           # what the store records and later jobs must match

    def plan(self, blocks: list[int]) -> None:
        """Lay out the inputs of these blocks, in this order, before the first `prepare`."""

    def prepare(self, rows: slice) -> Any:
        """One block's inputs (runs in a background thread)."""

    def encode(self, inputs: Any) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str, str]]]:
        """Features (rows, dim), statuses (rows,), and failures as (row, what was read, why)."""

    def close(self) -> None:
        """Release workers and devices."""

    # seconds `encode` spent waiting for inputs made elsewhere (the image job's decoding workers);
    # counted as waiting for inputs, not encoding, in the job's report
    waited: float


@dataclass
class Timings:
    """Where a shard job's loop spent its time, in seconds: waiting for the next block's inputs (the input
    side is the bottleneck when this is large), encoding (the model, and for images the device-side
    decode), waiting for the writer (all of the writing, without overlap), and the writer's own time."""
    wait_s: float = 0.0
    encode_s: float = 0.0
    commit_s: float = 0.0
    write_s: float = 0.0


@dataclass
class JobReport:
    blocks_done: int
    blocks_skipped: int
    rows: int
    no_input: int
    unreadable: int
    seconds: float
    first_block_s: float = 0.0      # until the first block was encoded: start-up and the pipeline's fill
    first_block_rows: int = 0
    # where the loop's time went: waiting for the next block's inputs (the input side is the bottleneck
    # when this is large), encoding (the model, and for images the device-side decode), committing
    wait_s: float = 0.0
    encode_s: float = 0.0
    commit_s: float = 0.0           # the loop waiting for the writer (all of the writing, without overlap)
    write_s: float = 0.0            # the writer's own time, mostly hidden behind encoding
    close_s: float = 0.0            # ending the job's worker processes, after the last block (in `seconds`)
    carried: int = 0                # rows of pending blocks kept as they were (cache.blocks.carried_rows), not encoded

    @property
    def steady_per_s(self) -> float | None:
        """Rows per second from the first block's end to the last block's commit: the rate a long job
        runs at (None with one block). Start-up and the closing of worker processes (0.7-1 s for 8 to
        16 of them on an H200 node, a fifth of the time after the first block in the GPU bench's
        72,656-row jobs) are left out: a 10.2 M-post shard pays them once in hundreds of blocks."""
        rest = self.seconds - self.close_s - self.first_block_s
        return (self.rows - self.first_block_rows) / rest if self.blocks_done > 1 and rest > 0 else None

    def summary(self, unit: str) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        kept = f" ({self.carried} kept from before, {self.rows - self.carried} encoded)" if self.carried else ""
        return (f"{self.blocks_done} blocks ({self.rows} {unit}{kept}) written, {self.blocks_skipped} already done; "
                f"{rate:.1f} {unit}/s; no input {self.no_input}, unreadable {self.unreadable}; "
                f"{self.wait_s:.1f} s waiting for inputs, {self.encode_s:.1f} s encoding, {self.commit_s:.1f} s waiting "
                f"for writes ({self.write_s:.1f} s writing, overlapped with encoding)")


def run_shard(store: Store, shard: Shard, job: BlockJob, *, quiet: bool = False,
              overlap_writes: bool = True) -> JobReport:
    """Every pending block of the shard: prepare (ahead, in a thread), encode, commit (in a writer
    thread, while the next block encodes), report. `overlap_writes=False` commits in the loop (the
    reference benchmarks/writes.py measures against)."""
    try:
        claim_fingerprint(store, job.modality, job.fingerprint)
        mine = shard.blocks(store.n_blocks)
        pending = pending_blocks(store, job.modality, shard)
        job.plan(pending)
        rows = [store.block_rows(b) for b in pending]
        progress = Progress(sum(r.stop - r.start for r in rows), job.unit, f"{job.modality} {shard}", quiet=quiet)
        start = time.perf_counter()
        counts = np.zeros(4, dtype=np.int64)
        carried = [0]               # rows kept from before in the pending blocks
        first = {"first_block_s": 0.0, "first_block_rows": 0}
        spent = Timings()

        def write(b: int, r: slice, features: np.ndarray, status: np.ndarray, failures: list) -> tuple[float, float]:
            t = time.perf_counter()
            commit_block(store, job.modality, b, features, status)
            _report_failures(store, job.modality, r, failures)
            return t, time.perf_counter()

        def written(i: int, status: np.ndarray, future) -> None:
            """Block i's commit is done (its errors raised here): count it, show progress."""
            began, ended = future.result()
            spent.write_s += ended - began
            r = rows[i]
            counts[:] += np.bincount(status, minlength=4)[:4]
            progress.update(r.stop - r.start, failures=int((status == Status.UNREADABLE).sum()),
                            extra=f"blocks {len(mine) - len(pending) + i + 1}/{len(mine)}")
            if after_block is not None:
                after_block(pending[i])

        with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as pool, \
                ThreadPoolExecutor(1, thread_name_prefix="writer") as writer:
            ahead = pool.submit(job.prepare, rows[0]) if rows else None
            in_flight = None        # (block index, statuses, future) of the commit being written
            for i, (b, r) in enumerate(zip(pending, rows)):
                t0 = time.perf_counter()
                inputs = ahead.result()
                if i + 1 < len(rows):
                    ahead = pool.submit(job.prepare, rows[i + 1])
                t1 = time.perf_counter()
                features, status, failures = job.encode(inputs)
                features, status, failures = _keep_carried(store, job.modality, r, features, status, failures,
                                                           carried)
                t2 = time.perf_counter()
                if i == 0:
                    first = {"first_block_s": t2 - start, "first_block_rows": r.stop - r.start}
                if in_flight is not None:
                    written(*in_flight)
                in_flight = (i, status, writer.submit(write, b, r, features, status, failures))
                if not overlap_writes:
                    written(*in_flight)
                    in_flight = None
                spent.wait_s += t1 - t0
                spent.encode_s += t2 - t1
                spent.commit_s += time.perf_counter() - t2
            if in_flight is not None:
                t = time.perf_counter()
                written(*in_flight)
                spent.commit_s += time.perf_counter() - t
        progress.close()
        spent.wait_s += job.waited          # the job's own waits for inputs made elsewhere
        spent.encode_s -= job.waited
    finally:
        closing = time.perf_counter()
        job.close()
        closing = time.perf_counter() - closing
    return JobReport(blocks_done=len(pending), blocks_skipped=len(mine) - len(pending), rows=int(counts.sum()),
                     no_input=int(counts[Status.NO_INPUT]), unreadable=int(counts[Status.UNREADABLE]),
                     seconds=time.perf_counter() - start, **first, **asdict(spent), close_s=closing,
                     carried=carried[0])


def _keep_carried(store: Store, modality: str, rows: slice, features: np.ndarray, status: np.ndarray,
                  failures: list, carried: list) -> tuple[np.ndarray, np.ndarray, list]:
    """A block's rows whose features were already final (cache.blocks.carried_rows: the job did not
    encode them) get their stored features and statuses back before the commit."""
    keep = carried_rows(store, modality, rows)
    if not keep.any():
        return features, status, failures
    idx = np.flatnonzero(keep)
    features = np.array(features, copy=True)
    features[idx] = store[f"features/{modality}"][rows][idx]
    status = np.array(status, copy=True)
    status[idx] = store[f"features/{modality}_status"][rows][idx]
    carried[0] += len(idx)
    return features, status, [f for f in failures if not keep[f[0] - rows.start]]


def _report_failures(store: Store, modality: str, rows: slice, failures: list[tuple[int, str, str]]) -> None:
    """One line per failed post (the block's first MAX_FAILURE_LINES), naming its id and what was read."""
    if not failures:
        return
    ids = store["posts/id"][rows]
    for row, what, why in failures[:MAX_FAILURE_LINES]:
        say(f"{modality}: post {ids[row - rows.start]} ({what or 'row ' + str(row)}): {why}")
    if len(failures) > MAX_FAILURE_LINES:
        say(f"{modality}: … and {len(failures) - MAX_FAILURE_LINES} more failures in rows {rows.start}-{rows.stop - 1}")
