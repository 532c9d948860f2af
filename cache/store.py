"""Creating and opening the store: a Zarr v3 group at a local path or an fsspec URL."""
from __future__ import annotations

import os

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from cache import schema
from runtime.errors import UserError


class StoreError(UserError):
    """A store is missing, of another schema, or lacks what a command needs."""


class Store:
    """Thin handle over the Zarr group; arrays are read through it, never cached in memory."""

    def __init__(self, group: zarr.Group, url: str):
        self.group = group
        self.url = url

    # -- attributes ---------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def block(self) -> int:
        return int(self.group.attrs["block"])

    @property
    def n_posts(self) -> int:
        return int(self["posts/influencer"].shape[0])

    @property
    def n_influencers(self) -> int:
        return int(self["influencers/username"].shape[0])

    @property
    def n_blocks(self) -> int:
        return -(-self.n_posts // self.block)

    @property
    def influencer_categories(self) -> list[str]:
        return list(self.group.attrs["influencer_categories"])

    @property
    def post_categories(self) -> list[str]:
        return list(self.group.attrs["post_categories"])

    @property
    def location(self) -> str:
        """The URL, or the absolute path of a local store: what tasks in other processes open."""
        return self.url if "://" in self.url else os.path.abspath(self.url)

    def __getitem__(self, name: str) -> zarr.Array:
        try:
            return self.group[name]
        except KeyError:
            raise StoreError(f"{self.url}: the store has no array '{name}'") from None

    def __contains__(self, name: str) -> bool:
        try:
            self.group[name]
            return True
        except KeyError:
            return False

    def has_features(self, modality: str) -> bool:
        return f"features/{modality}" in self

    def offsets(self) -> np.ndarray:
        return self["influencers/offsets"][:]

    def block_rows(self, b: int) -> slice:
        return slice(b * self.block, min((b + 1) * self.block, self.n_posts))


def _open_group(url: str, mode: str) -> zarr.Group:
    # zarr resolves fsspec URLs (s3://, gs://, memory://) itself; a plain path is a LocalStore.
    return zarr.open_group(store=url, mode=mode)


def open_store(url: str, mode: str = "r", allow_incomplete: bool = False) -> Store:
    """Open an existing store; `mode` is 'r' or 'r+'. A store whose `extract index` did not finish
    is refused (its tables are partial) unless `allow_incomplete`."""
    try:
        group = _open_group(url, mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise StoreError(f"{url}: no store here (run `extract index DATASET {url}` first)") from None
    except Exception as e:
        if "://" not in url:
            # a corrupted zarr.json and the like: name the store and the cause, in one line
            raise StoreError(f"{url}: cannot read the store's metadata ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else ''}); is it a store written by "
                             f"`extract index`?") from None
        # object stores fail in their own ways (credentials, endpoint, bucket): one line, the cause named
        raise StoreError(f"{url}: cannot open the store ({type(e).__name__}: {e})") from None
    version = group.attrs.get("schema_version")
    if version is None:
        raise StoreError(f"{url}: this Zarr group is not an Influencer Profiler store (no schema_version)")
    if version != schema.SCHEMA_VERSION:
        raise StoreError(f"{url}: store schema {version}, this code reads schema {schema.SCHEMA_VERSION}")
    if group.attrs.get("complete") is False and not allow_incomplete and group.attrs.get("importing"):
        raise StoreError(f"{url}: the import of {group.attrs['importing']} did not finish (`cache import` was "
                         f"stopped before the end); delete {url} and run `cache import` again")
    if group.attrs.get("complete") is False and not allow_incomplete:
        raise StoreError(f"{url}: the index did not finish (`extract index` was stopped before the end); "
                         f"rerun `extract index DATASET {url} --overwrite`")
    return Store(group, url)


def string_chunk(block: int) -> int:
    """Rows per chunk of the posts/ string tables: the block, or (tiny test blocks) a multiple of it."""
    return block * max(1, 1024 // block)


def create_store(url: str, dataset_root: str, block: int, mode: str = "w") -> Store:
    """A new, empty store: root attributes and empty, appendable post/influencer tables.

    The tables grow while `extract index` streams posts in; the feature arrays are only
    created (at full size) once the number of posts is known, by `create_features`.
    """
    group = _open_group(url, mode)      # "a" where the caller has emptied (and locked) the folder itself
    group.attrs.update(
        schema_version=schema.SCHEMA_VERSION,
        dataset_root=dataset_root,
        influencer_categories=schema.INFLUENCER_CATEGORIES,
        post_categories=schema.POST_CATEGORIES,
        block=int(block),
        complete=False,
    )
    chunk = (schema.TABLE_CHUNK,)
    for name in schema.POST_STR:
        # the shard jobs read captions and image paths one block at a time: chunks of whole blocks, so
        # a block's read decodes only its own strings (chunks of 65,536 made a 16,384-row block decode 4x)
        group.create_array(f"posts/{name}", shape=(0,), dtype=str, chunks=(string_chunk(block),))
    group.create_array("posts/influencer", shape=(0,), dtype="int32", chunks=chunk)
    for name in schema.POST_INT:
        group.create_array(f"posts/{name}", shape=(0,), dtype="int64", chunks=chunk)
    for kind in ("kind", "where", "detail"):
        group.create_array(f"problems/{kind}", shape=(0,), dtype=str, chunks=(4096,))
    return Store(group, url)


def create_post_extras(store: Store) -> None:
    """The optional posts/ columns `extract index` appends beside the required ones (schema.POST_EXTRA);
    other writers of the tables (planted stores, imports of older exports) leave them out."""
    for name in schema.POST_EXTRA:
        store.group.create_array(f"posts/{name}", shape=(0,), dtype=schema.DTYPES[f"posts/{name}"],
                                 chunks=(schema.TABLE_CHUNK,))


def write_influencers(store: Store, table: dict[str, np.ndarray]) -> None:
    """Write the influencers/ table in one go (M is small: 34 K rows in the release)."""
    for name, values in table.items():
        dtype = str if name == "username" else values.dtype
        arr = store.group.create_array(f"influencers/{name}", shape=values.shape, dtype=dtype,
                                       chunks=(max(1, min(len(values), schema.TABLE_CHUNK)),),
                                       overwrite=True)
        if len(values):
            arr[:] = values


def create_labels(store: Store) -> None:
    """Label and split arrays, all 'none' until `cache labels` fills them."""
    for table, n in (("posts", store.n_posts), ("influencers", store.n_influencers)):
        chunk = (max(1, min(n, schema.TABLE_CHUNK * 4)),)
        store.group.create_array(f"{table}/label", shape=(n,), dtype="int8", chunks=chunk,
                                 fill_value=-1, overwrite=True)
        store.group.create_array(f"{table}/split", shape=(n,), dtype="int8", chunks=chunk,
                                 fill_value=0, overwrite=True)
    create_label_source(store)


def create_label_source(store: Store) -> None:
    """influencers/label_source: where each influencer's label came from (schema.LABEL_SOURCES)."""
    n = store.n_influencers
    store.group.create_array("influencers/label_source", shape=(n,), dtype="int8",
                             chunks=(max(1, min(n, schema.TABLE_CHUNK * 4)),), fill_value=0, overwrite=True)


def create_features(store: Store) -> None:
    """Full-size, NaN-filled feature arrays, per-row statuses and per-block done flags.

    Created once by `extract index`; shard jobs only ever write into them (DESIGN.md).
    """
    n, block = store.n_posts, store.block
    rows = max(1, n)
    inner = min(schema.FEATURE_CHUNK, block)
    for modality, dim in schema.MODALITIES.items():
        # Image features are sparse after ReLU and compress; BERT's dense output does not.
        compressors = ZstdCodec(level=1) if modality == "image" else None
        arr = store.group.create_array(
            f"features/{modality}", shape=(n, dim), dtype="float16",
            chunks=(inner, dim), shards=(block, dim), fill_value=np.nan,
            compressors=compressors, overwrite=True)
        arr.attrs["encoder"] = None
        store.group.create_array(f"features/{modality}_status", shape=(n,), dtype="uint8",
                                 chunks=(min(block, rows),), fill_value=0, overwrite=True)
        store.group.create_array(f"features/{modality}_done", shape=(store.n_blocks,), dtype="bool",
                                 chunks=(1,), fill_value=False, overwrite=True)
