"""Captions to token ids for `extract text`: in the job's process, or in worker processes.

A block's token ids travel as one flat array with per-row lengths (`Prepared`), which is cheap to
send between processes and lets the encoder pad a batch with numpy alone. On a GPU the model
runs an order of magnitude faster than one thread tokenises (an H200: 43,670 captions/s for the
model alone, 5,252 for the job tokenising in one thread), so `extract text --workers N` reads and
tokenises the blocks ahead in N processes, as `extract images` decodes in its workers; each worker
opens the store itself and receives only the tokenizer.
"""
from __future__ import annotations

import copy
import itertools
import os
from collections import deque
from dataclasses import dataclass

import numpy as np

from cache.schema import Status

PROBE = ["", "a", "Hello, World! #food 🍝 naïve café", "日本語のテキスト"]


@dataclass
class Prepared:
    flat: np.ndarray            # every row's token ids, [CLS] … [SEP], truncated, one after another
    lengths: np.ndarray         # tokens per row
    status: np.ndarray
    start: int = 0              # the block's first row (set by TextJob: failures name their post)

    @property
    def offsets(self) -> np.ndarray:
        return np.cumsum(self.lengths) - self.lengths

    @property
    def ids(self) -> list[list[int]]:
        return [self.flat[o:o + n].tolist() for o, n in zip(self.offsets, self.lengths)]


class Tokeniser:
    """Captions → `Prepared`: '' or blank gets status 2 (no input), a caption the tokenizer refuses
    status 3 (the rest of its block is kept). Uses the Rust tokenizer's own batch call (parallel, no
    Python-side mask lists) when the tokenizer has one and it gives exactly the ids the transformers
    call gives on probe captions; else the transformers call. Picklable: worker processes get one."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length
        self._setup()

    def __getstate__(self):
        return {"tokenizer": self.tokenizer, "max_length": self.max_length}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._setup()

    def _setup(self) -> None:
        self._empty = self._slow([""])[0]
        self._fast = None
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return
        backend = copy.deepcopy(backend)
        backend.enable_truncation(self.max_length)
        backend.no_padding()
        call = getattr(backend, "encode_batch_fast", backend.encode_batch)

        def fast(captions):
            return [e.ids for e in call(captions)]
        probe = PROBE + ["x " * (2 * self.max_length)]
        try:
            if fast(probe) == self._slow(probe):
                self._fast = fast
        except Exception:
            pass

    def _slow(self, captions):
        return self.tokenizer(captions, truncation=True, max_length=self.max_length)["input_ids"]

    def __call__(self, captions: list[str]) -> Prepared:
        status = np.full(len(captions), Status.OK, dtype=np.uint8)
        try:
            ids = (self._fast or self._slow)(captions)
        except Exception:           # some caption is untokenisable: find it, keep the rest
            ids = []
            for i, c in enumerate(captions):
                try:
                    ids.append(self._slow([c])[0])
                except Exception:
                    ids.append(self._empty)
                    status[i] = Status.UNREADABLE
        for i, c in enumerate(captions):
            if status[i] == Status.OK and not c.strip():
                status[i] = Status.NO_INPUT
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        return Prepared(flat, lengths, status)


# ---------------------------------------------------------------- worker processes

_WORKER: dict = {}


def _start_worker(tokeniser: Tokeniser, url: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"      # one thread per worker: the workers are the parallelism
    from cache.store import open_store
    _WORKER.update(tokeniser=tokeniser, captions=open_store(url, "r")["posts/caption"])


def _tokenise_rows(start: int, stop: int) -> Prepared:
    return _WORKER["tokeniser"]([str(c) for c in _WORKER["captions"][start:stop]])


class TokenisingWorkers:
    """Blocks read and tokenised ahead, in order, by `workers` spawned processes (at most two
    blocks per worker in flight); `next(rows)` returns the next block's `Prepared`."""

    def __init__(self, tokeniser: Tokeniser, url: str, rows: list[slice], workers: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_worker, initargs=(tokeniser, url))
        self.todo, self.ahead = deque(rows), deque()
        self.depth = 2 * workers
        self._fill()

    def _fill(self) -> None:
        while self.todo and len(self.ahead) < self.depth:
            r = self.todo.popleft()
            self.ahead.append((r, self.pool.submit(_tokenise_rows, r.start, r.stop)))

    def next(self, rows: slice) -> Prepared:
        r, future = self.ahead.popleft()
        if (r.start, r.stop) != (rows.start, rows.stop):
            raise RuntimeError(f"tokenising workers are at rows {r.start}-{r.stop}, the job asked for "
                               f"{rows.start}-{rows.stop}")
        self._fill()
        return future.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
