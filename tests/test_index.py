import numpy as np
import pytest
from typer.testing import CliRunner

from cache import schema
from cache.blocks import commit_block
from cache.inspect import info, verify
from cache.store import StoreError, open_store
from extract.cli import app as extract_app
from extract.index import run_index


def test_posts_sorted_by_influencer_then_newest_first(store_path):
    s = open_store(store_path)
    offsets = s.offsets()
    infl = s["posts/influencer"][:]
    ts = s["posts/timestamp"][:]
    assert offsets[0] == 0 and offsets[-1] == s.n_posts
    assert (np.diff(infl) >= 0).all()
    for j in range(s.n_influencers):
        rows = slice(offsets[j], offsets[j + 1])
        assert (infl[rows] == j).all()
        assert (np.diff(ts[rows]) <= 0).all()


def test_every_planted_problem_is_counted(store_path):
    problems = info(open_store(store_path))["problems"]
    for kind in ("info_malformed", "info_missing", "image_missing", "mapping_duplicate", "influencer_no_posts",
                 "influencer_not_listed", "influencer_count_missing", "category_misspelt", "caption_missing",
                 "post_not_in_mapping"):
        assert problems.get(kind, 0) >= 1, kind
    s = open_store(store_path)
    where = [str(w) for w in s["problems/where"][:]]
    assert any(w.startswith("info/") for w in where) and any("JSON-Image_files_mapping.txt:" in w for w in where)


def test_unlisted_influencer_is_kept_and_empty_one_has_no_rows(store_path):
    s = open_store(store_path)
    users = [str(u) for u in s["influencers/username"][:]]
    offsets = s.offsets()
    ghost = users.index("ghost.account_")
    assert offsets[ghost + 1] - offsets[ghost] == 3
    empty = users.index("no_posts.here")
    assert offsets[empty + 1] == offsets[empty]
    assert s["influencers/posts_total"][ghost] == -1


def test_features_are_full_size_nan_and_sharded(store_path):
    s = open_store(store_path)
    for modality, dim in schema.MODALITIES.items():
        arr = s[f"features/{modality}"]
        assert arr.shape == (s.n_posts, dim) and arr.dtype == np.float16
        assert arr.shards == (s.block, dim) and arr.chunks == (schema.FEATURE_CHUNK if s.block >= 512 else s.block, dim)
        assert np.isnan(arr[:5]).all()
        assert s[f"features/{modality}_done"].shape == (s.n_blocks,)
        assert s[f"features/{modality}_done"].chunks == (1,)
        assert not s[f"features/{modality}_done"][:].any()
    assert len(s["features/image"].compressors) == 1 and len(s["features/text"].compressors) == 0


def test_max_posts_keeps_the_newest(sample, store_path, tmp_path):
    full = open_store(store_path)
    small = open_store(run_index(sample, str(tmp_path / "s.zarr"), max_posts=5, block=256, workers=1,
                                 quiet=True) and str(tmp_path / "s.zarr"))
    fo, so = full.offsets(), small.offsets()
    fid, sid = full["posts/id"][:], small["posts/id"][:]
    for j in range(small.n_influencers):
        n = so[j + 1] - so[j]
        assert n == min(5, fo[j + 1] - fo[j])
        assert list(sid[so[j]:so[j + 1]]) == list(fid[fo[j]:fo[j] + n])


def test_parallel_workers_give_the_same_store(sample, store_path, tmp_path):
    par = open_store(run_index(sample, str(tmp_path / "p.zarr"), block=256, workers=2, quiet=True)
                     and str(tmp_path / "p.zarr"))
    ser = open_store(store_path)
    for name in ("id", "caption", "image", "timestamp", "influencer"):
        assert list(par[f"posts/{name}"][:]) == list(ser[f"posts/{name}"][:])


def test_reindex_refuses_when_features_exist(sample, fresh_store):
    s = open_store(fresh_store, "r+")
    rows = s.block_rows(0)
    n = rows.stop - rows.start
    commit_block(s, "text", 0, np.zeros((n, 768), np.float16), np.ones(n, np.uint8))
    with pytest.raises(StoreError, match="already holds text features"):
        run_index(sample, fresh_store, block=256, workers=1, quiet=True)
    run_index(sample, fresh_store, block=256, workers=1, quiet=True, overwrite=True)
    assert not open_store(fresh_store)["features/text_done"][:].any()


def test_cli_index_and_verify(sample, tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "c.zarr")
    r = runner.invoke(extract_app, ["index", sample, out, "--block", "512", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert verify(open_store(out)) == []
    r = runner.invoke(extract_app, ["index", str(tmp_path / "nowhere"), str(tmp_path / "d.zarr")])
    assert r.exit_code == 2 and "nowhere: no such folder" in r.output
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "JSON-Image_files_mapping.txt").write_text("h\n")
    r = runner.invoke(extract_app, ["index", str(tmp_path / "half"), str(tmp_path / "d.zarr")])
    assert r.exit_code == 2 and "influencers.txt: missing" in r.output
    r = runner.invoke(extract_app, ["index", sample, str(tmp_path / "e.zarr"), "--block", "1000"])
    assert r.exit_code == 2 and "--block" in r.output
