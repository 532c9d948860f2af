"""Progress for long work: a bar on a terminal, plain periodic lines in a batch log.

Lines look like
    [text 0/4] 12288/40000 posts (30.7%) 812.4 posts/s ETA 0:00:34 failures 3
so a job array's log files can be grepped and tailed.
"""
from __future__ import annotations

import sys
import time
from datetime import timedelta


class Progress:
    def __init__(self, total: int, unit: str = "items", label: str = "", *, every: float = 10.0,
                 stream=None, tty: bool | None = None, quiet: bool = False):
        self.quiet = quiet
        self.total = max(0, int(total))
        self.unit = unit
        self.label = label
        self.every = every
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.done = 0
        self.failures = 0
        self.extra = ""
        self.start = time.perf_counter()
        self._last = 0.0
        self._shown = -1

    def update(self, n: int = 1, failures: int = 0, extra: str = "") -> None:
        self.done += n
        self.failures += failures
        if extra:
            self.extra = extra
        now = time.perf_counter()
        interval = 0.2 if self.tty else self.every
        if now - self._last >= interval or self.done >= self.total:
            self._last = now
            self._emit(final=False)

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        pct = 100.0 * self.done / self.total if self.total else 100.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = str(timedelta(seconds=int(left))) if left == left else "?"
        head = f"[{self.label}] " if self.label else ""
        tail = f" {self.extra}" if self.extra else ""
        return (f"{head}{self.done}/{self.total} {self.unit} ({pct:.1f}%) {rate:.1f} {self.unit}/s "
                f"ETA {eta} failures {self.failures}{tail}")

    def _emit(self, final: bool) -> None:
        if self.quiet:
            return
        if not final or self._shown != self.done:
            self._write(final)
        elif self.tty:
            self.stream.write("\n")
        self._shown = self.done

    def _write(self, final: bool) -> None:
        if self.tty:
            width = 24
            filled = int(width * self.done / self.total) if self.total else width
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r|{bar}| {self.line()}\033[K" + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        elapsed = time.perf_counter() - self.start
        self._emit(final=True)
        if not self.tty and not self.quiet:
            self.stream.write(f"[{self.label}] finished in {elapsed:.1f}s\n")
            self.stream.flush()
