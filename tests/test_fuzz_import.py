"""Property-based fuzzing of `cache import` over hostile HDF5 files (hypothesis, #30).

Each example starts from a real `cache export` file and applies one to three generated defects: other
dtypes, shapes and declared rows; recorded Zarr layouts with any chunks, shards, codec levels and fill
values; broken, huge or deeply nested JSON attributes; soft, external and dangling links, extra members,
a self-linked group; external storage and virtual datasets that point at a canary outside the file;
post ids, usernames and image paths that would name other folders. The invariant: exit 0 with a store
that verifies, or one `error:` line and nothing left behind; never a traceback, never more memory than
a bound (tracemalloc's peak), never a byte of the canary in the store, never a path written outside STORE.

`make test` runs a few examples (FUZZ_EXAMPLES, default 15, derandomized); `make fuzz` runs many.
"""
import json
import os
import shutil
import tracemalloc

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cache.cli import app as cache_app
from cache.exchange import export_store
from cache.synthetic import planted_store

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CANARY = b"CANARY-outside-the-file-7f3a"
MEMORY_BOUND = 256 << 20
ARRAYS = ["posts/id", "posts/caption", "posts/image", "posts/influencer", "posts/likes", "posts/label",
          "influencers/username", "influencers/offsets", "influencers/followers", "features/image",
          "features/text", "features/image_status", "features/text_done", "problems/kind"]
HOSTILE_NAMES = ["../../outside", "a/b", "..", ".", "", "/etc/passwd", "x\\y", "\x00", "\ud83d", "ok_name", "=cmd"]
JSON_VALUE = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63), st.floats(),
                                    st.text(max_size=12)),
                          lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                  st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                          max_leaves=6)
HUGE = st.sampled_from([0, -1, 1, 3, 2**20, 2**27, 2**31, 2**40, 10**12])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz-import")
    store = str(d / "s.zarr")
    planted_store(store, influencers=12, posts=5, seed=1, block=32)
    h5 = str(d / "s.h5")
    export_store(store, h5)
    canary = str(d / "canary.bin")
    open(canary, "wb").write(CANARY * 4096)
    other = str(d / "other.h5")
    with h5py.File(other, "w") as f:
        f["x"] = np.frombuffer(CANARY * 4096, dtype=np.uint8).astype(np.int64)
    return {"h5": h5, "canary": canary, "other": other}


def _recreate(f, name, **kw):
    attrs = dict(f[name].attrs) if name in f else {}
    if name in f:
        del f[name]
    d = f.create_dataset(name, **kw)
    for k, v in attrs.items():
        d.attrs[k] = v


@st.composite
def defect(draw):
    kind = draw(st.sampled_from(["dtype", "rows", "declared", "layout", "attrs", "root", "link", "extra",
                                 "external", "virtual", "names", "ndim"]))
    return kind, draw(st.sampled_from(ARRAYS)), draw(st.integers(0, 2**31)), draw(JSON_VALUE), draw(HUGE), \
        draw(st.sampled_from(HOSTILE_NAMES)), draw(st.sampled_from(["int8", "float64", "uint8", "int32", "bool",
                                                                    "float16", "int64"]))


def _apply(f, src, d) -> None:
    kind, name, n, value, huge, hostile, dtype = d
    if name not in f:
        return
    rows = f[name].shape[0]
    if kind == "dtype":
        _recreate(f, name, shape=f[name].shape, dtype=dtype)
    elif kind == "rows":
        _recreate(f, name, data=f[name][()][: max(0, rows - 1 - n % 3)] if n % 2 else
                  np.concatenate([f[name][()], f[name][()][:1]]))
    elif kind == "declared":
        shape = (abs(huge) % (2**45),) + f[name].shape[1:]
        _recreate(f, name, shape=shape, dtype=f[name].dtype, chunks=(max(1, min(shape[0], 4096)),) + shape[1:]
                  if shape[0] else None, maxshape=(None,) + shape[1:])
    elif kind == "layout":
        lay = json.loads(f[name].attrs["zarr_layout"])
        key = ["chunks", "shards", "zstd", "fill_value", "dtype"][n % 5]
        lay[key] = [huge] * len(f[name].shape) if key in ("chunks", "shards") and n % 3 else value
        f[name].attrs["zarr_layout"] = json.dumps(lay)
    elif kind == "attrs":
        f[name].attrs["zarr_attrs"] = ["[" * 3000 + "]" * 3000, "{bad", json.dumps(value), "x" * (n % 1000)][n % 4]
    elif kind == "root":
        root = json.loads(f.attrs["zarr_attrs"])
        root[["block", "influencer_categories", "post_categories", "schema_version", "dataset_root"][n % 5]] = \
            [huge, value, [hostile], value, value][n % 5]
        f.attrs["zarr_attrs"] = json.dumps(root)
    elif kind == "link":
        del f[name]
        f[name] = [h5py.SoftLink("/posts/likes"), h5py.SoftLink("/nowhere"), h5py.ExternalLink(src["other"], "x")][n % 3]
    elif kind == "extra":
        where = ["posts/extra", "extra", "posts/loop"][n % 3]
        if where == "posts/loop":
            f[where] = f["posts"]
        else:
            f[where] = np.arange(3)
    elif kind == "external":
        _recreate(f, name, shape=(rows,), dtype="int64", external=[(src["canary"], 0, rows * 8)])
    elif kind == "virtual":
        layout = h5py.VirtualLayout(shape=(rows,), dtype="int64")
        layout[:] = h5py.VirtualSource(src["other"], "x", shape=(4096 * len(CANARY),))[:rows]
        attrs = dict(f[name].attrs)
        del f[name]
        v = f.create_virtual_dataset(name, layout)
        for k, val in attrs.items():
            v.attrs[k] = val
    elif kind == "names" and h5py.check_string_dtype(f[name].dtype):
        values = f[name].asstr()[()]
        if len(values):
            values[n % len(values)] = hostile.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
            _recreate(f, name, data=values.astype(object), dtype=h5py.string_dtype("utf-8"))
    elif kind == "ndim":
        _recreate(f, name, data=np.zeros((rows, 2), dtype=f[name].dtype if f[name].dtype.kind != "O" else "int64"))


def _files(root) -> set[str]:
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


@FUZZ
@given(defects=st.lists(defect(), min_size=1, max_size=3))
def test_import_of_any_hostile_file_is_a_verified_store_or_one_line(source, tmp_path_factory, defects):
    work = tmp_path_factory.mktemp("case")
    path = str(work / "in.h5")
    shutil.copy(source["h5"], path)
    with h5py.File(path, "r+") as f:
        for d in defects:
            try:
                _apply(f, source, d)
            except (ValueError, TypeError, OverflowError, KeyError, RuntimeError, OSError):
                pass                      # h5py refused to write that defect: the file keeps the others
    before = _files(work)
    out = str(work / "new.zarr")
    tracemalloc.start()
    try:
        r = CliRunner().invoke(cache_app, ["import", path, out], catch_exceptions=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    event(f"exit {r.exit_code}: {(r.output.strip().splitlines() or [''])[-1][:0 if r.exit_code == 0 else 200].split('; ')[0].split(': ')[-1][:50]}")
    assert r.exception is None or isinstance(r.exception, SystemExit), (defects, repr(r.exception))
    assert "Traceback" not in r.output, r.output
    assert peak < MEMORY_BOUND, (defects, peak)
    assert _files(work) - before <= {p for p in _files(work) if p.startswith(out + os.sep)}, "written outside STORE"
    if r.exit_code == 0:
        v = CliRunner().invoke(cache_app, ["verify", out])
        assert v.exit_code == 0, (defects, v.output)
        import zarr
        g = zarr.open_group(out, mode="r")
        marker = np.frombuffer(CANARY[:8], dtype=np.uint8).astype(np.int64)
        for table in g.group_keys():
            for name, arr in g[table].arrays():
                a = np.asarray(arr[:])
                if a.dtype.kind in "iufb":
                    assert CANARY not in a.tobytes(), (defects, table, name)           # external storage
                    flat = a.reshape(-1)
                    assert not (len(flat) >= 8 and np.array_equal(flat[:8], marker)), (defects, name)   # virtual
    else:
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and lines and lines[-1].startswith("error:"), (defects, r.output)
        assert not os.path.exists(out) or not os.listdir(out), "a refused import leaves nothing"
