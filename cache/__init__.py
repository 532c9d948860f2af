"""The feature store shared by every stage: schema, blocks, labels, readers, checks.

`cache` imports none of the project's other packages; they all import it.
"""
from cache.schema import (  # noqa: F401
    INFLUENCER_CATEGORIES,
    POST_CATEGORIES,
    SCHEMA_VERSION,
    SPLITS,
    Status,
)
from cache.store import StoreError, create_store, open_store  # noqa: F401
