"""#29: the Python API in scikit-learn's conventions, `InfluencerProfilerClassifier`, on in-memory arrays."""
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.utils.estimator_checks import check_estimator

from heads import InfluencerProfilerClassifier

QUICK = dict(max_steps=20, min_steps=0, attention_warmup=0, restarts=1, instance_loss="off", normalize="none", device="cpu",
             eval_steps=10, patience=10, hidden=16, dropout=0.0, lr=0.01)


def test_scikit_learns_own_checks_pass():
    results = check_estimator(InfluencerProfilerClassifier(**QUICK), on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert not failed, failed
    skipped = sorted({r["check_name"] for r in results if r["status"] == "skipped"})
    # skipped by scikit-learn itself here: pandas inputs (pandas is not installed) and the array API
    # (SCIPY_ARRAY_API unset); bags are numpy arrays
    assert set(skipped) <= {"check_classifier_data_not_an_array", "check_array_api_input"}, skipped
    assert len(results) >= 50


def _planted_bags(seed=0, n=96, dim=12):
    """Bags of varying length whose category is carried by a minority of on-topic posts."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(0, 1, (4, dim)) * 3
    bags, y = [], []
    for i in range(n):
        c = i % 4
        k = rng.integers(3, 12)
        bag = rng.normal(0, 1, (k, dim))
        on = rng.choice(k, size=max(1, k // 3), replace=False)
        bag[on] += protos[c]
        bags.append(bag.astype(np.float32))
        y.append(["beauty", "food", "pet", "travel"][c])
    return bags, np.array(y)


def test_bags_of_varying_length_learn_and_the_weights_sum_to_one():
    bags, y = _planted_bags()
    clf = InfluencerProfilerClassifier(max_steps=100, min_steps=30, attention_warmup=30, restarts=1, instance_loss="off",
                                       normalize="feature", device="cpu", seed=1, hidden=64)
    assert clf.fit(bags[:64], y[:64]) is clf
    assert set(clf.classes_) == {"beauty", "food", "pet", "travel"} and clf.n_features_in_ == 12
    assert (clf.predict(bags[64:]) == y[64:]).mean() >= 0.8
    proba = clf.predict_proba(bags[64:])
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    weights = clf.attention_weights(bags[64:])
    assert [len(w) for w in weights] == [len(b) for b in bags[64:]]
    np.testing.assert_allclose([w.sum() for w in weights], 1, rtol=1e-4)
    padded = np.zeros((32, 11, 12), np.float32)
    masks = np.zeros((32, 11), bool)
    for k, b in enumerate(bags[64:]):
        padded[k, :len(b)], masks[k, :len(b)] = b, True
    np.testing.assert_allclose(clf.predict_proba(padded, masks=masks), proba, rtol=1e-5, atol=1e-6)


def test_get_set_params_clone_grid_search_and_cross_val_score():
    bags, y = _planted_bags(n=40)
    clf = InfluencerProfilerClassifier(**QUICK)
    assert clf.get_params()["lr"] == 0.01 and clone(clf).set_params(lr=0.02).lr == 0.02
    scores = cross_val_score(clf, np.stack([b.mean(0) for b in bags]), y, cv=2)
    assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)
    grid = GridSearchCV(clf, {"pooling": ["attention", "mean"]}, cv=2).fit(np.stack([b.mean(0) for b in bags]), y)
    assert grid.best_params_["pooling"] in ("attention", "mean")


def test_bad_parameters_are_refused_when_fitting():
    bags, y = _planted_bags(n=16)
    for bad in (dict(lr=float("nan")), dict(pooling="max"), dict(dropout=2.0), dict(validation_fraction=1.5)):
        with pytest.raises(ValueError):
            InfluencerProfilerClassifier(**dict(QUICK, **bad)).fit(bags, y)


@pytest.mark.slow
def test_the_same_model_as_heads_fit_on_a_planted_store(tmp_path):
    """The store's splits, features and labelled posts given to the estimator with the same options and
    seed: the same test predictions as `heads fit`."""
    from cache.store import open_store
    from cache.synthetic import planted_store
    from heads.data import load_labelled
    from heads.train import FitConfig, fit
    path = str(tmp_path / "s.zarr")
    planted_store(path, influencers=96, posts=12, seed=3, block=256)
    opts = dict(max_steps=120, attention_warmup=40, restarts=1, instance_loss="off", normalize="feature", seed=2, device="cpu")
    metrics = fit(path, str(tmp_path / "run"), FitConfig(**opts), log=lambda *a: None)
    store = open_store(path)
    data = load_labelled(store, "both")
    pcats = np.array(store.post_categories)
    clf = InfluencerProfilerClassifier(**opts).fit(
        data.train.bags, data.train.y, data.posts_train.x, pcats[data.posts_train.y],
        masks=data.train.masks, val_X=data.val.bags, val_y=data.val.y,
        val_masks=data.val.masks, val_post_features=data.posts_val.x,
        val_post_labels=pcats[data.posts_val.y], segments=(1024, 768), post_classes=pcats,
        post_masks=data.posts_train.present, val_post_masks=data.posts_val.present)
    pred = clf.predict(data.test.bags, masks=data.test.masks)
    assert (pred == data.test.y).mean() == pytest.approx(metrics["influencer"]["accuracy"])
    assert clf.best_["step"] == metrics["best_step"]
