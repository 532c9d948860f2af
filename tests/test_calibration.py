"""Calibrated probabilities (issue 33): temperature scaling, ECE, Brier, stored in the run and used by
every reader; the reference verdict on a small or saturated validation split."""
import json
import os

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss

from cache.synthetic import planted_store
from heads.calibrate import BINS, brier, ece, ece_if_calibrated, fit_temperature, nll, reliability, scaled
from heads.train import FitConfig, fit, reference_verdict


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _overconfident(n=4000, k=8, t=3.0, seed=0):
    """Labels drawn from softmax(z); the model says softmax(t z): overconfident by exactly t."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    y = np.array([rng.choice(k, p=p) for p in _softmax(z)])
    return _softmax(t * z), y


def test_temperature_recovers_the_planted_overconfidence_and_lowers_ece():
    probs, y = _overconfident(t=3.0)
    t = fit_temperature(probs, y)
    assert abs(t - 3.0) < 0.25
    after = scaled(probs, t)
    assert ece(after, y) < 0.03 < ece(probs, y)
    assert brier(after, y) < brier(probs, y) and nll(after, y) < nll(probs, y)
    np.testing.assert_array_equal(after.argmax(1), probs.argmax(1))          # labels never move
    np.testing.assert_allclose(after.sum(1), 1, atol=1e-12)


def test_already_calibrated_probabilities_keep_a_temperature_near_one():
    probs, y = _overconfident(t=1.0, seed=1)
    assert abs(fit_temperature(probs, y) - 1.0) < 0.15


def test_metrics_equal_reference_computations():
    rng = np.random.default_rng(2)
    probs = _softmax(rng.normal(0, 2, (300, 5)))
    y = rng.integers(0, 5, 300)
    assert nll(probs, y) == pytest.approx(sk_log_loss(y, probs, labels=range(5)), rel=1e-9)
    onehot = np.eye(5)[y]
    assert brier(probs, y) == pytest.approx(((probs - onehot) ** 2).sum(1).mean())
    conf, right = probs.max(1), probs.argmax(1) == y
    want = 0.0
    for b in range(BINS):            # the definition, bin by bin, with the edges as Guo et al. draw them
        lo, hi = b / BINS, (b + 1) / BINS
        here = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if here.any():
            want += here.mean() * abs(right[here].mean() - conf[here].mean())
    assert ece(probs, y) == pytest.approx(want, abs=1e-9)
    bins = reliability(probs, y)
    assert sum(b["n"] for b in bins) == 300 and all(b["low"] <= b["confidence"] <= b["high"] for b in bins)


def test_the_ece_of_a_calibrated_head_on_few_rows_is_sampling_noise():
    """ece_if_calibrated: the ECE of rows each right with exactly its confidence, drawn again and again;
    its mean equals ece() averaged over such draws done by hand, and it shrinks as rows grow."""
    rng = np.random.default_rng(3)
    conf = 0.5 + 0.5 * rng.random(56)
    mean, p90 = ece_if_calibrated(conf, draws=400, seed=1)
    probs = np.stack([conf, 1 - conf], 1)
    by_hand = [ece(probs, (rng.random(56) >= conf).astype(np.int64)) for _ in range(400)]
    assert abs(mean - np.mean(by_hand)) < 0.01 and p90 > mean > 0.03
    assert ece_if_calibrated(np.tile(conf, 20))[0] < mean / 3
    assert ece_if_calibrated(np.ones(10)) == (0.0, 0.0)


def test_a_temperature_that_would_worsen_ece_is_not_kept():
    y = np.array([0, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])       # two rows, both right: nothing to gain
    t = fit_temperature(probs, y)
    assert ece(scaled(probs, t), y) <= ece(probs, y) + 1e-12 and fit_temperature(probs[:1], y[:1]) == 1.0


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cal") / "s.zarr")
    planted_store(path, influencers=160, posts=12, seed=4, noise=2.0, on_topic=0.5)
    run = str(tmp_path_factory.mktemp("cal") / "run")
    metrics = fit(path, run, FitConfig(max_steps=200, min_steps=50, patience=100, restarts=1, instance_loss="off", normalize="feature"),
                  log=lambda *_: None)
    return path, run, metrics


def test_fit_stores_the_temperature_and_scores_before_and_after(calibrated_run):
    path, run, m = calibrated_run
    cal = m["calibration"]
    state = torch.load(os.path.join(run, "model.pt"), weights_only=True)["state_dict"]
    assert state["temperature"][0].item() == pytest.approx(cal["influencer"]["temperature"], rel=1e-6)
    assert state["temperature"][1].item() == pytest.approx(cal["post"]["temperature"], rel=1e-6)
    for head in ("influencer", "post"):
        v = cal[head]["val"]
        assert v["ece_after"] <= v["ece_before"] + 1e-12 and v["log_loss_after"] <= v["log_loss_before"] + 1e-12
        assert 0 <= cal[head]["test"]["brier_after"] <= 2
    on_disk = json.load(open(os.path.join(run, "metrics.json")))
    assert on_disk["calibration"]["influencer"]["temperature"] == cal["influencer"]["temperature"]
    assert os.path.exists(os.path.join(run, "report.md"))


def test_readers_get_calibrated_probabilities_and_old_runs_load_unscaled(calibrated_run, tmp_path):
    """heads.infer.load_run gives the calibrated model (predict, eval, report read through it); a run
    written before temperatures existed (no `temperature` in model.pt) loads with T = 1."""
    import shutil
    from cache.store import open_store
    from heads.data import load_labelled
    from heads.infer import load_run, predict_bags
    path, run, m = calibrated_run
    test = load_labelled(open_store(path), "both").test
    model, _ = load_run(run)
    calibrated, _ = predict_bags(model, test.bags, test.masks, "cpu")
    old = str(tmp_path / "old")
    shutil.copytree(run, old)
    state = torch.load(os.path.join(old, "model.pt"), weights_only=True)["state_dict"]
    del state["temperature"]
    torch.save({"state_dict": state}, os.path.join(old, "model.pt"))
    raw, _ = predict_bags(load_run(old)[0], test.bags, test.masks, "cpu")
    t = m["calibration"]["influencer"]["temperature"]
    np.testing.assert_allclose(calibrated, scaled(raw, t), atol=2e-5)
    np.testing.assert_array_equal(calibrated.argmax(1), raw.argmax(1))
    rows = [r.split(",") for r in open(os.path.join(run, "test_predictions.csv")).read().splitlines()[1:]
            if r.startswith("influencer,")]
    np.testing.assert_allclose([float(r[-1]) for r in rows], calibrated.max(1), atol=2e-6)


def test_a_negative_temperature_in_a_run_is_one_line(calibrated_run, tmp_path):
    import shutil
    from heads.infer import load_run
    from runtime.errors import UserError
    bad = str(tmp_path / "bad")
    shutil.copytree(calibrated_run[1], bad)
    state = torch.load(os.path.join(bad, "model.pt"), weights_only=True)["state_dict"]
    state["temperature"] = torch.tensor([-1.0, 1.0])
    torch.save({"state_dict": state}, os.path.join(bad, "model.pt"))
    with pytest.raises(UserError, match="temperature must be positive"):
        load_run(bad)


def test_verdict_on_a_saturated_or_small_validation_split_compares_log_loss():
    # both perfect on 24 validation influencers: accuracy says nothing, log-loss decides
    kind, text = reference_verdict(1.0, 1.0, 24, head_loss=0.9, ref_loss=0.2)
    assert kind == "warning" and "compared on log-loss" in text and "24 validation influencers" in text
    assert reference_verdict(1.0, 1.0, 24, head_loss=0.25, ref_loss=0.2) == (None, None)
    # saturated with many validation influencers
    kind, text = reference_verdict(0.99, 0.99, 400, head_loss=0.5, ref_loss=0.1)
    assert kind == "warning" and "both near 100%" in text
    # a large, unsaturated split: accuracy decides, log-loss is not consulted
    assert reference_verdict(0.80, 0.80, 400, head_loss=0.9, ref_loss=0.2) == (None, None)


def test_a_perfect_validation_split_does_not_make_every_probability_one():
    """24 of 24 right: log-loss alone drives T to its bound (every probability 1); the mean confidence
    stays at the rule of succession, 25/26."""
    rng = np.random.default_rng(5)
    y = np.arange(24) % 8
    z = rng.normal(0, 0.5, (24, 8))
    z[np.arange(24), y] += 2.0
    probs = _softmax(z)
    assert (probs.argmax(1) == y).all()
    t = fit_temperature(probs, y)
    assert scaled(probs, t).max(1).mean() == pytest.approx(25 / 26, abs=1e-3)
    assert t > 0.05 and scaled(probs, t).max() < 1
