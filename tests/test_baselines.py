import csv
import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from baselines.aggregate import influencer_means
from baselines.cli import app as baselines_app
import baselines.run as brun
from cache.store import open_store
from cache.synthetic import planted_store


@pytest.fixture(scope="module")
def ragged(tmp_path_factory):
    """Bags of very different sizes (0 to 150 posts) in blocks of 64, so many cross blocks."""
    counts = np.array([0, 5, 150, 1, 0, 70, 64, 63, 65, 2] * 4)
    path = str(tmp_path_factory.mktemp("ragged") / "s.zarr")
    planted_store(path, influencers=len(counts), post_counts=counts, block=64, seed=2)
    s = open_store(path, "r+")
    st = s["features/image_status"][:]
    st[100:180] = 3                      # unreadable images: those posts count for text only
    s["features/image_status"][:] = st
    return path, counts


def _numpy_means(path, modality):
    s = open_store(path)
    offsets = s.offsets()
    out = []
    for m in (["image", "text"] if modality == "both" else [modality]):
        x = s[f"features/{m}"][:].astype(np.float64)
        ok = s[f"features/{m}_status"][:] == 1
        rows = []
        for j in range(s.n_influencers):
            a, b = offsets[j], offsets[j + 1]
            sel = x[a:b][ok[a:b]]
            rows.append(sel.mean(0) if len(sel) else np.full(x.shape[1], np.nan))
        out.append(np.array(rows))
    return np.concatenate(out, axis=1)


def test_dask_means_equal_numpy(ragged):
    path, counts = ragged
    got, n = influencer_means(path, "both")
    ref = _numpy_means(path, "both")
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert np.isnan(got[counts == 0]).all() and (n[counts == 0] == 0).all()
    subset = np.array([5, 2, 0, 31])
    got_s, _ = influencer_means(path, "text", subset)
    np.testing.assert_allclose(got_s, _numpy_means(path, "text")[subset], rtol=1e-5, atol=1e-5)


def test_readers_equal_direct_slices_and_hold_no_more_than_the_bags(ragged):
    """load_bags (sparse, unsorted influencers, bags across blocks) and post_features_at (scattered
    rows in any order, repeated) equal plain slicing of the whole arrays, with statuses applied."""
    from cache.readers import load_bags, post_features_at
    path, counts = ragged
    s = open_store(path)
    x = np.concatenate([s["features/image"][:], s["features/text"][:]], axis=1)
    ok_i, ok_t = s["features/image_status"][:] == 1, s["features/text_status"][:] == 1
    x[~ok_i, :1024] = 0
    x[~ok_t, 1024:] = 0
    offsets = s.offsets()
    chosen = np.array([37, 2, 9, 0, 21, 5, 33, 11, 19])
    bags, masks = load_bags(s, chosen, "both")
    for j, bag, mask in zip(chosen, bags, masks):
        np.testing.assert_array_equal(bag, x[offsets[j]:offsets[j + 1]])
        np.testing.assert_array_equal(mask, np.stack([ok_i, ok_t], 1)[offsets[j]:offsets[j + 1]])
        assert bag.base is None or bag.base.shape[0] == len(bag), "a bag must not keep its whole read alive"
    rows = np.array([900, 3, 3, 64, 63, 1500, 128, 0, 777])
    got, ok = post_features_at(s, rows, "both")
    np.testing.assert_array_equal(got, x[rows])
    np.testing.assert_array_equal(ok, np.stack([ok_i, ok_t], 1)[rows])


def test_one_task_per_block(ragged, monkeypatch):
    import baselines.aggregate as agg
    calls = []
    real = agg._block_sums
    monkeypatch.setattr(agg, "_block_sums", lambda *a: calls.append(a[2]) or real(*a))
    influencer_means(ragged[0], "image")
    assert len(calls) == open_store(ragged[0]).n_blocks


def test_knn_with_fewer_training_rows_than_neighbours():
    from baselines.models import candidates, select_and_fit
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 5)), np.arange(8) % 4
    model, params, acc = select_and_fit(candidates("knn"), x, y, x, y)
    assert params["knn__n_neighbors"] <= 8 and acc == 1.0


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("bl")
    path = str(d / "s.zarr")
    planted_store(path, influencers=96, posts=20, seed=0, noise=2.0, on_topic=0.3, block=256)
    spied = {"model": [], "textsocial": []}
    real_select = brun.select_and_fit

    def spy(pipes, xt, yt, xv, yv):
        spied["model"].append((xt, xv))
        return real_select(pipes, xt, yt, xv, yv)
    real_ts = brun.fb.text_social_model

    def spy_ts(seed=0):
        model = real_ts(seed)
        real_fit = model.fit

        def fit(x, y):
            spied["textsocial"].append(x)
            return real_fit(x, y)
        model.fit = fit
        return model
    mp = pytest.MonkeyPatch()
    mp.setattr(brun, "select_and_fit", spy)
    mp.setattr(brun.fb, "text_social_model", spy_ts)
    try:
        r = brun.run_baselines(path, str(d / "out"), models=["gnb", "knn", "svc", "rf"], log=lambda *_: None)
    finally:
        mp.undo()
    return path, str(d / "out"), r, spied


def test_results_have_every_row_and_user_says_why(results):
    _, out, r, _ = results
    assert len([x for x in r["influencer"] if x["model"] in ("GaussianNB", "KNeighbors", "SVC", "RandomForest")]) == 12
    assert len(r["post"]) == 12
    names = {x["model"] for x in r["influencer"]}
    assert {"Tag", "Text&Social", "Image", "User"} <= names
    md = open(os.path.join(out, "results.md")).read()
    assert "| SVC | Text & Image |" in md and "needs profile pictures" in md
    best = max(x["metrics"]["accuracy"] for x in r["influencer"] if x["metrics"].get("n"))
    assert best > 0.5


def test_scores_equal_sklearn_on_saved_predictions(results):
    from sklearn.metrics import accuracy_score, f1_score
    _, out, r, _ = results
    rows = list(csv.DictReader(open(os.path.join(out, "predictions.csv"))))
    for entry in r["influencer"] + r["post"]:
        if not entry["metrics"].get("n"):
            continue
        task = "influencer" if entry in r["influencer"] else "post"
        mine = [x for x in rows if x["task"] == task and x["model"] == entry["model"] and x["input"] == entry["input"]]
        y, p = [x["true"] for x in mine], [x["predicted"] for x in mine]
        assert entry["metrics"]["accuracy"] == pytest.approx(accuracy_score(y, p))
        for c, v in entry["metrics"]["f1"].items():
            if c in y or c in p:
                assert v == pytest.approx(f1_score(y, p, labels=[c], average=None, zero_division=0)[0])
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["test_influencers"] == r["test_influencers"]


def test_no_test_row_reaches_fit(results):
    path, _, r, spied = results
    s = open_store(path)
    test = set(r["test_influencers"])
    means, _ = influencer_means(path, "both", np.array(sorted(test)))
    test_posts = np.flatnonzero(s["posts/split"][:] == 3)
    assert spied["model"] and spied["textsocial"]
    for xt, xv in spied["model"]:
        if xt.shape[1] == 1792 and len(xt) < 200:          # the influencer task, both modalities
            for row in means.astype(np.float32):
                assert not (np.abs(xt - row).max(axis=1) == 0).any()
                assert not (np.abs(xv - row).max(axis=1) == 0).any()
    n_train = int(((s["influencers/split"][:] == 1) & (s["influencers/label"][:] >= 0)).sum())
    assert all(len(x) == n_train for x in spied["textsocial"])
    n_post_train = int((s["posts/split"][:] == 1).sum())
    post_fits = [xt for xt, _ in spied["model"] if len(xt) > 200]
    assert post_fits and all(len(xt) == n_post_train for xt in post_fits) and len(test_posts)


def test_compare_adds_the_heads_run(results, tmp_path):
    from heads.train import FitConfig, fit
    path, _, _, _ = results
    run = str(tmp_path / "run")
    fit(path, run, FitConfig(epochs=2, restarts=1, instance_loss="off"), log=lambda *_: None)
    out = str(tmp_path / "out")
    r = CliRunner().invoke(baselines_app, ["run", path, "--out", out, "--models", "gnb", "--inputs", "image",
                                           "--no-feature-baselines", "--compare", run])
    assert r.exit_code == 0, r.output
    assert "| Influencer Profiler | Text & Image |" in open(os.path.join(out, "results.md")).read()


def test_clear_error_without_features(store_path, tmp_path):
    r = CliRunner().invoke(baselines_app, ["run", store_path, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no image features yet" in r.output
