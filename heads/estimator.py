"""`InfluencerProfilerClassifier`: the Influencer Profiler as a scikit-learn estimator on in-memory arrays.

For features you already hold (any width): a bag per influencer, as a list of (posts, dim) arrays of
varying length, or a padded (n, posts, dim) array with `masks` (n, posts) true on real posts; a 2-D
(n, dim) array is n bags of one post each (what scikit-learn's own checks pass). Optional labelled posts
(`post_features`, `post_labels`) train the auxiliary post head, as in the paper.

Its parameters are `heads fit`'s options under the same names (`lr`, `max_steps`, `restarts`, `pooling`,
…; checked by FitConfig) plus `validation_fraction`; training is the same code (`train_restarts`: the
restarts and normalisations, selection on the validation criterion). Validation is a stratified,
seeded `validation_fraction` of the bags, or the `val_*` arrays given to `fit` (as `heads fit` uses the
store's val split: same data, options and seed give the same model). Learned attributes end in `_`;
`get_params`/`set_params`, `clone`, `GridSearchCV` and `cross_val_score` work.
"""
from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from heads.calibrate import calibrate
from heads.data import Bags, Labelled, Posts
from heads.infer import predict_bags
from heads.model import HeadConfig
from heads.train import FitConfig, train_restarts
from runtime.device import pick_device, pick_precision

OPTIONS = [f for f in FitConfig.__dataclass_fields__ if f != "modality"]
# the estimator's own parameters beside FitConfig's: the held-out share when no val_* arrays are given,
# and the width of the fused post features (HeadConfig.hidden)
EXTRA = {"validation_fraction": 0.2, "hidden": 256}


def _is_bag_list(X) -> bool:
    return isinstance(X, (list, tuple)) and len(X) > 0 and all(np.ndim(b) == 2 for b in X)


def _padded(X) -> bool:
    return getattr(X, "ndim", 0) == 3


def _bags(X, masks=None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(bags, masks) as the training code reads them: float32 (posts, dim) arrays and (posts, 1) masks."""
    if _is_bag_list(X):
        bags = [np.asarray(b, dtype=np.float32) for b in X]
        if not bags or any(b.ndim != 2 for b in bags) or len({b.shape[1] for b in bags}) != 1:
            raise ValueError("bags must be a non-empty list of (posts, dim) arrays of one width")
        given = [np.ones(len(b), bool) for b in bags] if masks is None else [np.asarray(m, bool) for m in masks]
    else:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 2:
            bags, given = [x[None] for x in X], [np.ones(1, bool) for _ in X]
        elif X.ndim == 3:
            bags = list(X)
            given = [np.ones(X.shape[1], bool) for _ in X] if masks is None else [np.asarray(m, bool) for m in masks]
        else:
            raise ValueError(f"X must be (n, dim), (n, posts, dim) or a list of (posts, dim) arrays; got {X.ndim}-D")
    for b in bags:
        if not np.isfinite(b).all():
            raise ValueError("Input X contains NaN or infinity.")
    return bags, [m.reshape(len(m), 1) if m.ndim == 1 else m for m in given]


def _signature() -> inspect.Signature:
    """`__init__`'s: FitConfig's fields (its defaults: one source) and the estimator's own EXTRA."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature([inspect.Parameter("self", kind)]
                             + [inspect.Parameter(f.name, kind, default=f.default) for f in dataclasses.fields(FitConfig)
                                if f.name in OPTIONS]
                             + [inspect.Parameter(k, kind, default=v) for k, v in EXTRA.items()])


class InfluencerProfilerClassifier(ClassifierMixin, BaseEstimator):
    def __init__(self, *args, **params):
        bound = type(self).__init__.__signature__.bind(self, *args, **params)
        bound.apply_defaults()
        for name, value in list(bound.arguments.items())[1:]:
            setattr(self, name, value)
    __init__.__signature__ = _signature()     # what get_params, clone and help() read

    def _config(self) -> FitConfig:
        return FitConfig(**{k: getattr(self, k) for k in OPTIONS})

    def fit(self, X, y, post_features=None, post_labels=None, *, masks=None, val_X=None, val_y=None,
            val_masks=None, val_post_features=None, val_post_labels=None, segments=None, post_classes=None,
            post_masks=None, val_post_masks=None):
        """`segments`: the widths of the modality halves of a feature row (e.g. (1024, 768)), with `masks` of
        shape (posts, halves) saying which each post holds; `post_classes`: every post category the post head
        should have (default: those in `post_labels`); `post_masks`: which halves each labelled post holds."""
        cfg = self._config()
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        if _padded(X):
            X = check_array(X, dtype=np.float32, allow_nd=True)
        elif not _is_bag_list(X):          # (n, dim) arrays: scikit-learn's own checks and messages
            X, y = validate_data(self, X, y, dtype=np.float32)
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        bags, bag_masks = _bags(X, masks)
        if len(y) != len(bags):
            raise ValueError(f"y must hold one label per bag ({len(bags)}), got {len(y)}")
        self.label_encoder_ = LabelEncoder().fit(y if val_y is None else np.concatenate([y, np.asarray(val_y)]))
        self.classes_ = self.label_encoder_.classes_
        codes = self.label_encoder_.transform(y)
        dim = bags[0].shape[1]
        self.n_features_in_ = dim
        if val_X is None:
            train_idx, val_idx = self._split(codes)
            held_out = train_idx is not val_idx      # _split validates on the training bags when too few
            val = ([bags[i] for i in val_idx], [bag_masks[i] for i in val_idx], codes[val_idx])
            bags, bag_masks, codes = [bags[i] for i in train_idx], [bag_masks[i] for i in train_idx], codes[train_idx]
        else:
            vb, vm = _bags(val_X, val_masks)
            held_out = True
            val = (vb, vm, self.label_encoder_.transform(np.asarray(val_y)))
        posts, self.post_classes_ = self._posts(post_features, post_labels, dim,
                                                None if post_classes is None else np.asarray(post_classes))
        vposts, _ = self._posts(val_post_features, val_post_labels, dim, self.post_classes_)
        seg = tuple(segments) if segments else (dim,)
        for p, given in ((posts, post_masks), (vposts, val_post_masks)):
            p.present = (np.ones((len(p.y), len(seg)), bool) if given is None
                         else np.asarray(given, bool).reshape(len(p.y), len(seg)))
        if segments:         # masks per modality half, as the store's readers give them
            bag_masks = [np.repeat(m, len(seg), axis=1) if m.shape[1] == 1 else m for m in bag_masks]
            val = (val[0], [np.repeat(m, len(seg), axis=1) if m.shape[1] == 1 else m for m in val[1]], val[2])
        data = Labelled(Bags(bags, bag_masks, codes.astype(np.int64)), Bags(val[0], val[1], val[2].astype(np.int64)),
                        posts, vposts)
        head = HeadConfig(in_dim=dim, hidden=self.hidden, attention_dim=self.hidden, pooling=self.pooling,
                          attention=self.attention, dropout=self.dropout, n_influencer=len(self.classes_),
                          n_post=max(1, len(self.post_classes_)), segments=seg if segments else (),
                          members=cfg.members)
        device = pick_device(self.device)
        use_bf16 = pick_precision(self.precision, device) == "bf16"
        self.model_, best = train_restarts(cfg, head, data, seg, device, use_bf16, log=lambda *a: None)
        # probabilities calibrated on the held-out bags (temperature scaling), as `heads fit` does; not
        # where too few bags left nothing to hold out and validation is the training set
        self.calibration_ = calibrate(self.model_, data, device) if held_out else None
        self.best_ = {k: best["row"][k] for k in ("restart", "step", "epoch", "val_acc", "normalize", "instance_weight")}
        self.device_ = device
        return self

    def _split(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.arange(len(codes))
        counts = np.bincount(codes)
        n_val = int(np.ceil(self.validation_fraction * len(codes)))
        if len(codes) < 4 or counts.min() < 2 or n_val < len(counts) or len(codes) - n_val < len(counts):
            return idx, idx          # too few to hold any out: validate on the training bags
        return train_test_split(idx, test_size=n_val, stratify=codes, random_state=self.seed)

    @staticmethod
    def _posts(x, labels, dim: int, classes=None) -> tuple[Posts, np.ndarray]:
        if x is None or labels is None:
            return Posts.empty(dim), np.zeros(0) if classes is None else classes
        x = np.asarray(x, np.float32)
        labels = np.asarray(labels)
        if x.ndim != 2 or x.shape[1] != dim or len(labels) != len(x):
            raise ValueError(f"post_features must be (posts, {dim}) with one label per post")
        classes = np.unique(labels) if classes is None else classes
        y = np.searchsorted(classes, labels)
        keep = (y < len(classes)) & (classes[np.minimum(y, len(classes) - 1)] == labels)
        return Posts(x[keep], np.ones((int(keep.sum()), 1), bool), y[keep].astype(np.int64)), classes

    def _check(self, X, masks=None):
        check_is_fitted(self)
        if _padded(X):
            X = check_array(X, dtype=np.float32, allow_nd=True)
        elif not _is_bag_list(X):
            X = validate_data(self, X, dtype=np.float32, reset=False)
        bags, bag_masks = _bags(X, masks)
        if bags[0].shape[1] != self.n_features_in_:
            raise ValueError(f"X has {bags[0].shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
        k = len(self.model_.cfg.segments or (1,))
        return bags, [np.repeat(m, k, axis=1) if m.shape[1] != k else m for m in bag_masks]

    def predict_proba(self, X, masks=None) -> np.ndarray:
        bags, bag_masks = self._check(X, masks)
        probs, _ = predict_bags(self.model_, bags, bag_masks, self.device_)
        return probs

    def predict(self, X, masks=None) -> np.ndarray:
        probs = self.predict_proba(X, masks)          # checks that the estimator is fitted first
        return self.classes_[probs.argmax(1)]

    def attention_weights(self, X, masks=None) -> list[np.ndarray]:
        """Per bag, the weight of each of its posts (summing to one over its real posts)."""
        bags, bag_masks = self._check(X, masks)
        _, weights = predict_bags(self.model_, bags, bag_masks, self.device_)
        return weights

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.device not in ("cpu", "auto") or torch.cuda.is_available()
        return tags
