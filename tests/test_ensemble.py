"""--average-restarts (issue 33): the restarts' kept states as one model whose probabilities are their mean."""
import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cache.store import open_store
from cache.synthetic import planted_store
from heads.cli import app as heads_app
from heads.data import load_labelled
from heads.ensemble import ProfilerEnsemble
from heads.infer import load_run, predict_bags, predict_posts
from heads.model import HeadConfig, InfluencerProfiler
from heads.train import FitConfig, fit


def _members(k=3):
    cfg = HeadConfig(in_dim=12, hidden=8, attention_dim=6, members=k)
    out = []
    for s in range(k):
        torch.manual_seed(s)
        m = InfluencerProfiler(HeadConfig(in_dim=12, hidden=8, attention_dim=6))
        m.context.data.normal_()             # attention away from uniform, so the members' weights differ
        out.append(m.eval())
    return cfg, out


def test_probabilities_and_weights_are_the_members_means():
    cfg, members = _members()
    ens = ProfilerEnsemble(cfg, members).eval()
    x, mask = torch.randn(4, 7, 12), torch.ones(4, 7, dtype=torch.bool)
    mask[1, 4:] = False
    with torch.no_grad():
        out = ens(x, mask)
        outs = [m(x, mask) for m in members]
        want = torch.stack([torch.softmax(o["logits"], 1) for o in outs]).mean(0)
        torch.testing.assert_close(torch.softmax(out["logits"], 1), want)
        torch.testing.assert_close(out["weights"], torch.stack([o["weights"] for o in outs]).mean(0))
        assert torch.allclose(out["weights"].sum(1), torch.ones(4)) and (out["weights"][1, 4:] == 0).all()
        torch.testing.assert_close(out["h"], outs[0]["h"])
        post = ens.posts_logits(x[0])
        torch.testing.assert_close(torch.softmax(post, 1), torch.stack(
            [torch.softmax(m.posts_logits(x[0]), 1) for m in members]).mean(0))
        ens.temperature.fill_(2.0)           # temperature scaling of the ensemble as one model
        torch.testing.assert_close(torch.softmax(ens(x, mask)["logits"], 1),
                                   torch.softmax(torch.log(want) / 2, 1))


@pytest.fixture(scope="module")
def averaged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ens")
    path = str(tmp / "s.zarr")
    planted_store(path, influencers=64, posts=10, seed=3, noise=2.0, label_posts=0.2)
    run = str(tmp / "run")
    m = fit(path, run, FitConfig(max_steps=60, min_steps=20, patience=30, eval_steps=10, attention_warmup=10,
                                 normalize="feature", restarts=2, average_restarts=True), log=lambda *_: None)
    return path, run, m


def test_a_run_holds_every_restart_and_every_reader_averages_them(averaged, tmp_path):
    path, run, metrics = averaged
    assert json.load(open(os.path.join(run, "config.json")))["model"]["members"] == 2
    model, _ = load_run(run)
    assert isinstance(model, ProfilerEnsemble) and len(model.members) == 2
    data = load_labelled(open_store(path), "both")
    probs, weights = predict_bags(model, data.test.bags, data.test.masks, "cpu")
    assert (probs.argmax(1) == data.test.y).mean() == pytest.approx(metrics["influencer"]["accuracy"])
    t = model.temperature[0].item()
    with torch.no_grad():           # the stored model is the mean of its members, scaled by one temperature
        for m in model.members:
            assert m.temperature.tolist() == [1.0, 1.0]
        members = [predict_bags(m, data.test.bags, data.test.masks, "cpu")[0] for m in model.members]
    want = np.exp(np.log(np.mean(members, 0)) / t)
    np.testing.assert_allclose(probs, want / want.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
    assert all(abs(w.sum() - 1) < 1e-5 for w in weights)
    assert predict_posts(model, data.posts_test.x, "cpu", present=data.posts_test.present).shape[1] == 10
    r = CliRunner().invoke(heads_app, ["predict", run, path, "--out", str(tmp_path / "pred")])
    assert r.exit_code == 0, r.output
    emb = open_store(path)["predictions/influencer_embedding"][:]
    assert emb.shape[1] == 256 and np.isfinite(emb[:4]).all()


def test_a_run_declaring_too_many_members_is_one_error_line(averaged, tmp_path):
    import shutil
    _, run, _ = averaged
    forged = str(tmp_path / "forged")
    shutil.copytree(run, forged)
    cfg = json.load(open(os.path.join(forged, "config.json")))
    cfg["model"]["members"] = 10 ** 6
    json.dump(cfg, open(os.path.join(forged, "config.json"), "w"))
    from runtime.errors import UserError
    with pytest.raises(UserError, match="members must be an integer in"):
        load_run(forged)


def test_the_estimator_averages_restarts_too():
    from heads import InfluencerProfilerClassifier
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    bags = [rng.normal(c, 1.0, (6, 5)).astype(np.float32) for c in y]
    clf = InfluencerProfilerClassifier(max_steps=40, min_steps=10, eval_steps=10, attention_warmup=10, restarts=2,
                                       normalize="feature", average_restarts=True, device="cpu").fit(bags, y)
    assert isinstance(clf.model_, ProfilerEnsemble) and len(clf.model_.members) == 2
    assert (clf.predict(bags) == y).mean() > 0.9


@pytest.fixture(scope="module")
def scaled_members(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ens-scaled")
    path = str(tmp / "s.zarr")
    planted_store(path, influencers=64, posts=10, seed=5, noise=3.0, label_posts=0.2)
    run = str(tmp / "run")
    m = fit(path, run, FitConfig(max_steps=60, min_steps=20, patience=30, eval_steps=10, attention_warmup=10,
                                 normalize="feature", instance_loss="off", restarts=2, calibrate_restarts=True),
            log=lambda *_: None)
    return path, run, m


def test_calibrate_restarts_scales_each_member_on_validation_before_the_mean(scaled_members):
    """--calibrate-restarts: each member holds the temperature heads.calibrate fits on its own validation
    probabilities, and the run's probabilities are the mean of the scaled members, then the ensemble's T."""
    from heads.calibrate import fit_temperature, scaled
    path, run, metrics = scaled_members
    model, config = load_run(run)
    assert config["fit"]["calibrate_restarts"] is True and len(model.members) == 2
    data = load_labelled(open_store(path), "both")
    ts = [m.temperature.tolist() for m in model.members]
    assert any(t != [1.0, 1.0] for t in ts), ts        # the planted store's restarts are not calibrated as trained
    for m, t in zip(model.members, ts):
        with torch.no_grad():
            m.temperature.fill_(1.0)
        raw = predict_bags(m, data.val.bags, data.val.masks, "cpu")[0]
        raw_posts = predict_posts(m, data.posts_val.x, "cpu", present=data.posts_val.present)
        assert t == pytest.approx([fit_temperature(raw, data.val.y), fit_temperature(raw_posts, data.posts_val.y)],
                                  rel=1e-5)
        with torch.no_grad():
            m.temperature.copy_(torch.tensor(t))
    members = [predict_bags(m, data.test.bags, data.test.masks, "cpu")[0] for m in model.members]
    probs = predict_bags(model, data.test.bags, data.test.masks, "cpu")[0]
    np.testing.assert_allclose(probs, scaled(np.mean(members, 0), model.temperature[0].item()), rtol=1e-4, atol=1e-6)
    assert (probs.argmax(1) == data.test.y).mean() == pytest.approx(metrics["influencer"]["accuracy"])


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_a_member_temperature_that_is_not_positive_is_one_error_line(scaled_members, tmp_path, value):
    import shutil
    from runtime.errors import UserError
    _, run, _ = scaled_members
    forged = str(tmp_path / "forged")
    shutil.copytree(run, forged)
    saved = torch.load(os.path.join(forged, "model.pt"), weights_only=True)
    saved["state_dict"]["members.1.temperature"] = torch.tensor([value, 1.0])
    torch.save(saved, os.path.join(forged, "model.pt"))
    with pytest.raises(UserError, match=r"model.pt: members.1.temperature (must be positive|holds NaN)"):
        load_run(forged)
