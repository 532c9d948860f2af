"""`cache export` / `cache import` (HDF5): round trips, --labelled-only, refusals."""
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from cache.cli import app as cache_app
from cache.exchange import _arrays
from cache.inspect import verify
from cache.store import open_store
from cache.synthetic import planted_store
from heads.data import load_labelled


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "fc":
        return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    if a.dtype.kind in "OTU":
        return a.shape == b.shape and a.tolist() == b.tolist()
    return np.array_equal(a, b)


def _roundtrip(src: str, tmp_path, *args) -> str:
    h5, dst = str(tmp_path / "x.h5"), str(tmp_path / "back.zarr")
    r = CliRunner().invoke(cache_app, ["export", src, h5, *args])
    assert r.exit_code == 0, r.output
    assert not os.path.exists(h5 + ".partial")
    r = CliRunner().invoke(cache_app, ["import", h5, dst])
    assert r.exit_code == 0, r.output
    return dst


@pytest.mark.parametrize("which", ["sample", "planted"])
def test_round_trip_is_array_equal_attributes_included(which, store_path, tmp_path):
    if which == "planted":
        src = str(tmp_path / "p.zarr")
        planted_store(src, influencers=30, posts=9, seed=2, block=64, missing=(0.2, 0.1))
    else:
        src = store_path
    dst = _roundtrip(src, tmp_path)
    a, b = open_store(src), open_store(dst)
    assert a.attrs == b.attrs
    names_a = [p for p, _ in _arrays(a.group)]
    assert names_a == [p for p, _ in _arrays(b.group)] and len(names_a) > 15
    for path, arr in _arrays(a.group):
        other = b[path]
        assert _same(arr[...], other[...]), path
        assert dict(arr.attrs) == dict(other.attrs), path
        assert arr.chunks == other.chunks and arr.shards == other.shards and arr.dtype == other.dtype, path
        assert arr.fill_value == other.fill_value or (np.isnan(arr.fill_value) and np.isnan(other.fill_value)), path
    assert verify(b) == []


def test_labelled_only_keeps_every_labelled_bag_and_post(tmp_path):
    src = str(tmp_path / "p.zarr")
    planted_store(src, influencers=60, posts=12, seed=3, block=64, labelled_influencers=20, label_posts=0.1,
                  spread_labels=True)
    dst = _roundtrip(src, tmp_path, "--labelled-only")
    a, b = open_store(src), open_store(dst)
    assert b.n_posts < a.n_posts and b.n_influencers < a.n_influencers
    exported = b.attrs["exported"]
    assert exported["labelled_only"] and exported["posts"] == b.n_posts
    assert verify(b) == []
    da, db = load_labelled(a, "both"), load_labelled(b, "both")
    for split in ("train", "val", "test"):
        assert _same(getattr(da, split).y, getattr(db, split).y)
        assert len(getattr(da, split).bags) == len(getattr(db, split).bags)
        for x, y in zip(getattr(da, split).bags, getattr(db, split).bags):
            assert _same(x, y)
        assert _same(getattr(da, f"posts_{split}").x, getattr(db, f"posts_{split}").x)
        assert _same(getattr(da, f"posts_{split}").y, getattr(db, f"posts_{split}").y)
    # the post ids of the labelled posts survive, with their owners' names
    pa = np.flatnonzero(a["posts/label"][:] >= 0)
    pb = np.flatnonzero(b["posts/label"][:] >= 0)
    assert _same(a["posts/id"].oindex[pa], b["posts/id"].oindex[pb])
    owners_a = a["influencers/username"].oindex[a["posts/influencer"].oindex[pa].astype(int)]
    owners_b = b["influencers/username"].oindex[b["posts/influencer"].oindex[pb].astype(int)]
    assert _same(owners_a, owners_b)


def test_import_refuses_an_existing_store_and_a_foreign_file(store_path, tmp_path):
    h5 = str(tmp_path / "x.h5")
    assert CliRunner().invoke(cache_app, ["export", store_path, h5]).exit_code == 0
    r = CliRunner().invoke(cache_app, ["import", h5, store_path])
    assert r.exit_code == 2 and "already exists" in r.output and r.output.count("\n") == 1
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    r = CliRunner().invoke(cache_app, ["import", str(bad), str(tmp_path / "n.zarr")])
    assert r.exit_code == 2 and "not an HDF5 file" in r.output and not os.path.exists(tmp_path / "n.zarr")
