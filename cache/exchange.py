"""`cache export STORE OUT.h5` and `cache import OUT.h5 STORE`: the store as one HDF5 file (h5py).

The file mirrors the store: one dataset per array, at the same path, chunked by rows (tables
lzf-compressed; features raw, or image features lzf-compressed with `--compress`), with the array's attributes and its Zarr layout (chunks, shards, fill value, codec) kept
as JSON attributes, and the root attributes on the file. Arrays are streamed a block of rows at
a time, so memory stays flat at 10 M posts. Both commands write under a temporary name (export)
or with `complete=false` until the end (import), so an interrupted run leaves nothing that passes
for finished.

`--labelled-only` exports a self-consistent store of what training needs: the labelled
influencers with their whole bags, and the labelled posts of other influencers (those
influencers come along with only those posts; attribute `exported.partial_bags` counts them).
Feature blocks are re-cut for the new row numbering; a new block is marked done when every row
in it came from a done block.
"""
from __future__ import annotations

import errno
import json
import os
import time
import warnings

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from cache import foreign, schema
from cache.store import Store, StoreError, open_store
from runtime.files import atomic_path, outside_inputs, require_space

FORMAT = "influencer-profiler-export/1"
ROWS = schema.TABLE_CHUNK * 4      # rows per copied piece of a table


def _members(group: zarr.Group) -> list:
    with warnings.catch_warnings():      # the index's lock file is not a Zarr node, and that is fine
        warnings.simplefilter("ignore")
        return sorted(((k, v) for k, v in group.members() if k not in schema.TRANSIENT_GROUPS), key=lambda kv: kv[0])


def _arrays(group: zarr.Group, prefix: str = ""):
    """(path, array) of every array under the group, groups walked in a fixed order."""
    for name, member in _members(group):
        path = f"{prefix}{name}"
        if isinstance(member, zarr.Array):
            yield path, member
        elif isinstance(member, zarr.Group):
            yield from _arrays(member, path + "/")


def _groups(group: zarr.Group, prefix: str = ""):
    for name, member in _members(group):
        if isinstance(member, zarr.Group):
            yield f"{prefix}{name}", member
            yield from _groups(member, f"{prefix}{name}/")


def _layout(arr: zarr.Array) -> dict:
    fill = arr.fill_value
    if isinstance(fill, np.generic):
        fill = fill.item()
    return {"chunks": list(arr.chunks), "shards": list(arr.shards) if arr.shards else None,
            "fill_value": None if fill is None or fill == "" else fill,
            "zstd": [c.level for c in (arr.compressors or ()) if isinstance(c, ZstdCodec)][:1] or None,
            "dtype": "str" if arr.dtype.kind in "OTU" or "String" in str(arr.dtype) else str(arr.dtype)}


def _step(store: Store, path: str, arr: zarr.Array) -> int:
    """Rows per piece: one block for features (their shard), a table chunk run otherwise."""
    if path.startswith("features/") and arr.ndim == 2:
        return store.block
    return ROWS


def _prefetched(read, starts):
    """(start, read(start)) for each start (a row, or a range), the next piece read in a thread while the
    caller writes this one: the store's decoding and the file's writing overlap."""
    from concurrent.futures import ThreadPoolExecutor
    starts = list(starts)
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(read, starts[0]) if starts else None
        for k, a in enumerate(starts):
            piece = nxt.result()
            nxt = pool.submit(read, starts[k + 1]) if k + 1 < len(starts) else None
            yield a, piece


def _pieces(pick: np.ndarray, step: int, block: int | None) -> list[tuple[int, int]]:
    """[a, b) ranges of `pick` (sorted rows) to gather at once: at most `step` rows, and for features
    never across a source block, so one gather decodes one block's shard (sparse selections would
    otherwise decode every block they touch at once)."""
    cuts = set(range(0, len(pick), step))
    if block is not None and len(pick):
        cuts.update((np.flatnonzero(np.diff(pick // block)) + 1).tolist())
    cuts = sorted(cuts | {len(pick)})
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _selection(store: Store) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """--labelled-only: (influencer indices, post rows, new offsets, partial bags)."""
    ilabel = store["influencers/label"][:]
    offsets = store.offsets()
    owner_of_labelled = np.zeros(store.n_influencers, bool)
    plabel_rows = []
    for start in range(0, store.n_posts, ROWS):
        lab = store["posts/label"][start:start + ROWS]
        rows = start + np.flatnonzero(lab >= 0)
        plabel_rows.append(rows)
        owner_of_labelled[store["posts/influencer"].get_orthogonal_selection((rows,)).astype(np.int64)] = True
    plabel_rows = np.concatenate(plabel_rows) if plabel_rows else np.zeros(0, np.int64)
    whole = ilabel >= 0
    chosen = np.flatnonzero(whole | owner_of_labelled)
    bag_rows = [np.arange(offsets[j], offsets[j + 1]) for j in np.flatnonzero(whole)]
    rows = np.unique(np.concatenate(bag_rows + [plabel_rows]) if bag_rows or len(plabel_rows) else np.zeros(0, np.int64))
    owner = np.searchsorted(offsets, rows, side="right") - 1
    counts = np.bincount(np.searchsorted(chosen, owner), minlength=len(chosen))
    new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return chosen, rows.astype(np.int64), new_offsets, int((~whole[chosen]).sum())


def export_store(url: str, out: str, labelled_only: bool = False, compress_images: bool = False,
                 progress=None) -> dict:
    import h5py
    outside_inputs(out, {"store": url})
    store = open_store(url)
    t0 = time.perf_counter()
    sel = None                 # labelled-only: (influencers kept, posts kept, their offsets)
    partial = 0
    if labelled_only:
        infl, rows, new_offsets, partial = _selection(store)
        if not len(infl):
            raise StoreError(f"{url}: nothing is labelled; run `cache labels` first or export without --labelled-only")
        sel = (infl, rows, new_offsets)
    n_new = store.n_posts if sel is None else len(sel[1])
    m_new = store.n_influencers if sel is None else len(sel[0])
    written = 0
    require_space(out, 0)
    with atomic_path(out, ".h5") as tmp, h5py.File(tmp, "w") as f:
        root = store.attrs
        if labelled_only:
            root["exported"] = {"labelled_only": True, "source": store.location, "influencers": int(m_new),
                                "posts": int(n_new), "partial_bags": partial}
        f.attrs["format"] = FORMAT
        f.attrs["zarr_attrs"] = json.dumps(root)
        for gpath, g in _groups(store.group):
            f.require_group(gpath).attrs["zarr_attrs"] = json.dumps(dict(g.attrs))
        for path, arr in _arrays(store.group):
            lay = _layout(arr)
            shape = _export_shape(store, path, arr, sel, n_new, m_new)
            dtype = h5py.string_dtype("utf-8") if lay["dtype"] == "str" else np.dtype(lay["dtype"])
            # Features are written raw unless asked: lzf runs at ~80 MB/s on one core and saves ~10-40 %
            # (ReLU zeros); the dense text features do not compress at all. Tables are small: lzf.
            compress = "lzf" if (path == "features/image" and compress_images) or not path.startswith("features/") \
                or arr.ndim == 1 else None
            d = f.create_dataset(path, shape=shape, dtype=dtype,
                                 chunks=(max(1, min(shape[0], arr.chunks[0])),) + tuple(shape[1:]) if shape[0] else None,
                                 compression=compress)
            d.attrs["zarr_attrs"] = json.dumps(dict(arr.attrs))
            d.attrs["zarr_layout"] = json.dumps(lay)
            if shape[0]:
                written += _export_array(store, path, arr, d, lay, sel, n_new=n_new, progress=progress, out_path=out)
    return {"out": out, "posts": int(n_new), "influencers": int(m_new), "partial_bags": partial,
            "bytes": os.path.getsize(out), "array_bytes": written, "seconds": time.perf_counter() - t0}


def _export_shape(store, path: str, arr, sel, n_new: int, m_new: int) -> tuple:
    """The exported array's shape: the store's, or cut to the labelled influencers and their posts."""
    if sel is None:
        return arr.shape
    table = path.split("/")[0]
    if path == "influencers/offsets":
        return (m_new + 1,)
    if path.endswith("_done"):
        return (-(-n_new // store.block),)
    if table == "posts" or (table in ("features", "predictions") and arr.shape[0] == store.n_posts):
        return (n_new,) + arr.shape[1:]
    if table == "influencers" or (table == "predictions" and arr.shape[0] == store.n_influencers):
        return (m_new,) + arr.shape[1:]
    return arr.shape


def _export_array(store, path: str, arr, d, lay: dict, sel, *, n_new: int, progress, out_path: str) -> int:
    """Copy one array into its dataset a block at a time (the next block read while this one is
    written); returns the bytes of numbers written."""
    written = 0

    def put(a, piece):
        nonlocal written
        # h5py cannot fail cleanly on a full disk (it crashes at close): never let it reach one
        size = sum(len(str(s)) * 4 + 16 for s in piece) if lay["dtype"] == "str" else piece.nbytes
        require_space(out_path, size)
        d[a:a + len(piece)] = piece.astype(object) if lay["dtype"] == "str" else piece
        written += piece.nbytes if lay["dtype"] != "str" else 0
        if progress and path.startswith("features/") and arr.ndim == 2:
            progress(len(piece))

    if sel is not None and path == "influencers/offsets":
        d[:] = sel[2]
    elif sel is not None and path.endswith("_done"):
        row_done = arr[:][sel[1] // store.block]
        d[:] = np.array([row_done[b * store.block:(b + 1) * store.block].all() for b in range(d.shape[0])])
    elif sel is None or d.shape[0] == arr.shape[0]:
        step = _step(store, path, arr)
        for a, piece in _prefetched(lambda a: arr[a:a + step], range(0, d.shape[0], step)):
            put(a, piece)
    else:
        infl, rows = sel[0], sel[1]
        pick = rows if d.shape[0] == n_new else infl
        pieces = _pieces(pick, _step(store, path, arr), store.block if arr.ndim == 2 else None)

        def gather(ab):
            return arr.get_orthogonal_selection((pick[ab[0]:ab[1]],) + (slice(None),) * (arr.ndim - 1))
        for (a, _), piece in _prefetched(gather, pieces):
            if path == "posts/influencer":
                piece = np.searchsorted(infl, piece.astype(np.int64)).astype(piece.dtype)
            put(a, piece)
    return written


def import_store(path: str, url: str, progress=None) -> dict:
    """A new store from a `cache export` file, which is checked whole against the schema before anything
    is created (cache.foreign: nothing outside the file is read, nothing it merely declares is
    allocated), copied a bounded piece at a time, and verified before it is flagged complete; a store
    that does not verify is removed again. Exit: a store that verifies, or one error line."""
    import h5py
    if not os.path.isfile(path):
        raise StoreError(f"{path}: no such file")
    exists = os.path.exists(url) if "://" not in url else _url_exists(url)
    if exists:
        raise StoreError(f"{url} already exists; import into a new path (nothing was written)")
    t0 = time.perf_counter()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise StoreError(f"{path}: not an HDF5 file ({e})") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise StoreError(f"{path}: not a `cache export` file (format {f.attrs.get('format')!r})")
        root = foreign.json_attr(path, f, "zarr_attrs", "the file")
        if root.get("schema_version") != schema.SCHEMA_VERSION:
            raise StoreError(f"{path}: store schema {root.get('schema_version')!r}, this code reads "
                             f"schema {schema.SCHEMA_VERSION}")
        checked = foreign.check_export(path, f)
        group = zarr.open_group(store=url, mode="w-")
        try:
            _copy(path, checked, group, progress)
        except BaseException as e:
            _remove_store(url)
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreError(f"{url}: could not write (the disk is full); nothing was imported") from None
            if isinstance(e, (OSError, RuntimeError, ValueError, TypeError)) and not isinstance(e, StoreError):
                why = str(e).splitlines()[0][:160] if str(e) else ""
                raise StoreError(f"{path}: cannot be read ({type(e).__name__}: {why}); nothing was imported") from None
            raise
    errors = _verify_imported(url, checked.root)
    if errors:
        _remove_store(url)
        raise StoreError(f"{path}: the imported store does not verify ({errors[0]}); nothing was imported")
    done = zarr.open_group(store=url, mode="r+")
    del done.attrs["importing"]
    done.attrs.update(checked.root)          # `complete` as the source had it: last, once everything is in
    return {"store": url, "seconds": time.perf_counter() - t0, "posts": int(open_store(url).n_posts)}


def _copy(path: str, checked: "foreign.Checked", group: zarr.Group, progress) -> None:
    """Every checked array into the new store (flagged incomplete, as an import in progress), in pieces
    of the store's own sizes: a block of features, a run of table chunks, STRING_ROWS strings."""
    group.attrs.update(dict(checked.root, complete=False, importing=os.path.abspath(path)))
    block = checked.root["block"]
    for m in checked.members:
        d, lay = m.dataset, m.layout
        kw = {}
        if lay["shards"]:
            kw["shards"] = tuple(lay["shards"])
        if lay["zstd"] is not None:
            kw["compressors"] = ZstdCodec(level=lay["zstd"][0])
        elif m.name == "features/text":
            kw["compressors"] = None
        text = lay["dtype"] == "str"
        arr = group.create_array(m.name, shape=d.shape, dtype=str if text else lay["dtype"],
                                 chunks=tuple(lay["chunks"]), fill_value="" if text else lay["fill_value"], **kw)
        arr.attrs.update(m.attrs)
        step = block if d.ndim == 2 else foreign.STRING_ROWS if text else ROWS
        for a in range(0, d.shape[0], step):
            piece = d.asstr()[a:a + step] if text else d[a:a + step]
            if text:
                foreign.check_strings(path, m.name, piece)
            arr[a:a + len(piece)] = piece
            if progress and m.name.startswith("features/") and d.ndim == 2:
                progress(len(piece))
    for gname, attrs in checked.groups.items():
        if gname in group:
            group[gname].attrs.update(attrs)


def _verify_imported(url: str, root: dict) -> list[str]:
    """`cache verify`'s checks on the new store, as if complete (it is not flagged so until they pass)."""
    from cache.inspect import verify
    g = zarr.open_group(store=url, mode="r+")
    g.attrs.update(complete=True)
    try:
        return verify(open_store(url))
    except StoreError as e:
        return [str(e)]
    finally:
        g.attrs.update(complete=False)


def _remove_store(url: str) -> None:
    import shutil
    if "://" not in url:
        shutil.rmtree(url, ignore_errors=True)
    else:
        import fsspec
        fs, p = fsspec.core.url_to_fs(url)
        try:
            fs.rm(p, recursive=True)
        except Exception:      # noqa: BLE001 - best effort; the store is flagged incomplete either way
            pass


def _url_exists(url: str) -> bool:
    try:
        zarr.open_group(store=url, mode="r")
        return True
    except Exception:
        return False
