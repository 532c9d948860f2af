"""What heads write back into the store: predictions/ (schema.PREDICTIONS), under a complete flag.

`begin_predictions` creates the arrays at full size with `complete=false` and the run that
writes them; `finish_predictions` sets `complete=true` once the last group is in, so an
interrupted `heads predict` is reported by `cache info` and `cache verify`. The store holds one
run's predictions: a different run's finished predictions are not replaced unless asked for
(their CSVs and summary stay in that run's own folder either way).
"""
from __future__ import annotations

import zarr

from cache import schema
from cache.store import Store, StoreError


def predictions_run(store: Store) -> dict | None:
    """The attributes of the store's predictions/ group (run, modality, complete, counts), or None."""
    if "predictions" not in store.group:
        return None
    return dict(store.group["predictions"].attrs)


def begin_predictions(store: Store, run: str, modality: str, git_commit: str | None,
                      overwrite: bool = False) -> dict[str, zarr.Array]:
    previous = predictions_run(store)
    if previous and previous.get("complete") and previous.get("run") != run and not overwrite:
        raise StoreError(f"{store.url} holds the predictions of another run ({previous.get('run')}); "
                         f"pass --overwrite to replace them with those of {run}")
    sizes = {"influencers": store.n_influencers, "posts": store.n_posts}
    arrays = {}
    for name, (table, dtype, fill) in schema.PREDICTIONS.items():
        n = sizes[table]
        arrays[name] = store.group.create_array(f"predictions/{name}", shape=(n,), dtype=dtype,
                                                chunks=(max(1, min(n, schema.TABLE_CHUNK)),), fill_value=fill,
                                                overwrite=True)
    store.group["predictions"].attrs.update(run=run, modality=modality, git_commit=git_commit, complete=False)
    return arrays


def finish_predictions(store: Store) -> None:
    store.group["predictions"].attrs.update(complete=True, influencers=store.n_influencers, posts=store.n_posts)
