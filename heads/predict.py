"""`heads predict RUN STORE`: every influencer and every post of a store, as one task per group.

Influencers are cut into consecutive groups of at least GROUP_ROWS posts (one block, if larger). Each group is a
dask task (local threads, or the workers of a dask.distributed cluster with `--scheduler`)
that opens the store and loads the run itself, and returns the group's outputs. This
process writes them in group order: the predictions/* arrays of the store, influencers.csv
(category, probability, the posts that drove the decision) and posts.csv (category and
probability of every post). Memory stays flat as the store grows: only a window of groups
is in flight, and only the per-influencer outputs (M rows) are kept whole.

Crash safety: the CSVs are written under temporary names and renamed when complete
(runtime.files), so a killed run never leaves a truncated file under the final name (a previous
run's files stay as they were); `predictions/` carries `complete=false` until the last group is written, and
`cache verify` and `cache info` report it. Rerunning the command redoes the whole store.
"""
from __future__ import annotations

import csv
import functools
import os
import time

import numpy as np
import torch

from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from cache.labels import LabelError, release_categories
from cache.outputs import begin_predictions, finish_predictions, lock_predictions
from cache.readers import influencer_groups, post_features, require_features, require_same_encoders
from cache.schema import EMBEDDING, SPLITS
from cache.store import open_store
from heads.infer import load_run, pad_batch
from runtime.files import atomic_files, csv_rows, outside_inputs, write_json
from runtime.compute import describe, ordered_results
from runtime.device import pick_device
from runtime.errors import UserError
from runtime.progress import Progress

TOP_POSTS = 3
GROUP_ROWS = 16384      # posts per task at least: a task's fixed cost (opening the store, arrays) is amortised
INFLUENCER_HEADER = (["username", "category", "probability", "posts", "note"] +
                     [f"top{k}_{f}" for k in range(1, TOP_POSTS + 1) for f in ("post_id", "weight", "caption")])
POST_HEADER = ["post_id", "username", "category", "probability", "attention"]


@functools.lru_cache(maxsize=2)
def _loaded(run: str, stamp: int, device: str):
    """The run's model, loaded once per worker process (`stamp`: model.pt's mtime, so a refit reloads)."""
    return load_run(run, device)


def _predict_group(run: str, stamp: int, url: str, j0: int, offs: np.ndarray, batch_size: int, device: str) -> dict:
    """Outputs of influencers j0 … j0+len(offs)-2, whose posts are rows offs[0]:offs[-1]."""
    model, config = _loaded(run, stamp, str(pick_device(device)))
    dev = next(model.parameters()).device
    icats, pcats = config["influencer_categories"], config["post_categories"]
    post_head = config.get("post_head_trained", True)
    store = open_store(url)
    rows = slice(int(offs[0]), int(offs[-1]))
    x, present = post_features(store, rows, config["fit"]["modality"])
    k_infl, n_rows = len(offs) - 1, rows.stop - rows.start
    local = offs - offs[0]
    bags = [x[local[i]:local[i + 1]] for i in range(k_infl)]
    masks = [present[local[i]:local[i + 1]] for i in range(k_infl)]
    post_label = np.full(n_rows, -1, np.int8)
    post_prob = np.full(n_rows, np.nan, np.float32)
    attention = np.full(n_rows, np.nan, np.float32)
    infl_label = np.full(k_infl, -1, np.int8)
    infl_prob = np.full(k_infl, np.nan, np.float32)
    embedding = np.full((k_infl, model.cfg.hidden), np.nan, np.float32)
    with torch.no_grad():
        for s in range(0, k_infl, batch_size):
            idx = [i for i in range(s, min(s + batch_size, k_infl)) if len(bags[i])]
            if not idx:
                continue
            xb, mb = pad_batch(bags, masks, idx, dev)
            o = model(xb, mb)
            pi = torch.softmax(o["logits"].float(), 1).cpu().numpy()
            pp = torch.softmax(o["post_logits"].float(), 2).cpu().numpy()
            w = o["weights"].float().cpu().numpy()
            h = o["h"].float().cpu().numpy()
            for k, i in enumerate(idx):
                a, cnt, usable = local[i], len(bags[i]), masks[i].any(1)
                if post_head:
                    post_label[a:a + cnt] = np.where(usable, pp[k, :cnt].argmax(1), -1)
                    post_prob[a:a + cnt] = np.where(usable, pp[k, :cnt].max(1), np.nan)
                attention[a:a + cnt] = np.where(usable, w[k, :cnt], np.nan)
                if usable.any():
                    infl_label[i] = pi[k].argmax()
                    infl_prob[i] = pi[k].max()
                    embedding[i] = h[k]
    ids = store["posts/id"][rows]
    caps = store["posts/caption"][rows]
    users = store["influencers/username"][j0:j0 + k_infl]
    infl_rows, post_rows, unusable = [], [], 0
    for i in range(k_infl):
        a, b = local[i], local[i + 1]
        top = []
        if infl_label[i] >= 0:
            order = np.argsort(-np.nan_to_num(attention[a:b], nan=-1.0), kind="stable")[:TOP_POSTS]
            for t in order:
                cap = str(caps[a + t]).replace("\n", " ")
                top += [str(ids[a + t]), f"{attention[a + t]:.4f}", cap[:200]]
            note = ""
        else:
            unusable += 1
            note = "no posts" if b == a else "no usable post (no features ok)"
        top += [""] * (3 * TOP_POSTS - len(top))
        label = icats[infl_label[i]] if infl_label[i] >= 0 else ""
        prob = f"{infl_prob[i]:.4f}" if infl_label[i] >= 0 else ""
        infl_rows.append([str(users[i]), label, prob, b - a, note] + top)
        for t in range(a, b):
            labelled = post_label[t] >= 0
            post_rows.append([str(ids[t]), str(users[i]), pcats[post_label[t]] if labelled else "",
                              f"{post_prob[t]:.4f}" if labelled else "",
                              "" if np.isnan(attention[t]) else f"{attention[t]:.4f}"])
    return {"j0": j0, "rows": rows, "post_label": post_label, "post_prob": post_prob.astype(np.float16),
            "attention": attention.astype(np.float16), "infl_label": infl_label, "infl_prob": infl_prob,
            "embedding": embedding.astype(np.float16),
            "infl_rows": infl_rows, "post_rows": post_rows, "unusable": unusable}


def predict(run: str, url: str, out: str | None = None, *, batch_size: int = 64, device: str = "cpu",
            scheduler=None, quiet: bool = False, overwrite: bool = False) -> dict:
    model, config = load_run(run, "cpu")      # fails here, clearly, before anything is written
    del model
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    modality = config["fit"]["modality"]
    if out:
        outside_inputs(out, {"store": url})
    store = open_store(url, "r+")
    require_features(store, modality)
    fitted_on = config.get("store") if isinstance(config.get("store"), dict) else {}
    require_same_encoders(store, modality, fitted_on.get("encoders") if isinstance(fitted_on.get("encoders"), dict)
                          else None)
    threads = torch.get_num_threads()
    # one torch thread per task, as a dask worker process has (its nanny sets OMP_NUM_THREADS=1): dask runs
    # the tasks in parallel, and the same reduction order gives a cluster exactly the local results (with two
    # threads per task, 1 post probability in 9,000 differed in its float16 rounding on an AVX-512 CPU)
    torch.set_num_threads(1)
    try:
        return _predict_locked(run, out, config, store=store, modality=modality, batch_size=batch_size, device=device,
                               scheduler=scheduler, quiet=quiet, overwrite=overwrite)
    finally:
        torch.set_num_threads(threads)


def _predict_locked(run: str, out: str | None, config: dict, *, store, modality: str, batch_size: int, device: str,
                    scheduler, quiet: bool, overwrite: bool) -> dict:
    with lock_predictions(store):          # a second predict on this store is refused while this one runs
        out = out or os.path.join(run, "predictions")
        os.makedirs(out, exist_ok=True)
        n, m = store.n_posts, store.n_influencers
        run_abs = os.path.abspath(run)
        arrays = begin_predictions(store, run_abs, modality, config.get("git_commit"), overwrite,
                                   embedding_dim=int(config["model"]["hidden"]))
        offsets = store.offsets()
        stamp = os.stat(os.path.join(run_abs, "model.pt")).st_mtime_ns
        infl_label = np.full(m, -1, np.int8)
        infl_prob = np.full(m, np.nan, np.float32)
        progress = Progress(m, "influencers", "predict", quiet=quiet)
        t0 = time.perf_counter()
        unusable = 0
        paths = {name: os.path.join(out, f"{name}.csv") for name in ("influencers", "posts")}
        tasks = ((run_abs, stamp, store.location, j0, offsets[j0:j1 + 1], batch_size, device)
                 for j0, j1, _ in influencer_groups(offsets, max(store.block, GROUP_ROWS)))
        with atomic_files([paths["influencers"], paths["posts"]], newline="") as (fi, fp):
            wi, wp = csv.writer(fi), csv.writer(fp)
            wi.writerow(INFLUENCER_HEADER)
            wp.writerow(POST_HEADER)
            for r in ordered_results(_predict_group, tasks, scheduler):
                wi.writerows(csv_rows(r["infl_rows"]))
                wp.writerows(csv_rows(r["post_rows"]))
                for name in ("post_label", "post_prob", "attention"):
                    arrays[name][r["rows"]] = r[name]
                k = len(r["infl_label"])
                infl_label[r["j0"]:r["j0"] + k] = r["infl_label"]
                infl_prob[r["j0"]:r["j0"] + k] = r["infl_prob"]
                arrays[EMBEDDING][r["j0"]:r["j0"] + k] = r["embedding"]
                unusable += r["unusable"]
                progress.update(k)
            arrays["influencer_label"][:] = infl_label
            arrays["influencer_prob"][:] = infl_prob
        # the CSVs were fsynced and renamed in together as the block ended; then the arrays are swapped in
        finish_predictions(store)
        progress.close()
        summary = {"influencers": m, "posts": n, "unusable_influencers": unusable, "out": out,
                   "seconds": time.perf_counter() - t0, "scheduler": describe(scheduler), "run": run_abs,
                   "store": store.url, "post_head_trained": config.get("post_head_trained", True),
                   "release_agreement": release_agreement(store, infl_label, config["influencer_categories"])}
        write_json(os.path.join(out, "summary.json"), summary)
    return summary


def release_agreement(store, predicted: np.ndarray, categories: list[str]) -> dict | None:
    """How often the run agrees with the release's own (model-assigned) categories, over the influencers
    in no train or val split whose release category is one the model predicts (not `other`, not
    missing) and that got a prediction. None when the store has no release categories."""
    try:
        mapped, _ = release_categories(store)
    except LabelError:
        return None
    if list(store.influencer_categories) != list(categories):
        return None
    split = store["influencers/split"][:]
    used = np.isin(split, [SPLITS["train"], SPLITS["val"]])
    keep = ~used & (mapped >= 0) & (predicted >= 0)
    y, p = mapped[keep], predicted[keep].astype(np.int64)
    out = {"n": int(keep.sum()), "excluded_train_val": int(used.sum()),
           "excluded_other_or_none": int((~used & (mapped < 0)).sum()),
           "excluded_unpredicted": int((~used & (mapped >= 0) & (predicted < 0)).sum())}
    if not len(y):
        return {**out, "accuracy": None}
    labels = list(range(len(categories)))
    prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=labels, zero_division=0)
    out.update(accuracy=float((y == p).mean()),
               per_category={c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                                 "support": int(support[i])} for i, c in enumerate(categories)},
               confusion=confusion_matrix(y, p, labels=labels).tolist(), categories=list(categories))
    return out


def agreement_line(a: dict | None) -> str:
    """The one line `heads predict` prints about agreement with the release's categories."""
    if a is None:
        return "agreement with the release's categories: n/a (the store has no release categories)"
    if not a["n"]:
        return "agreement with the release's categories: n/a (no influencer outside train/val has one)"
    f1 = [v["f1"] for v in a["per_category"].values() if v["support"]]
    return (f"agreement with the release's categories: {100 * a['accuracy']:.1f}% of {a['n']:,} influencers in no "
            f"train or val split (per-category F1 {min(f1):.2f}-{max(f1):.2f}; {a['excluded_other_or_none']:,} "
            f"'other' or uncategorised not compared); details in summary.json")
