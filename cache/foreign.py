"""A `cache export` file from someone else, checked before `cache import` creates anything.

The file is untrusted: it may point outside itself (HDF5 external storage, virtual datasets, soft
and external links), declare arrays it does not hold (10^12 rows of nothing, shards of 2^27 rows),
carry other dtypes, shapes or names than the store's schema, or hostile attributes. `check_export`
walks it by its links alone (never following one), compares every dataset with cache/schema.py
(names, dtypes, shapes, row counts consistent across tables, the Zarr layout within bounds tied to
the block size, declared bytes no more than the file can hold), and returns what to copy; any
defect is one `StoreError` naming the file and the array. Nothing outside the file is read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from cache import schema
from cache.store import StoreError

TABLES = ("posts", "influencers", "features", "problems", "predictions")
MAX_ATTRS = 16 << 20        # bytes of one JSON attribute
MAX_DEPTH = 32              # nesting of JSON attributes
MAX_ROWS = 2**31 - 1        # posts/influencer is int32
MAX_RATIO = 1100            # declared bytes per stored byte: gzip's limit is ~1032, lzf's ~90
FILTERS = {1: "gzip", 2: "shuffle", 3: "fletcher32", 32000: "lzf"}
STRING_ROWS = 1024          # rows of a string table read at once (memory: at most this x its longest string)
MAX_CATEGORIES = 1000


@dataclass
class Member:
    name: str
    dataset: object         # h5py.Dataset
    layout: dict
    attrs: dict


@dataclass
class Checked:
    root: dict              # the store's root attributes
    groups: dict[str, dict]  # group path -> attributes
    members: list[Member]
    n_posts: int
    n_influencers: int


def _fail(path: str, what: str) -> StoreError:
    return StoreError(f"{path}: {what}; refusing to import it (nothing was written)")


def _depth(obj, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(obj, dict):
        return max([_depth(v, level + 1) for v in obj.values()] or [level])
    if isinstance(obj, list):
        return max([_depth(v, level + 1) for v in obj] or [level])
    return level


def json_attr(path: str, obj, key: str, where: str) -> dict:
    """A JSON-object attribute, bounded in size and nesting."""
    if key not in obj.attrs:
        raise _fail(path, f"{where} has no {key} attribute (not written by `cache export`)")
    raw = obj.attrs[key]
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str) or len(raw) > MAX_ATTRS:
        raise _fail(path, f"{where}'s {key} attribute is not a JSON text of at most {MAX_ATTRS} bytes")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise _fail(path, f"{where}'s {key} attribute is not valid JSON ({str(e)[:80]})") from None
    if not isinstance(value, dict) or _depth(value) > MAX_DEPTH:
        raise _fail(path, f"{where}'s {key} attribute is not a JSON object of at most {MAX_DEPTH} levels")
    return value


def _walk(path: str, f) -> tuple[dict, dict]:
    """(group path -> group, array path -> dataset) by hard links only; any other link or member refused."""
    import h5py
    groups, datasets = {}, {}
    for table in f:
        link = f.get(table, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise _fail(path, f"/{table} is a {type(link).__name__} (links are not followed)")
        if table not in TABLES or not isinstance(f[table], h5py.Group):
            raise _fail(path, f"/{table} is not a table of the store's schema")
        groups[table] = f[table]
        for name in f[table]:
            full = f"{table}/{name}"
            link = f[table].get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise _fail(path, f"/{full} is a {type(link).__name__} (links are not followed)")
            if full not in schema.DTYPES:
                raise _fail(path, f"/{full} is not an array of the store's schema")
            obj = f[full]
            if not isinstance(obj, h5py.Dataset):
                raise _fail(path, f"/{full} is a group where the schema has an array")
            datasets[full] = obj
    return groups, datasets


def _storage(path: str, name: str, d) -> None:
    """Data inside this file only, through filters h5py always has."""
    if d.is_virtual:
        raise _fail(path, f"/{name} is a virtual dataset (it reads other files)")
    dcpl = d.id.get_create_plist()
    if dcpl.get_external_count():
        raise _fail(path, f"/{name} keeps its data in external files")
    for i in range(dcpl.get_nfilters()):
        code = dcpl.get_filter(i)[0]
        if code not in FILTERS:
            raise _fail(path, f"/{name} uses HDF5 filter {code}, not one of {', '.join(FILTERS.values())}")


def _dtype(path: str, name: str, d) -> str:
    import h5py
    want = schema.DTYPES[name]
    if want == "str":
        info = h5py.check_string_dtype(d.dtype)
        if info is None or info.length is not None:
            raise _fail(path, f"/{name} is {d.dtype}, the schema has variable-length UTF-8 strings")
    elif d.dtype != np.dtype(want):
        raise _fail(path, f"/{name} is {d.dtype}, the schema has {want}")
    return want


def _layout(path: str, name: str, d, block: int) -> dict:
    lay = json_attr(path, d, "zarr_layout", f"/{name}")
    want = schema.DTYPES[name]
    if lay.get("dtype") != want:
        raise _fail(path, f"/{name}'s recorded Zarr dtype {lay.get('dtype')!r} is not the schema's {want}")
    chunks, shards = lay.get("chunks"), lay.get("shards")
    ok_ints = lambda v, n: isinstance(v, list) and len(v) == n and all(  # noqa: E731
        isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)
    if not ok_ints(chunks, d.ndim):
        raise _fail(path, f"/{name}'s recorded chunks {chunks!r} are not {d.ndim} positive integers")
    if name in (f"features/{m}" for m in schema.MODALITIES):
        dim = schema.MODALITIES[name.split("/")[1]]
        if shards != [block, dim] or chunks[1] != dim or chunks[0] > block or block % chunks[0]:
            raise _fail(path, f"/{name}'s recorded layout (chunks {chunks}, shards {shards}) is not one block of "
                              f"{block} rows per shard")
    else:
        if shards is not None:
            raise _fail(path, f"/{name} records shards {shards!r}; only feature arrays are sharded")
        if chunks[0] > max(block, schema.TABLE_CHUNK * 4):
            raise _fail(path, f"/{name}'s recorded chunks of {chunks[0]:,} rows exceed the schema's bound "
                              f"({max(block, schema.TABLE_CHUNK * 4):,})")
    zstd = lay.get("zstd")
    if zstd is not None and not (isinstance(zstd, list) and len(zstd) == 1 and isinstance(zstd[0], int)
                                 and not isinstance(zstd[0], bool) and 0 <= zstd[0] <= 22):
        raise _fail(path, f"/{name}'s recorded zstd level {zstd!r} is not a level 0-22")
    fill = lay.get("fill_value")
    if want != "str" and fill is not None:
        if not isinstance(fill, (int, float)) or (want == "bool") != isinstance(fill, bool):
            raise _fail(path, f"/{name}'s recorded fill value {fill!r} does not fit {want}")
        if want not in ("float16", "float32", "bool") and not (isinstance(fill, int) and
                                                                np.iinfo(want).min <= fill <= np.iinfo(want).max):
            raise _fail(path, f"/{name}'s recorded fill value {fill!r} does not fit {want}")
    return lay


def _declared_bytes(d) -> int:
    item = 16 if d.dtype.kind == "O" else d.dtype.itemsize
    return int(np.prod(d.shape, dtype=np.float64)) * item


def _root(path: str, f) -> dict:
    root = json_attr(path, f, "zarr_attrs", "the file")
    block = root.get("block")
    if not isinstance(block, int) or isinstance(block, bool) or not 1 <= block <= schema.MAX_BLOCK:
        raise _fail(path, f"its block {block!r} is not a whole number of rows in 1..{schema.MAX_BLOCK}")
    for key in ("influencer_categories", "post_categories"):
        cats = root.get(key)
        if (not isinstance(cats, list) or not 1 <= len(cats) <= MAX_CATEGORIES
                or not all(schema.valid_name(c) for c in cats)):
            raise _fail(path, f"its {key} are not a list of 1..{MAX_CATEGORIES} plain names")
    if not isinstance(root.get("dataset_root", ""), str):
        raise _fail(path, "its dataset_root is not a text")
    return root


def check_export(path: str, f) -> Checked:
    """Everything `cache import` will copy, checked against the schema (see the module's docstring)."""
    import os
    root = _root(path, f)
    block = root["block"]
    groups, datasets = _walk(path, f)
    missing = [n for n in schema.REQUIRED if n not in datasets]
    if missing:
        raise _fail(path, f"arrays the store needs are missing ({', '.join(missing[:4])})")
    budget = MAX_RATIO * (os.path.getsize(path) + (1 << 20))
    members = []
    for name in sorted(datasets):
        d = datasets[name]
        _storage(path, name, d)
        _dtype(path, name, d)
        features = name in (f"features/{m}" for m in schema.MODALITIES)
        embedding = name == f"predictions/{schema.EMBEDDING}"
        want_ndim = 2 if features or embedding else 1
        if d.ndim != want_ndim or d.shape[0] > MAX_ROWS or (features and
                                                            d.shape[1] != schema.MODALITIES[name.split("/")[1]]) \
                or (embedding and not 1 <= d.shape[1] <= schema.MAX_EMBEDDING):
            raise _fail(path, f"/{name} has shape {d.shape}, not the schema's")
        if _declared_bytes(d) > budget:
            raise _fail(path, f"/{name} declares {d.shape[0]:,} rows ({_declared_bytes(d):,} bytes), more than a file "
                              f"of {os.path.getsize(path):,} bytes can hold")
        members.append(Member(name, d, _layout(path, name, d, block), json_attr(path, d, "zarr_attrs", f"/{name}")))
    rows = {m.name: m.dataset.shape[0] for m in members}
    n, mm = rows["posts/influencer"], rows["influencers/username"]
    expect = {"N": n, "M": mm, "M+1": mm + 1, "B": -(-n // block)}
    problems = {rows[m] for m in rows if m.startswith("problems/")}
    if len(problems) > 1:
        raise _fail(path, "its problems/ arrays differ in length")
    for name, got in rows.items():
        kind = schema.ARRAYS[name][0]
        if kind in expect and got != expect[kind]:
            raise _fail(path, f"/{name} has {got:,} rows; the tables say {expect[kind]:,} ({kind})")
    group_attrs = {g: json_attr(path, obj, "zarr_attrs", f"/{g}") if "zarr_attrs" in obj.attrs else {}
                   for g, obj in groups.items()}
    return Checked(root, group_attrs, members, n, mm)


def check_strings(path: str, name: str, values) -> None:
    """Post ids, usernames and image paths follow the rules `extract index` applies (they name files)."""
    rule = {"posts/id": schema.valid_name, "influencers/username": schema.valid_name,
            "posts/image": schema.valid_image_path}.get(name)
    if rule is None:
        return
    for v in values:
        if not rule(str(v)):
            raise _fail(path, f"/{name} holds {str(v)[:60]!r}, which `extract index` would never write "
                              f"(ids and usernames are one plain name; image paths stay inside the dataset)")
