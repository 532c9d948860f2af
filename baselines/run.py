"""`baselines run`: every baseline of Tables 1 and 2 on the store's features and splits.

Writes DIR/results.json, DIR/results.md (the paper's layout) and DIR/predictions.csv (every
test prediction, so the scores can be recomputed by anyone).
"""
from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass

import numpy as np

from baselines import features as fb
from baselines.aggregate import influencer_means
from baselines.models import MODEL_NAMES, candidates, select_and_fit
from cache.labels import require_sound_labels
from cache.readers import MODALITY_SETS, post_features, post_features_at, require_features
from cache.schema import MODALITIES, SPLITS
from cache.store import StoreError, open_store
from cache.runs import RunFolder
from runtime.files import atomic_write, csv_rows, outside_inputs, write_json, write_text
from runtime.reporting import INPUT_NAMES, classification_metrics, table
from runtime.compute import describe
from runtime.console import say
from runtime.errors import UserError

IMAGE_DIM = MODALITIES["image"]
SLICES = {"image": slice(0, IMAGE_DIM), "text": slice(IMAGE_DIM, IMAGE_DIM + MODALITIES["text"]),
          "both": slice(0, IMAGE_DIM + MODALITIES["text"])}


def _split_rows(split: np.ndarray, keep: np.ndarray) -> dict[str, np.ndarray]:
    return {name: np.flatnonzero((split == SPLITS[name]) & keep) for name in ("train", "val", "test")}


@dataclass
class Task:
    """One classification task of the baselines: the features `x` and labels `y` of every candidate row,
    the indices into them of each split (`rows["train"]`, …), the store rows they are, the category names."""
    name: str                       # influencer | post
    x: np.ndarray
    y: np.ndarray
    rows: dict[str, np.ndarray]
    store_rows: np.ndarray
    cats: list[str]

    @property
    def test(self) -> np.ndarray:
        return self.rows["test"]


class _Recorder:
    """Scores each baseline on its task's test rows, keeps its predictions, says one line per baseline."""

    def __init__(self, results: dict, total: int, log):
        self.results, self.total, self.log = results, total, log
        self.pred_rows: list[list] = []
        self.done = 0

    def __call__(self, task: Task, model: str, inp: str, y_pred: np.ndarray, extra: dict) -> None:
        self.done += 1
        y_true, cats = task.y[task.test], task.cats
        metrics = classification_metrics(y_true, y_pred, cats)
        self.results[task.name].append({"model": model, "input": inp, **extra, "metrics": metrics})
        for r, t, p in zip(task.store_rows[task.test], y_true, y_pred):
            self.pred_rows.append([task.name, model, inp, int(r), cats[t], cats[p]])
        self.log(f"[{self.done}/{self.total}] {model} on {inp} ({task.name}s): test accuracy "
                 f"{100 * metrics['accuracy']:.2f}% (n={metrics['n']}) {extra.get('seconds', 0):.1f}s")


def _check_choices(models, inputs) -> None:
    for m in models:
        if m not in MODEL_NAMES:
            raise UserError(f"unknown model {m!r}; choose from {', '.join(MODEL_NAMES)}")
    for i in inputs:
        if i not in INPUT_NAMES:
            raise UserError(f"unknown input {i!r}; choose from text, image, both")


def run_baselines(url: str, out: str, *, models=("gnb", "knn", "svc", "rf"), inputs=("text", "image", "both"),
                  feature_baselines: bool = True, scheduler: str | None = None, compare: list[str] | None = None,
                  seed: int = 0, log=say) -> dict:
    _check_choices(models, inputs)
    outside_inputs(out, {"store": url})
    for r in compare or ():
        outside_inputs(out, {"run folder": r})
    store = open_store(url)
    needed = sorted({m for i in inputs for m in MODALITY_SETS[i]})
    for m in needed:
        require_features(store, m)
    require_sound_labels(store)
    icats, pcats = store.influencer_categories, store.post_categories
    label, split = store["influencers/label"][:], store["influencers/split"][:]
    labelled = np.flatnonzero(label >= 0)
    if not len(labelled):
        raise StoreError(f"{url}: no labelled influencers; run `cache labels` first")
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    have_both = all(store.has_features(m) and store[f"features/{m}_done"][:].any() for m in ("image", "text"))
    agg = "both" if have_both else needed[0]
    means, counts = influencer_means(url, agg, labelled, scheduler=scheduler)
    log(f"per-influencer means of {len(labelled)} labelled influencers in {time.perf_counter() - t0:.1f}s "
        f"({describe(scheduler)})")
    y_inf = label[labelled].astype(np.int64)
    rows_inf = _split_rows(split[labelled], counts > 0)
    for name in ("train", "val"):
        if not len(rows_inf[name]):
            raise StoreError(f"{url}: no usable labelled influencers in the {name} split")

    plabel, psplit = store["posts/label"][:], store["posts/split"][:]
    prow = np.flatnonzero(plabel >= 0)
    px, ppresent = post_features_at(store, prow, "both" if have_both else agg)
    rows_post = _split_rows(psplit[prow], ppresent.any(1))
    y_post = plabel[prow].astype(np.int64)

    results: dict = {"influencer": [], "post": [], "store": url, "seed": seed,
                     "test_influencers": [int(labelled[i]) for i in rows_inf["test"]]}
    jobs = [(m, i) for m in models for i in inputs]
    record = _Recorder(results, len(jobs) * 2 + (3 if feature_baselines else 0), log)
    inf = Task("influencer", means, y_inf, rows_inf, labelled, icats)
    post = Task("post", px, y_post, rows_post, prow, pcats)
    for model, inp in jobs:
        for task in (inf, post):
            _model_baseline(model, inp, agg, task, seed, record, log)
    if feature_baselines:
        _feature_baselines(store, inf, post, agg, seed, record)
    for run in compare or []:
        _add_compare(results, run, store)
    _write_outputs(out, url, results, record.pred_rows, inf, post)
    results["seconds"] = time.perf_counter() - t0
    return results


def _model_baseline(model: str, inp: str, agg: str, task: Task, seed: int, record: _Recorder, log) -> None:
    """One model on one input for one task: searched on validation, refit on train, scored on test."""
    t = time.perf_counter()
    width = task.x.shape[1]
    cols = SLICES[inp] if agg == "both" or width == SLICES["both"].stop else slice(0, width)
    x, y, rows = task.x[:, cols].astype(np.float32), task.y, task.rows
    if not len(rows["train"]) or not len(rows["val"]):
        log(f"skip {model} on {inp} ({task.name}s): no labelled train/val rows")
        return
    clf, params, val_acc = select_and_fit(candidates(model, seed), x[rows["train"]], y[rows["train"]],
                                          x[rows["val"]], y[rows["val"]])
    pred = clf.predict(x[task.test]) if len(task.test) else np.zeros(0, np.int64)
    record(task, MODEL_NAMES[model], INPUT_NAMES[inp], pred,
           {"params": params, "val_accuracy": val_acc, "seconds": time.perf_counter() - t})


def _feature_baselines(store, inf: Task, post: Task, agg: str, seed: int, record: _Recorder) -> None:
    """Tag, Text&Social and Image (Table 1's feature rows); User is listed as not reproducible."""
    t = time.perf_counter()
    tags, texts, social = fb.influencer_texts(store, inf.store_rows)
    tr, te = inf.rows["train"], inf.test
    pick = lambda seq, idx: [seq[i] for i in idx]  # noqa: E731
    tag = fb.tag_model(seed).fit(pick(tags, tr), inf.y[tr])
    record(inf, "Tag", "Hashtags", tag.predict(pick(tags, te)), {"seconds": time.perf_counter() - t})
    t = time.perf_counter()
    ts = fb.text_social_model(seed).fit(fb.text_social_matrix(pick(texts, tr), social[tr]), inf.y[tr])
    record(inf, "Text&Social", "Captions & social", ts.predict(fb.text_social_matrix(pick(texts, te), social[te])),
           {"seconds": time.perf_counter() - t})
    t = time.perf_counter()
    if not (store.has_features("image") and store["features/image_done"][:].any()):
        record.results["influencer"].append({"model": "Image", "input": "Post image votes",
                                             "metrics": {"n": 0, "note": "n/a: no image features in the store"}})
    else:
        _image_baseline(store, inf, post, agg, seed, record, t)
    record.results["influencer"].append({"model": "User", "input": "Profile & like graph",
                                         "metrics": {"n": 0, "note": fb.USER_NOTE}})


def _write_outputs(out: str, url: str, results: dict, pred_rows: list, inf: Task, post: Task) -> None:
    """predictions.csv, results.json and results.md (the paper's Table 1 and 2 layout)."""
    with atomic_write(os.path.join(out, "predictions.csv"), newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "model", "input", "row", "true", "predicted"])
        w.writerows(csv_rows(pred_rows))
    write_json(os.path.join(out, "results.json"), results)
    md = ["# Baselines", "", f"store `{url}`; test split: {len(inf.test)} influencers, {len(post.test)} posts", "",
          table("Table 1: influencer classification",
                [(r["model"], r["input"], r["metrics"]) for r in results["influencer"]], inf.cats), "",
          table("Table 2: post classification",
                [(r["model"], r["input"], r["metrics"]) for r in results["post"]], post.cats)]
    write_text(os.path.join(out, "results.md"), "\n".join(md))


def _image_baseline(store, inf: Task, post: Task, agg: str, seed: int, record: _Recorder, t: float) -> None:
    """Table 1's Image baseline: a per-post image classifier whose votes decide per influencer."""
    ximg = post.x[:, SLICES["image"]].astype(np.float32) if agg == "both" else post.x.astype(np.float32)
    post_clf = fb.image_post_classifier(seed).fit(ximg[post.rows["train"]], post.y[post.rows["train"]])
    post_to_infl = np.array([inf.cats.index(c) if c in inf.cats else -1 for c in post.cats])
    offsets = store.offsets()

    def posts_of(j):
        x, present = post_features(store, slice(int(offsets[j]), int(offsets[j + 1])), "image")
        return x[present.any(1)].astype(np.float32)
    record(inf, "Image", "Post image votes",
           fb.image_votes(post_clf, store, inf.store_rows[inf.test], posts_of, post_to_infl, len(inf.cats)),
           {"seconds": time.perf_counter() - t})


def _add_compare(results: dict, run: str, store) -> None:
    """Rows of a `heads fit` run, refused unless it was scored on this store's test split."""
    folder = RunFolder.open(run)
    if folder.config["store"].get("labels") != store.attrs.get("labels"):
        raise StoreError(f"{run}: fit on other labels or splits than {store.url}; its scores are not comparable")
    for task in ("influencer", "post"):
        results[task].append({"model": folder.name, "input": folder.input_name, "run": run,
                              "metrics": folder.metrics[task]})
