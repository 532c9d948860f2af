"""`heads predict RUN STORE`: every influencer and every post of a store, streamed a group at a time.

Memory stays flat as the store grows: influencers are processed in consecutive runs of
about one block of posts; only the per-influencer outputs (M rows) are kept whole.
Writes predictions/* arrays into the store, influencers.csv (category, probability, the
posts that drove the decision) and posts.csv (category and probability of every post).
"""
from __future__ import annotations

import csv
import os
import time

import numpy as np
import torch

from cache.progress import Progress
from cache.readers import influencer_groups, post_features, require_features
from cache.store import open_store
from heads.train import load_run, pad_batch

TOP_POSTS = 3


def _create(store, name, n, dtype, fill):
    return store.group.create_array(f"predictions/{name}", shape=(n,), dtype=dtype,
                                    chunks=(max(1, min(n, 65536)),), fill_value=fill, overwrite=True)


def predict(run: str, url: str, out: str | None = None, *, batch_size: int = 64, device: str = "cpu",
            quiet: bool = False) -> dict:
    model, config = load_run(run, device)
    modality = config["fit"]["modality"]
    store = open_store(url, "r+")
    require_features(store, modality)
    icats, pcats = config["influencer_categories"], config["post_categories"]
    out = out or os.path.join(run, "predictions")
    os.makedirs(out, exist_ok=True)
    n, m = store.n_posts, store.n_influencers
    arrays = {"influencer_label": _create(store, "influencer_label", m, "int8", -1),
              "influencer_prob": _create(store, "influencer_prob", m, "float32", np.nan),
              "post_label": _create(store, "post_label", n, "int8", -1),
              "post_prob": _create(store, "post_prob", n, "float16", np.nan),
              "attention": _create(store, "attention", n, "float16", np.nan)}
    store.group["predictions"].attrs.update(run=os.path.abspath(run), modality=modality,
                                             git_commit=config.get("git_commit"))
    offsets = store.offsets()
    users, ids, captions = store["influencers/username"], store["posts/id"], store["posts/caption"]
    infl_label = np.full(m, -1, np.int8)
    infl_prob = np.full(m, np.nan, np.float32)
    progress = Progress(m, "influencers", "predict", quiet=quiet)
    t0 = time.perf_counter()
    unusable = 0
    with open(os.path.join(out, "influencers.csv"), "w", newline="") as fi, \
            open(os.path.join(out, "posts.csv"), "w", newline="") as fp:
        wi, wp = csv.writer(fi), csv.writer(fp)
        wi.writerow(["username", "category", "probability", "posts", "note"] +
                    [f"top{k}_{f}" for k in range(1, TOP_POSTS + 1) for f in ("post_id", "weight", "caption")])
        wp.writerow(["post_id", "username", "category", "probability", "attention"])
        for j0, j1, rows in influencer_groups(offsets, store.block):
            x, ok = post_features(store, rows, modality)
            base = rows.start
            bags = [x[offsets[j] - base:offsets[j + 1] - base] for j in range(j0, j1)]
            masks = [ok[offsets[j] - base:offsets[j + 1] - base] for j in range(j0, j1)]
            g_ids = ids[rows]
            g_caps = captions[rows]
            g_users = users[j0:j1]
            post_label = np.full(rows.stop - rows.start, -1, np.int8)
            post_prob = np.full(rows.stop - rows.start, np.nan, np.float32)
            attention = np.full(rows.stop - rows.start, np.nan, np.float32)
            with torch.no_grad():
                for s in range(0, len(bags), batch_size):
                    idx = [i for i in range(s, min(s + batch_size, len(bags))) if len(bags[i])]
                    if not idx:
                        continue
                    xb, mb = pad_batch(bags, masks, idx, device)
                    o = model(xb, mb)
                    pi = torch.softmax(o["logits"].float(), 1).cpu().numpy()
                    pp = torch.softmax(o["post_logits"].float(), 2).cpu().numpy()
                    w = o["weights"].cpu().numpy()
                    for k, i in enumerate(idx):
                        j = j0 + i
                        a = offsets[j] - base
                        cnt = len(bags[i])
                        usable = masks[i]
                        post_label[a:a + cnt] = np.where(usable, pp[k, :cnt].argmax(1), -1)
                        post_prob[a:a + cnt] = np.where(usable, pp[k, :cnt].max(1), np.nan)
                        attention[a:a + cnt] = np.where(usable, w[k, :cnt], np.nan)
                        if usable.any():
                            infl_label[j] = pi[k].argmax()
                            infl_prob[j] = pi[k].max()
            for i in range(j1 - j0):
                j = j0 + i
                a, b = offsets[j] - base, offsets[j + 1] - base
                top = []
                if infl_label[j] >= 0:
                    order = np.argsort(-np.nan_to_num(attention[a:b], nan=-1.0), kind="stable")[:TOP_POSTS]
                    for t in order:
                        cap = str(g_caps[a + t]).replace("\n", " ")
                        top += [str(g_ids[a + t]), f"{attention[a + t]:.4f}", cap[:200]]
                    note = ""
                else:
                    unusable += 1
                    note = "no posts" if b == a else "no usable post (no features ok)"
                top += [""] * (3 * TOP_POSTS - len(top))
                label = icats[infl_label[j]] if infl_label[j] >= 0 else ""
                prob = f"{infl_prob[j]:.4f}" if infl_label[j] >= 0 else ""
                wi.writerow([str(g_users[i]), label, prob, b - a, note] + top)
                for t in range(a, b):
                    wp.writerow([str(g_ids[t]), str(g_users[i]),
                                 pcats[post_label[t]] if post_label[t] >= 0 else "",
                                 f"{post_prob[t]:.4f}" if post_label[t] >= 0 else "",
                                 f"{attention[t]:.4f}" if post_label[t] >= 0 else ""])
            arrays["post_label"][rows] = post_label
            arrays["post_prob"][rows] = post_prob.astype(np.float16)
            arrays["attention"][rows] = attention.astype(np.float16)
            progress.update(j1 - j0)
    arrays["influencer_label"][:] = infl_label
    arrays["influencer_prob"][:] = infl_prob
    progress.close()
    return {"influencers": m, "posts": n, "unusable_influencers": unusable, "out": out,
            "seconds": time.perf_counter() - t0}
