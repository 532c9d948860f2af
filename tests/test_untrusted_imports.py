"""#30: `cache import` of an HDF5 file from someone else: nothing read from outside the file, nothing
allocated that the file merely declares, ids that name files checked, one error line for every defect."""
import json
import os
import shutil

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from cache.cli import app as cache_app
from cache.exchange import export_store
from cache.store import open_store
from cache.synthetic import planted_store

SECRET = b"root:x:0:0:secret-line-from-outside\n" * 64


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    d = tmp_path_factory.mktemp("imp")
    store = str(d / "s.zarr")
    planted_store(store, influencers=24, posts=6, seed=0, block=64)
    path = str(d / "s.h5")
    export_store(store, path)
    secret = str(d / "secret.txt")
    open(secret, "wb").write(SECRET)
    return {"h5": path, "secret": secret, "store": store}


def _copy(export, tmp_path) -> str:
    path = str(tmp_path / "in.h5")
    shutil.copy(export["h5"], path)
    return path


def _replace(f, name, **kw):
    """Recreate dataset `name` with other creation options, keeping its attributes."""
    old = f[name]
    attrs = dict(old.attrs)
    data = old[()]
    del f[name]
    d = f.create_dataset(name, **{"data": data, **kw}) if "shape" not in kw else f.create_dataset(name, **kw)
    for k, v in attrs.items():
        d.attrs[k] = v
    return d


def _layout(f, name, **change):
    lay = json.loads(f[name].attrs["zarr_layout"])
    lay.update(change)
    f[name].attrs["zarr_layout"] = json.dumps(lay)


def _import(path, tmp_path) -> tuple[int, str, str]:
    out = str(tmp_path / "new.zarr")
    r = CliRunner().invoke(cache_app, ["import", path, out])
    return r.exit_code, r.output, out


def _refused(path, tmp_path, words: str) -> None:
    code, output, out = _import(path, tmp_path)
    lines = output.strip().splitlines()
    assert code == 2 and "Traceback" not in output and lines[-1].startswith("error:"), output
    assert words in lines[-1], lines[-1]
    assert not os.path.exists(out) or not os.listdir(out), "a refused import leaves nothing behind"


def test_external_storage_is_refused_and_nothing_outside_is_read(export, tmp_path):
    path = _copy(export, tmp_path)
    with h5py.File(path, "r+") as f:
        n = f["posts/likes"].shape[0]
        _replace(f, "posts/likes", shape=(n,), dtype="int64", external=[(export["secret"], 0, n * 8)])
    _refused(path, tmp_path, "external files")


def test_a_virtual_dataset_is_refused(export, tmp_path):
    other = str(tmp_path / "other.h5")
    with h5py.File(other, "w") as g:
        g["x"] = np.arange(1000, dtype=np.int64)
    path = _copy(export, tmp_path)
    with h5py.File(path, "r+") as f:
        n = f["posts/likes"].shape[0]
        attrs = dict(f["posts/likes"].attrs)
        del f["posts/likes"]
        layout = h5py.VirtualLayout(shape=(n,), dtype="int64")
        layout[:] = h5py.VirtualSource(other, "x", shape=(1000,))[:n]
        d = f.create_virtual_dataset("posts/likes", layout)
        for k, v in attrs.items():
            d.attrs[k] = v
    _refused(path, tmp_path, "virtual dataset")


@pytest.mark.parametrize("kind", ["external", "soft", "dangling"])
def test_links_are_refused(export, tmp_path, kind):
    other = str(tmp_path / "other.h5")
    with h5py.File(other, "w") as g:
        g["likes"] = np.arange(10**6)
    path = _copy(export, tmp_path)
    with h5py.File(path, "r+") as f:
        del f["posts/likes"]
        f["posts/likes"] = {"external": h5py.ExternalLink(other, "likes"), "soft": h5py.SoftLink("/posts/comments"),
                            "dangling": h5py.SoftLink("/nowhere")}[kind]
    _refused(path, tmp_path, "Link")


def test_a_self_linked_group_is_refused(export, tmp_path):
    path = _copy(export, tmp_path)
    with h5py.File(path, "r+") as f:
        f["posts/loop"] = f["posts"]          # a hard link to its own parent: a cycle
    _refused(path, tmp_path, "not an array of the store's schema")


@pytest.mark.parametrize("rows", [2**27, 2**30])
def test_declared_shards_of_huge_rows_are_refused_before_anything_is_allocated(export, tmp_path, rows):
    path = _copy(export, tmp_path)
    with h5py.File(path, "r+") as f:
        _layout(f, "features/image", shards=[rows, 1024], chunks=[rows, 1024])
    _refused(path, tmp_path, "one block")


def test_a_huge_block_and_huge_table_chunks_are_refused(export, tmp_path):
    path = _copy(export, tmp_path)
    with h5py.File(path, "r+") as f:
        _layout(f, "posts/likes", chunks=[2**30])
    _refused(path, tmp_path, "exceed the schema's bound")
    path = _copy(export, tmp_path)
    with h5py.File(path, "r+") as f:
        root = json.loads(f.attrs["zarr_attrs"])
        f.attrs["zarr_attrs"] = json.dumps(dict(root, block=2**27))
    _refused(path, tmp_path, "block")


@pytest.mark.parametrize("rows,words", [(10**12, "not the schema's"), (2**30, "more than a file")])
def test_declared_rows_the_file_cannot_hold_are_refused(export, tmp_path, rows, words):
    path = _copy(export, tmp_path)
    with h5py.File(path, "r+") as f:
        for name in ("posts/likes", "posts/comments"):
            _replace(f, name, shape=(rows,), dtype="int64", chunks=(65536,), compression="lzf")
    _refused(path, tmp_path, words)


@pytest.mark.parametrize("name,dtype", [("features/image", "int8"), ("posts/likes", "float64"),
                                        ("posts/id", "int64"), ("influencers/offsets", "int32")])
def test_wrong_dtypes_are_refused(export, tmp_path, name, dtype):
    path = _copy(export, tmp_path)
    with h5py.File(path, "r+") as f:
        shape = f[name].shape
        _replace(f, name, shape=shape, dtype=dtype)
    _refused(path, tmp_path, f"/{name} is")


@pytest.mark.parametrize("name", ["posts/id", "influencers/offsets", "posts/influencer"])
def test_missing_arrays_are_refused(export, tmp_path, name):
    path = _copy(export, tmp_path)
    with h5py.File(path, "r+") as f:
        del f[name]
    _refused(path, tmp_path, "missing")


def test_rows_that_disagree_across_tables_are_refused(export, tmp_path):
    path = _copy(export, tmp_path)
    with h5py.File(path, "r+") as f:
        _replace(f, "posts/likes", data=f["posts/likes"][:-1])
    _refused(path, tmp_path, "rows; the tables say")


@pytest.mark.parametrize("attr", ["{broken", "[" * 50_000 + "]" * 50_000, json.dumps({"a": [[[[[[[[[[[[[[[[[[[[[[[[
    [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}), "[]"])
def test_broken_or_deeply_nested_attributes_are_refused(export, tmp_path, attr):
    path = _copy(export, tmp_path)
    with h5py.File(path, "r+") as f:
        f["posts/id"].attrs["zarr_attrs"] = attr
    _refused(path, tmp_path, "zarr_attrs")


@pytest.mark.parametrize("name,value", [("posts/id", "../../outside"), ("posts/id", "a/b"), ("posts/id", ""),
                                        ("influencers/username", "..\\evil"), ("posts/image", "../../etc/passwd"),
                                        ("posts/image", "/etc/passwd")])
def test_ids_and_paths_that_would_leave_a_folder_are_refused(export, tmp_path, name, value):
    path = _copy(export, tmp_path)
    with h5py.File(path, "r+") as f:
        values = f[name].asstr()[:]
        values[1] = value
        _replace(f, name, data=values.astype(object), dtype=h5py.string_dtype("utf-8"))
    _refused(path, tmp_path, name)


def test_an_inconsistent_store_is_refused_and_removed(export, tmp_path):
    path = _copy(export, tmp_path)
    with h5py.File(path, "r+") as f:
        off = f["influencers/offsets"][:]
        off[3] = off[4] + 1
        f["influencers/offsets"][:] = off
    _refused(path, tmp_path, "does not verify")


def test_the_normal_export_still_imports_and_verifies(export, tmp_path):
    code, output, out = _import(export["h5"], tmp_path)
    assert code == 0, output
    r = CliRunner().invoke(cache_app, ["verify", out])
    assert r.exit_code == 0 and "ok" in r.output, r.output
    a, b = open_store(export["store"]), open_store(out)
    assert np.array_equal(a["features/image"][:], b["features/image"][:], equal_nan=True)
    assert "importing" not in b.attrs


def test_a_killed_import_says_the_import_did_not_finish(export, tmp_path, monkeypatch):
    import cache.exchange
    real = cache.exchange.foreign.check_strings

    def killed(path, name, values):
        if name == "posts/id":
            raise KeyboardInterrupt
        return real(path, name, values)
    monkeypatch.setattr(cache.exchange.foreign, "check_strings", killed)
    out = str(tmp_path / "new.zarr")
    with pytest.raises(KeyboardInterrupt):
        cache.exchange.import_store(export["h5"], out)
    monkeypatch.undo()
    if os.path.exists(out):            # removed on the way out; a SIGKILL would leave it flagged as an import
        pytest.fail("an interrupted import left its store behind")
    # a SIGKILL leaves the store as it was at that moment: flagged incomplete, importing
    import zarr
    g = zarr.open_group(out, mode="w")
    g.attrs.update(schema_version=1, complete=False, importing="/x/in.h5", block=64)
    r = CliRunner().invoke(cache_app, ["info", out])
    assert r.exit_code == 2 and "the import of /x/in.h5 did not finish" in r.output, r.output


@pytest.mark.parametrize("chunks", [[0], [-1], [1.5], "x", None])
def test_zero_negative_or_broken_chunks_are_refused(export, tmp_path, chunks):
    path = _copy(export, tmp_path)
    with h5py.File(path, "r+") as f:
        _layout(f, "posts/likes", chunks=chunks)
    _refused(path, tmp_path, "chunks")


def test_export_into_its_own_store_is_refused(export, tmp_path):
    store = str(tmp_path / "s.zarr")
    shutil.copytree(export["store"], store)
    r = CliRunner().invoke(cache_app, ["export", store, store])
    assert r.exit_code == 2 and "inside the store" in r.output.strip().splitlines()[-1], r.output
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]
