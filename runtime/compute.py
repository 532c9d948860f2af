"""Whole-store work as one task per piece of the store, on dask: local threads or a cluster.

Every whole-store stage (`cache info`, `cache verify`, the baselines' aggregation, `heads
predict`) splits its work into independent tasks that each open the store themselves
(inside the worker, DESIGN.md) and return small results. `ordered_results` runs them

- on dask's local threaded scheduler when no scheduler is given, or
- on a dask.distributed cluster given its address (`tcp://HOST:8786`), or on the
  in-process cluster a test or script passes as a `distributed.Client`,

and yields their results in task order, keeping at most `window` tasks in flight, so the
caller's memory stays flat however many tasks there are.
"""
from __future__ import annotations

import contextlib
import itertools
import os
from collections import deque
from typing import Any, Callable, Iterable, Iterator

import dask
from runtime.errors import UserError


@contextlib.contextmanager
def connect(scheduler):
    """A distributed Client for an address (closed afterwards), a given Client as is, or None."""
    if scheduler is None or scheduler == "":
        yield None
        return
    from distributed import Client
    if isinstance(scheduler, Client):
        yield scheduler
        return
    try:
        client = Client(scheduler, timeout="20s")
    except OSError as e:
        raise UserError(f"dask scheduler {scheduler}: cannot connect ({e})") from None
    with client:
        yield client


def ordered_results(fn: Callable, args: Iterable[tuple], scheduler=None, *, window: int | None = None) -> Iterator[Any]:
    """fn(*a) for every a in args, in order; at most `window` computed ahead of the consumer."""
    window = window or 2 * (os.cpu_count() or 2)
    with connect(scheduler) as client:
        if client is None:
            args = iter(args)
            while batch := list(itertools.islice(args, window)):
                yield from dask.compute(*[dask.delayed(fn, pure=False)(*a) for a in batch], scheduler="threads")
            return
        futures: deque = deque()
        for a in args:
            futures.append(client.submit(fn, *a, pure=False))
            if len(futures) >= window:
                yield _result(futures.popleft())
        while futures:
            yield _result(futures.popleft())


def _result(future):
    try:
        return future.result()
    finally:
        future.release()


def describe(scheduler) -> str:
    if scheduler is None or scheduler == "":
        return "dask, local threads"
    return f"dask scheduler {scheduler if isinstance(scheduler, str) else scheduler.scheduler.address}"
