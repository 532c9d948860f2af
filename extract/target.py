"""Where `extract index` may write: the checks that keep it from deleting a dataset or a foreign
folder, and the lock that keeps a second index off the same store (README, hostile input)."""
from __future__ import annotations

import fcntl
import json
import os
import shutil

from cache import schema
from cache.store import StoreError, open_store

LOCK_NAME = ".index.lock"


def is_our_store(path: str) -> bool:
    """A folder holding a Zarr group written by `extract index` (schema_version in its attributes)."""
    try:
        with open(os.path.join(path, "zarr.json"), "rb") as f:
            meta = json.loads(f.read(1 << 20))
        return isinstance(meta, dict) and "schema_version" in (meta.get("attributes") or {})
    except (OSError, ValueError, RecursionError):
        return False


def _refuse_existing(url: str, overwrite: bool) -> None:
    """Object stores: an existing store of ours is replaced only with --overwrite; anything else is refused."""
    try:
        open_store(url, "r", allow_incomplete=True)
    except StoreError as e:
        if "not an Influencer Profiler store" in str(e):
            raise StoreError(f"{url}: a Zarr group that is not an Influencer Profiler store is here; nothing was "
                             f"changed; choose a new store URL") from None
        return      # nothing there (or nothing readable as a store): a new store is written
    if not overwrite:
        raise StoreError(f"{url}: a store already exists here; pass --overwrite to index again and discard "
                         f"its features, labels and predictions")


def prepare_target(root: str, url: str, overwrite: bool):
    """Check STORE before anything is written, lock it against a second `extract index`, empty it.

    A local STORE must be a new path, an empty folder, or (with --overwrite) a store of ours;
    never the dataset root, a folder that contains it, or a folder of anything else: indexing
    replaces what is there. Returns the lock's file descriptor (held until the process ends).
    """
    if "://" in url:
        _refuse_existing(url, overwrite)
        return None
    path = os.path.abspath(url)
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if real == real_root or real_root.startswith(real.rstrip(os.sep) + os.sep):
        raise StoreError(f"{url}: this is the dataset root or a folder containing it; choose a new folder for the store")
    if os.path.lexists(path):
        if os.path.islink(path) or not os.path.isdir(path):
            raise StoreError(f"{url}: exists and is not a folder; choose a new path for the store")
        entries = [e for e in os.listdir(path) if e != LOCK_NAME]
        if entries and not is_our_store(path):
            raise StoreError(f"{url}: the folder is not empty and is not an Influencer Profiler store "
                             f"(it holds {entries[0]!r}{' and more' if len(entries) > 1 else ''}); "
                             f"nothing was changed; choose a new or empty folder")
        if entries and not overwrite:
            held = _features_held(url)
            raise StoreError(f"{url}: {'the store already holds ' + held if held else 'a store already exists here'}; "
                             f"pass --overwrite to index it again and discard its features, labels and predictions")
    os.makedirs(path, exist_ok=True)
    fd = lock_store(path, url)
    for entry in os.listdir(path):        # checked above: a store of ours, replaced with --overwrite
        if entry != LOCK_NAME:
            full = os.path.join(path, entry)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.remove(full)
    return fd


def lock_store(path: str, url: str) -> int:
    """Hold STORE's index lock (released when the descriptor is closed or the process ends); one line
    when another `extract index` (or `--update`) holds it."""
    fd = os.open(os.path.join(path, LOCK_NAME), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"{url}: another `extract index` is writing this store now; wait for it to finish") from None
    return fd


def _features_held(url: str) -> str:
    try:
        old = open_store(url, "r", allow_incomplete=True)
        held = [m for m in schema.MODALITIES if f"features/{m}_done" in old and old[f"features/{m}_done"][:].any()]
    except StoreError:
        return ""
    return f"{' and '.join(held)} features" if held else ""
