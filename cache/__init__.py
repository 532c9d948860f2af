"""The feature store shared by every stage: schema, blocks, labels, readers, checks.

`cache` imports none of extract, heads and baselines; they all import it. Below it is only `runtime`
(errors, console, progress, dask scheduling, devices), which imports nothing of the project.
"""
from cache.schema import (  # noqa: F401
    INFLUENCER_CATEGORIES,
    POST_CATEGORIES,
    SCHEMA_VERSION,
    SPLITS,
    Status,
)
from cache.store import StoreError, create_store, open_store  # noqa: F401
