"""The training loop of `heads fit`: steps, evaluation rounds, early stopping, restarts.

The budget is counted in optimiser steps, not epochs, so it does not shrink with the number
of labels: 64 training influencers in batches of 32 are 2 steps an epoch, and 30 epochs of
them were 60 steps, far too few (the cause of the failures in heads_quality.py). Validation
runs once per round (an epoch, or as many epochs as make `eval_steps` steps); the state kept
is the best on the selection criterion, and training stops when it has not improved for
`patience` steps (after `min_steps`) or at `max_steps`. With `epochs` set, exactly that many
one-epoch rounds run (no early stopping), as before.

Selection serves both tasks: influencer validation accuracy plus post validation accuracy
(where posts are labelled), ties broken by the sum of their validation log-losses. One model
answers both tasks, so its one state must be good at both; selecting on influencers alone
kept states whose post head was untrained.
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch

from heads.data import Labelled
from heads.infer import log_loss, pad_batch, predict_bags, predict_posts
from heads.model import multitask_loss


def evaluate(model, data: Labelled, device) -> dict:
    val, pval = data.val, data.posts_val
    probs, _ = predict_bags(model, val.bags, val.masks, device)
    row = {"val_acc": float((probs.argmax(1) == val.y).mean()), "val_loss": log_loss(probs, val.y)}
    if len(pval.y):
        pp = predict_posts(model, pval.x, device, present=pval.present)
        row.update(val_post_acc=float((pp.argmax(1) == pval.y).mean()), val_post_loss=log_loss(pp, pval.y))
    else:
        row.update(val_post_acc=float("nan"), val_post_loss=float("nan"))
    return row


def criterion(row: dict) -> tuple[float, float]:
    """Larger is better: (accuracy sum, -log-loss sum) over the tasks that have validation labels."""
    acc, loss = row["val_acc"], row["val_loss"]
    if not math.isnan(row["val_post_acc"]):
        acc, loss = acc + row["val_post_acc"], loss + row["val_post_loss"]
    return round(acc, 9), -loss


def lr_at(step: int, cfg) -> float:
    """Linear warm-up, then constant (a cosine decay to 10 % and keeping a random half of each
    bag's posts per step were tried and did not help on the benchmark stores; both were removed)."""
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))


def _instances(masks: list[np.ndarray]) -> np.ndarray:
    """(bag, post) of every usable post of the training bags: single posts labelled with their
    influencer's category for `instance_weight`'s loss."""
    usable = [np.flatnonzero(m.reshape(len(m), -1).any(1)) for m in masks]
    return np.stack([np.repeat(np.arange(len(masks)), [len(u) for u in usable]),
                     np.concatenate(usable or [np.zeros(0, np.int64)])], 1).astype(np.int64)


def train_once(model, data: Labelled, cfg, device, *, use_bf16: bool, seed: int, on_round, restart: int = 0) -> dict:
    """Train `model` in place; returns {"state", "row"} of the best round."""
    rng = np.random.default_rng(seed)
    train, ptrain = data.train, data.posts_train
    att = {id(p) for p in model.attention_parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in att], "scale": 1.0},
              {"params": [p for p in model.parameters() if id(p) in att], "scale": cfg.attention_lr}]
    opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(train.y)
    per_epoch = max(1, math.ceil(n / cfg.batch_size))
    if cfg.epochs:
        total, round_epochs, patience = cfg.epochs * per_epoch, 1, None
    else:
        total, round_epochs, patience = cfg.max_steps, max(1, math.ceil(cfg.eval_steps / per_epoch)), cfg.patience
    inst = _instances(train.masks) if cfg.instance_weight > 0 else np.zeros((0, 2), np.int64)
    step = epoch = rnd = 0
    best, best_key, best_step = None, None, 0
    while step < total:
        model.train()
        t = time.perf_counter()
        sums = {"loss": 0.0, "main": 0.0, "aux": 0.0}
        steps = 0
        for _ in range(round_epochs):
            epoch += 1
            order = rng.permutation(n)
            for s in range(0, n, cfg.batch_size):
                if step >= total:
                    break
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, cfg) * group["scale"]
                idx = order[s:s + cfg.batch_size]
                x, m = pad_batch(train.bags, train.masks, idx, device)
                post_logits = post_y = None
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    out = model(x, m, posts=False)   # the aux loss uses its own batch of labelled posts
                    if cfg.aux_weight > 0 and len(ptrain.y):
                        pick = rng.integers(0, len(ptrain.y), size=min(cfg.aux_batch, len(ptrain.y)))
                        px = torch.from_numpy(ptrain.x[pick].astype(np.float32)).to(device)
                        pp = torch.from_numpy(ptrain.present[pick]).to(device)
                        post_logits = model.post_logits(model.encode_posts(px, pp))
                        post_y = torch.from_numpy(ptrain.y[pick]).to(device)
                    inst_logits = inst_y = None
                    if len(inst):
                        pick = inst[rng.integers(0, len(inst), size=min(cfg.aux_batch, len(inst)))]
                        ix = torch.from_numpy(np.stack([train.bags[b][q] for b, q in pick]).astype(np.float32))
                        im = np.stack([train.masks[b][q] for b, q in pick])
                        present = torch.from_numpy(im).to(device) if im.ndim == 2 else None
                        inst_logits = model.influencer_logits(model.drop(model.encode_posts(ix.to(device), present)))
                        inst_y = torch.from_numpy(train.y[pick[:, 0]]).to(device)
                loss, parts = multitask_loss(out, torch.from_numpy(train.y[idx]).to(device), post_logits, post_y,
                                             cfg.aux_weight)
                if inst_logits is not None:
                    loss = loss + cfg.instance_weight * torch.nn.functional.cross_entropy(inst_logits.float(), inst_y)
                opt.zero_grad()
                loss.backward()
                if step < cfg.attention_warmup:
                    # attention held at its start (nearly uniform, i.e. mean pooling) while the post
                    # encoder and the classifiers learn the categories; then it learns to prefer posts
                    for p in model.attention_parameters():
                        p.grad = None
                opt.step()
                sums["loss"] += loss.item()
                sums["main"] += parts["main"]
                sums["aux"] += parts["aux"]
                steps += 1
                step += 1
        rnd += 1
        row = {"restart": restart, "round": rnd, "epoch": epoch, "step": step, "lr": lr_at(step - 1, cfg),
               **{k: v / max(1, steps) for k, v in sums.items()}, **evaluate(model, data, device),
               "seconds": time.perf_counter() - t}
        on_round(row)
        key = criterion(row)
        if best_key is None or key > best_key:
            best_key, best_step = key, step
            best = {"state": copy.deepcopy(model.state_dict()), "row": row}
        elif (patience is not None and step >= max(cfg.min_steps, cfg.attention_warmup + patience // 2)
              and step - best_step >= patience):
            break
    return best
