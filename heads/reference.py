"""The reference beside every run: logistic regression on per-influencer mean features.

Same splits as the head, C chosen on the validation split (scikit-learn's GridSearchCV with a
PredefinedSplit), refit on train, scored on test. It is cheap and hard to get wrong, so a
head that scores below it on validation has not learned what the features hold.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from heads.calibrate import nll
from heads.data import Labelled, bag_means

C_GRID = (0.001, 0.01, 0.1, 1.0)


def logistic_reference(data: Labelled, segments: tuple, seed: int = 0) -> dict:
    """Validation and test accuracy of the reference, its chosen C, and its test predictions."""
    parts = {"train": data.train, "val": data.val, "test": data.test}
    x = {s: bag_means(p.bags, segments, p.masks) for s, p in parts.items()}
    y = {s: p.y for s, p in parts.items()}
    fold = PredefinedSplit(np.r_[np.full(len(y["train"]), -1), np.zeros(len(y["val"]), int)])
    pipe = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=2000, random_state=seed))])
    search = GridSearchCV(pipe, {"lr__C": list(C_GRID)}, cv=fold, refit=False)
    search.fit(np.concatenate([x["train"], x["val"]]), np.concatenate([y["train"], y["val"]]))
    best = pipe.set_params(**search.best_params_).fit(x["train"], y["train"])   # refit on train only
    test_pred = best.predict(x["test"]) if len(y["test"]) else np.zeros(0, np.int64)
    val_probs = np.zeros((len(y["val"]), int(max(y["train"].max(), y["val"].max())) + 1))
    val_probs[:, best.classes_] = best.predict_proba(x["val"])     # classes absent from train: probability 0
    return {"model": "LogisticRegression on mean features", "C": search.best_params_["lr__C"],
            "val_acc": float(search.best_score_),
            "val_log_loss": nll(val_probs, y["val"]),
            "test_acc": float((test_pred == y["test"]).mean()) if len(y["test"]) else float("nan"),
            "test_pred": test_pred}
