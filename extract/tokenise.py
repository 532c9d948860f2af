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
# a caption longer than this many characters per token of --max-length is tokenised from its start,
# cut at a space (BERT's WordPiece needs about 5 characters a token on long captions; see Tokeniser)
CUT_CHARS_PER_TOKEN = 6


def _prefix_safe(backend) -> bool:
    """True when tokenising a caption cut at a space gives a prefix of the whole caption's tokens:
    BERT's normaliser works character by character, its pre-tokeniser splits at every whitespace and
    WordPiece splits each word alone, so no token spans a space."""
    return (type(backend.normalizer).__name__ in ("BertNormalizer", "NoneType")
            and type(backend.pre_tokenizer).__name__ == "BertPreTokenizer"
            and type(backend.model).__name__ == "WordPiece")


@dataclass
class Prepared:
    flat: np.ndarray            # every row's token ids, [CLS] … [SEP], truncated, one after another
    lengths: np.ndarray         # tokens per row
    status: np.ndarray
    start: int = 0              # the block's first row (set by TextJob: failures name their post)
    carried: np.ndarray | None = None   # rows whose features are kept (cache.blocks.carried_rows): not encoded

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
    call gives on probe captions; else the transformers call. Picklable: worker processes get one.

    With a BERT tokenizer the Rust call also skips the text past the truncation: a caption longer than
    CUT_CHARS_PER_TOKEN × max_length characters is tokenised cut at its last space before that; if the
    cut part already fills max_length tokens, its ids are the whole caption's (a prefix of the words
    gives a prefix of the tokens; `_prefix_safe`), otherwise the whole caption is tokenised again. The
    ids are the same either way; long captions hold most of a release's characters (half of them in
    the sample's 6 % of captions over 512 characters), and tokenising them whole was most of the time."""

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
        self._cut = None
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
            return
        if self._fast is not None and _prefix_safe(backend):
            self._cut = CUT_CHARS_PER_TOKEN * self.max_length
            long = [" ".join(["naïve café 日本語 #food🍝 한국어"] * self.max_length), "x" * (8 * self.max_length),
                    " ".join(["supercalifragilistic"] * (2 * self.max_length))]
            if self._fast_cut(long) != self._slow(long):
                self._cut = None

    def _fast_cut(self, captions: list[str]) -> list[list[int]]:
        """The Rust call on captions cut at a space past `_cut` characters; a cut caption whose part
        did not fill max_length tokens is tokenised whole."""
        n, cut, short = self._cut, [], []
        for i, c in enumerate(captions):
            j = c.rfind(" ", 0, n) if len(c) > n else -1
            if j > 0:
                c = c[:j]
                short.append(i)
            cut.append(c)
        ids = self._fast(cut)
        again = [i for i in short if len(ids[i]) < self.max_length]
        for i, x in zip(again, self._fast([captions[i] for i in again]) if again else ()):
            ids[i] = x
        return ids

    def _slow(self, captions):
        return self.tokenizer(captions, truncation=True, max_length=self.max_length)["input_ids"]

    def __call__(self, captions: list[str]) -> Prepared:
        status = np.full(len(captions), Status.OK, dtype=np.uint8)
        try:
            ids = (self._fast_cut if self._cut else self._fast or self._slow)(captions)
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
