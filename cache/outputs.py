"""What heads write back into the store: predictions/ (schema.PREDICTIONS), under a complete flag.

`begin_predictions` creates the arrays at full size with `complete=false` and the run that
writes them; `finish_predictions` sets `complete=true` once the last group is in. The store holds
one run's predictions: a different run's finished predictions are not replaced unless asked for
(their CSVs and summary stay in that run's own folder either way).

In a local store the new predictions are written beside the old ones, in predictions_partial/, and
renamed over predictions/ only when complete: a `heads predict` that fails or is killed (a full disk,
a bad run) leaves the previous complete predictions as they were. On an object store (no renames)
they are written in place and an interrupted run leaves predictions/ flagged incomplete, which
`cache info` and `cache verify` report. `lock_predictions` keeps a second `heads predict` off the
same local store while one runs.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil

import numpy as np
import zarr

from cache import schema
from cache.store import Store, StoreError
from runtime.files import swap_folder

LOCK_NAME = ".predict.lock"


def _local(store: Store) -> bool:
    return "://" not in store.url


def predictions_run(store: Store) -> dict | None:
    """The attributes of the store's predictions/ group (run, modality, complete, counts), or None."""
    if "predictions" not in store.group:
        return None
    return dict(store.group["predictions"].attrs)


@contextlib.contextmanager
def lock_predictions(store: Store):
    """An exclusive lock on a local store's predictions while the block runs (released however it ends,
    and by the system if the process dies); nothing for object stores."""
    if not _local(store):
        yield
        return
    fd = os.open(os.path.join(store.location, LOCK_NAME), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{store.url}: another `heads predict` is writing this store's predictions now; wait "
                             f"for it to finish (nothing was written)") from None
        yield
    finally:
        os.close(fd)


def begin_predictions(store: Store, run: str, modality: str, git_commit: str | None,
                      overwrite: bool = False, embedding_dim: int | None = None) -> dict[str, zarr.Array]:
    previous = predictions_run(store)
    if previous and previous.get("complete") and previous.get("run") != run and not overwrite:
        raise StoreError(f"{store.url} holds the predictions of another run ({previous.get('run')}); "
                         f"pass --overwrite to replace them with those of {run}")
    group = schema.PREDICTIONS_PARTIAL if _local(store) else "predictions"
    if _local(store) and os.path.isdir(os.path.join(store.location, group)):
        shutil.rmtree(os.path.join(store.location, group))      # a killed run's leftovers
    sizes = {"influencers": store.n_influencers, "posts": store.n_posts}
    arrays = {}
    for name, (table, dtype, fill) in schema.PREDICTIONS.items():
        n = sizes[table]
        arrays[name] = store.group.create_array(f"{group}/{name}", shape=(n,), dtype=dtype,
                                                chunks=(max(1, min(n, schema.TABLE_CHUNK)),), fill_value=fill,
                                                overwrite=True)
    if embedding_dim:
        m = store.n_influencers
        arrays[schema.EMBEDDING] = store.group.create_array(
            f"{group}/{schema.EMBEDDING}", shape=(m, int(embedding_dim)), dtype="float16",
            chunks=(max(1, min(m, 4096)), int(embedding_dim)), fill_value=np.nan, overwrite=True)
    store.group[group].attrs.update(run=run, modality=modality, git_commit=git_commit, complete=False)
    return arrays


def finish_predictions(store: Store) -> None:
    if not _local(store):
        store.group["predictions"].attrs.update(complete=True, influencers=store.n_influencers, posts=store.n_posts)
        return
    store.group[schema.PREDICTIONS_PARTIAL].attrs.update(complete=True, influencers=store.n_influencers,
                                                         posts=store.n_posts)
    swap_folder(os.path.join(store.location, schema.PREDICTIONS_PARTIAL), os.path.join(store.location, "predictions"))
