"""Calibrated probabilities: temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural
Networks"), expected calibration error and Brier score.

One scalar T per head divides the logits (heads/model.py's `temperature` buffer), fitted after the
state is chosen by minimising the validation log-loss; argmax is unchanged, so every label and
accuracy stays what it was and only the probabilities move. ECE uses 15 equal-width confidence
bins, as Guo et al. do. A temperature that would make the validation ECE worse is not kept (T = 1),
so scaling never makes the split it was fitted on less calibrated.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from heads.data import Labelled

BINS = 15
T_RANGE = (0.05, 20.0)


def scaled(probs: np.ndarray, t: float) -> np.ndarray:
    """softmax(z / t) from p = softmax(z): log p is z up to a per-row constant, which softmax drops."""
    z = np.log(np.maximum(probs.astype(np.float64), 1e-300)) / t
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.maximum(probs[np.arange(len(y)), y], 1e-300)).mean())


def _bin_of(conf: np.ndarray, bins: int) -> np.ndarray:
    """The equal-width confidence bin of each row (a confidence of 1 in the top bin)."""
    return np.minimum((conf * bins).astype(int), bins - 1)


def ece(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: Σ_b |B_b|/n · |accuracy(B_b) − confidence(B_b)| over equal-width bins."""
    if not len(y):
        return float("nan")
    conf, right = probs.max(1), probs.argmax(1) == y
    which = _bin_of(conf, bins)
    total = 0.0
    for b in range(bins):
        here = which == b
        if here.any():
            total += here.sum() * abs(right[here].mean() - conf[here].mean())
    return float(total / len(y))


def brier(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean over rows of Σ_k (p_k − [k = y])², the multi-class Brier score (0 best, 2 worst)."""
    if not len(y):
        return float("nan")
    onehot = np.zeros_like(probs, dtype=np.float64)
    onehot[np.arange(len(y)), y] = 1
    return float(((probs - onehot) ** 2).sum(1).mean())


def ece_if_calibrated(confidence: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The ECE a perfectly calibrated head would show on these rows (mean and 90th percentile over
    `draws`): each row right with exactly its confidence. On few rows ECE is mostly sampling noise (56
    rows at 0.88 confidence: about 0.08 mean, 0.11 at the 90th percentile), so an ECE is only evidence of
    miscalibration above this."""
    conf = np.asarray(confidence, np.float64)
    if not len(conf):
        return float("nan"), float("nan")
    which = _bin_of(conf, BINS)
    right = np.random.default_rng(seed).random((draws, len(conf))) < conf
    total = np.zeros(draws)
    for b in np.unique(which):
        here = which == b
        total += here.sum() * np.abs(right[:, here].mean(1) - conf[here].mean())
    got = total / len(conf)
    return float(got.mean()), float(np.quantile(got, 0.9))


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per non-empty bin: its range, mean confidence, accuracy and size (the reliability diagram)."""
    if not len(y):
        return []
    conf, right = probs.max(1), probs.argmax(1) == y
    which = _bin_of(conf, bins)
    return [{"low": b / bins, "high": (b + 1) / bins, "confidence": float(conf[which == b].mean()),
             "accuracy": float(right[which == b].mean()), "n": int((which == b).sum())}
            for b in range(bins) if (which == b).any()]


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The T in T_RANGE minimising the log-loss of softmax(z / T) on (probs, y), raised where needed so
    that the mean confidence stays at most (right + 1) / (n + 2); 1 where it would make the log-loss or
    the ECE on the same rows worse, or with fewer than two rows."""
    if len(y) < 2:
        return 1.0
    probs = scaled(probs, 1.0)       # float64, renormalised: before and after compared on one footing
    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    got = minimize_scalar(lambda s: nll(scaled(probs, float(np.exp(s))), y), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    t = float(np.exp(got.x))
    # A validation split classified (nearly) without error has no finite log-loss optimum: T runs to
    # its lower bound and every probability to 1 (seen on 24-influencer splits at 100 %: T = 0.05, and a
    # test set the head gets 78 % right would be shown as certain). The mean confidence is held at
    # most at Laplace's rule of succession, (right + 1) / (n + 2): after n of n right, the next is right
    # with probability (n + 1) / (n + 2), not 1.
    ceiling = ((probs.argmax(1) == y).sum() + 1) / (len(y) + 2)
    if scaled(probs, t).max(1).mean() > ceiling:
        lo_t, hi_t = t, max(1.0, t)
        while scaled(probs, hi_t).max(1).mean() > ceiling and hi_t < T_RANGE[1]:
            hi_t = min(2 * hi_t, T_RANGE[1])
        for _ in range(60):                       # mean confidence falls as T grows: bisect onto the ceiling
            mid = (lo_t * hi_t) ** 0.5
            lo_t, hi_t = (mid, hi_t) if scaled(probs, mid).max(1).mean() > ceiling else (lo_t, mid)
        t = hi_t
    if nll(scaled(probs, t), y) > nll(probs, y) or ece(scaled(probs, t), y) > ece(probs, y):
        return 1.0
    return t


def summary(t: float, val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> dict:
    """metrics.json's record for one head: T, and ECE / Brier / log-loss before and after, per split,
    with the test split's reliability bins before and after."""
    out = {"temperature": t, "bins": BINS}
    for name, (p, y) in (("val", val), ("test", test)):
        p = scaled(p, 1.0) if len(y) else p
        after = scaled(p, t)
        out[name] = {"n": int(len(y)),
                     "ece_before": ece(p, y), "ece_after": ece(after, y),
                     "brier_before": brier(p, y), "brier_after": brier(after, y),
                     "log_loss_before": nll(p, y) if len(y) else float("nan"),
                     "log_loss_after": nll(after, y) if len(y) else float("nan")}
    p, y = test
    p = scaled(p, 1.0) if len(y) else p
    out["reliability_before"], out["reliability_after"] = reliability(p, y), reliability(scaled(p, t), y)
    return out


def _probabilities(model, data: Labelled, device, splits: tuple[str, ...]) -> tuple[dict, dict]:
    """(influencer, post) probabilities with their labels per split, empty arrays where a split has no rows."""
    from heads.infer import predict_bags, predict_posts
    infl, posts = {}, {}
    for split in splits:
        d = getattr(data, split)
        infl[split] = ((predict_bags(model, d.bags, d.masks, device)[0], d.y) if d is not None and len(d.y)
                       else (np.zeros((0, model.cfg.n_influencer)), np.zeros(0, np.int64)))
        d = getattr(data, f"posts_{split}")
        posts[split] = ((predict_posts(model, d.x, device, present=d.present), d.y) if d is not None and len(d.y)
                        else (np.zeros((0, model.cfg.n_post)), np.zeros(0, np.int64)))
    return infl, posts


def _set_temperatures(model, t_infl: float, t_post: float) -> None:
    import torch
    with torch.no_grad():
        model.temperature.copy_(torch.tensor([t_infl, t_post], dtype=model.temperature.dtype))


def scale_on_validation(model, data: Labelled, device) -> tuple[float, float]:
    """Fit and set both heads' temperatures on the validation split alone (as `calibrate` does, without
    scoring anything): `--calibrate-restarts` scales each restart so before they are averaged."""
    model.temperature.fill_(1.0)
    infl, posts = _probabilities(model, data, device, ("val",))
    t = fit_temperature(*infl["val"]), fit_temperature(*posts["val"])
    _set_temperatures(model, *t)
    return t


def calibrate(model, data: Labelled, device) -> dict:
    """Fit both heads' temperatures on the validation split, set them in `model`, and return
    metrics.json's "calibration" record (the test split scored where `data` has one). The post head's
    temperature stays 1 without labelled validation posts."""
    model.temperature.fill_(1.0)
    infl, posts = _probabilities(model, data, device, ("val", "test"))
    out = {}
    t_infl = fit_temperature(*infl["val"])
    out["influencer"] = summary(t_infl, infl["val"], infl["test"])
    t_post = fit_temperature(*posts["val"])
    out["post"] = summary(t_post, posts["val"], posts["test"]) if len(posts["val"][1]) else None
    _set_temperatures(model, t_infl, t_post)
    return out
