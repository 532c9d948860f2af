"""The report's figures, drawn with matplotlib (Agg, no display): training curves, confusion
matrices, Figure 5a (accuracy against posts per influencer), Figure 5b (ablation). Each returns
the PNG's path relative to the report folder, or None when its input is missing."""
from __future__ import annotations

import csv
import os

import numpy as np

from runtime.reporting import INPUT_NAMES as INPUTS


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _save(fig, out: str, name: str) -> str:
    """The figure as OUT/assets/NAME.png, whole or absent (a full disk leaves no half PNG)."""
    from runtime.files import atomic_write
    rel = f"assets/{name}.png"
    try:
        with atomic_write(os.path.join(out, rel), "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    finally:
        _plt().close(fig)
    return rel


def _csv_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def curves_figure(run: str, out: str) -> str | None:
    rows = _csv_rows(os.path.join(run, "history.csv"))
    if not rows:
        return None
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    for key, group in _by(rows, lambda r: (r.get("restart", "0"), r.get("normalize", ""),
                                           r.get("instance_weight", ""))).items():
        step = [float(r["step"]) for r in group]
        said = [key[1]] if key[1] else []
        said += [f"weak labels x{key[2]}"] if key[2] not in ("", "0", "0.0") else []
        label = f"restart {key[0]}" + (f" ({', '.join(said)})" if said else "")
        line, = a.plot(step, [float(r["loss"]) for r in group], label=label)
        b.plot(step, [float(r["val_acc"]) for r in group], color=line.get_color())
        if any(r.get("val_post_acc") not in ("", "nan", None) for r in group):
            b.plot(step, [float(r["val_post_acc"] or "nan") for r in group], "--", color=line.get_color())
    a.set(xlabel="step", ylabel="training loss", title="Training loss")
    a.set_yscale("log")
    b.set(xlabel="step", ylabel="validation accuracy", title="Validation accuracy (dashed: posts)",
          ylim=(0, 1.02))
    # one colour per restart in both panels; the legend beside them, where up to 8 restarts hide no curve
    fig.legend(*a.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    return _save(fig, out, "curves")


def _by(rows, key):
    out: dict = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def confusion_figure(confusion: list, categories: list[str], title: str, out: str, name: str) -> str | None:
    cm = np.array(confusion, dtype=float)
    if not cm.size or cm.sum() == 0:
        return None
    plt = _plt()
    n = len(categories)
    fig, ax = plt.subplots(figsize=(0.5 * n + 2.2, 0.45 * n + 1.6))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), categories, rotation=45, ha="right")
    ax.set_yticks(range(n), categories)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, out, name)


def fig5a(run: str, out: str) -> str | None:
    rows = _csv_rows(os.path.join(run, "posts_curve.csv"))
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot([int(r["posts"]) for r in rows], [float(r["accuracy"]) for r in rows], "o-", label="Influencer Profiler")
    ax.set(xlabel="posts per influencer", ylabel="test accuracy", title="Figure 5a: accuracy vs posts",
           ylim=(0, 1.02))
    ax.legend(fontsize=7)
    return _save(fig, out, "fig5a")


def fig5b(ablation: list | dict | None, out: str) -> tuple[str | None, list]:
    if not ablation:
        return None, []
    # ablation.json of `heads ablate`: {"VARIANT|MODALITY": accuracy}
    rows = [{"variant": k.split("|")[0], "modality": k.split("|")[1], "accuracy": v}
            for k, v in ablation.items() if "|" in k and v is not None]
    if not rows:
        return None, []
    plt = _plt()
    order = ["full model", "no attention", "no fine-tuning"]
    variants = sorted({r["variant"] for r in rows}, key=lambda v: order.index(v) if v in order else len(order))
    mods = [m for m in ("text", "image", "both") if any(r["modality"] == m for r in rows)]
    fig, ax = plt.subplots(figsize=(5.5, 3))
    width = 0.8 / len(variants)
    for k, v in enumerate(variants):
        acc = [next((r["accuracy"] for r in rows if r["modality"] == m and r["variant"] == v), np.nan) for m in mods]
        ax.bar(np.arange(len(mods)) + k * width, acc, width, label=v)
    ax.set_xticks(np.arange(len(mods)) + width * (len(variants) - 1) / 2, [INPUTS[m] for m in mods])
    ax.set(ylabel="test accuracy", ylim=(0, 1.02), title="Figure 5b: modalities, attention, fine-tuning")
    ax.legend(fontsize=7)
    return _save(fig, out, "fig5b"), rows


def _bins(rows) -> list[tuple[float, float, int]]:
    """(confidence, accuracy, n) of a reliability record from metrics.json (a file from someone else:
    anything that is not numbers in [0, 1] and a count is left out)."""
    out = []
    for r in rows if isinstance(rows, list) else []:
        if not isinstance(r, dict):
            continue
        c, a, n = r.get("confidence"), r.get("accuracy"), r.get("n")
        if (all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in (c, a))
                and isinstance(n, int) and not isinstance(n, bool) and n > 0):
            out.append((float(c), float(a), n))
    return out[:1000]


def reliability_figure(calibration, out: str) -> str | None:
    """Reliability diagram of the test influencers before and after temperature scaling (metrics.json's
    calibration record): accuracy against confidence per bin, the diagonal being perfect calibration."""
    c = calibration.get("influencer") if isinstance(calibration, dict) else None
    if not isinstance(c, dict):
        return None
    before, after = _bins(c.get("reliability_before")), _bins(c.get("reliability_after"))
    if not before and not after:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 3.4))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, label="perfect calibration")
    t = c.get("temperature")
    t = f"{t:.2f}" if isinstance(t, (int, float)) and not isinstance(t, bool) else "?"
    for bins, style, label in ((before, "s--", "before scaling"), (after, "o-", f"after (T = {t})")):
        if bins:
            ax.plot([b[0] for b in bins], [b[1] for b in bins], style, ms=4, label=label)
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1.02), ylim=(0, 1.02),
           title="Reliability, test influencers")
    ax.legend(fontsize=7)
    return _save(fig, out, "reliability")
