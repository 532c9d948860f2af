"""How every stage scores and tabulates (heads and baselines alike): accuracy, per-class F1, macro F1
and the confusion matrix as the paper reports them (sklearn's own), and the paper's Table 1 / Table 2
layout in Markdown."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

# The names the paper's tables give the inputs and the head: every table and page uses these.
INPUT_NAMES = {"both": "Text & Image", "image": "Image", "text": "Text"}
MODEL_NAME = "Influencer Profiler"


def model_name(pooling: str) -> str:
    """The head's name in a table: the paper's, or its no-attention ablation."""
    return MODEL_NAME + ("" if pooling == "attention" else " (mean pooling)")


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


def table(title: str, rows: list[tuple[str, str, dict]], categories: list[str]) -> str:
    """rows: (model, input, metrics) with metrics from classification_metrics above."""
    head = "| Model | Input | Accuracy | " + " | ".join(c.capitalize() for c in categories) + " |"
    rule = "|" + "---|" * (3 + len(categories))
    lines = [f"### {title}", "", head, rule]
    for model, inp, m in rows:
        if m is None or m.get("n", 0) == 0:
            note = (m or {}).get("note", "n/a")
            lines.append(f"| {model} | {inp} | {note} | " + " | ".join("" for _ in categories) + " |")
            continue
        f1 = " | ".join(f"{m['f1'].get(c, float('nan')):.3f}" for c in categories)
        lines.append(f"| {model} | {inp} | {100 * m['accuracy']:.2f}% | {f1} |")
    return "\n".join(lines) + "\n"
