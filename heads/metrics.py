"""Scores as the paper reports them: accuracy, per-class F1, macro F1, confusion matrix (sklearn's own)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def classification_metrics(y_true, y_pred, categories: list[str]) -> dict:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(len(categories)))
    if len(y_true) == 0:
        return {"n": 0, "accuracy": float("nan"), "macro_f1": float("nan"), "f1": {}, "confusion": []}
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    present = np.isin(labels, y_true)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "f1": {c: float(v) for c, v in zip(categories, f1)},
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
