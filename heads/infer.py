"""Inference helpers shared by fit, eval, predict and ablate: batching bags, probabilities, loading a run."""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from heads.model import HeadConfig, InfluencerProfiler
from runtime.errors import UserError


def pad_batch(bags, masks, idx, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(bags[i]) for i in idx))
    dim = bags[idx[0]].shape[1]
    # padded in the bags' own dtype (float16 from the store); torch widens to float32 far faster than numpy
    x = np.zeros((len(idx), width, dim), dtype=bags[idx[0]].dtype)
    m = np.zeros((len(idx), width) + masks[idx[0]].shape[1:], dtype=bool)     # (B, P) or (B, P, modalities)
    for k, i in enumerate(idx):
        n = len(bags[i])
        x[k, :n] = bags[i]
        m[k, :n] = masks[i]
    return torch.from_numpy(x).to(device).float(), torch.from_numpy(m).to(device)


@torch.no_grad()
def predict_bags(model, bags, masks, device, batch_size=64) -> tuple[np.ndarray, list[np.ndarray]]:
    """Influencer probabilities (n, classes) and per-bag attention weights."""
    model.eval()
    probs, weights = [], []
    for s in range(0, len(bags), batch_size):
        idx = list(range(s, min(s + batch_size, len(bags))))
        x, m = pad_batch(bags, masks, idx, device)
        out = model(x, m, posts=False)
        probs.append(torch.softmax(out["logits"].float(), 1).cpu().numpy())
        w = out["weights"].float().cpu().numpy()
        weights += [w[k, :len(bags[i])] for k, i in enumerate(idx)]
    return (np.concatenate(probs) if probs else np.zeros((0, model.cfg.n_influencer))), weights


@torch.no_grad()
def predict_posts(model, x: np.ndarray, device, batch_size=4096, present: np.ndarray | None = None) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(x), batch_size):
        p = torch.from_numpy(present[s:s + batch_size]).to(device) if present is not None else None
        v = model.encode_posts(torch.from_numpy(x[s:s + batch_size].astype(np.float32)).to(device), p)
        out.append(torch.softmax(model.post_logits(v).float(), 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.n_post))


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (nan for no rows)."""
    if not len(y):
        return float("nan")
    return float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean())


def load_run(run: str, device: str = "cpu") -> tuple[InfluencerProfiler, dict]:
    path = os.path.join(run, "model.pt")
    if not os.path.exists(path):
        raise UserError(f"{path}: not a `heads fit` run folder")
    ckpt = torch.load(path, map_location=device, weights_only=False)
    model = InfluencerProfiler(HeadConfig(**ckpt["head"])).to(device)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    with open(os.path.join(run, "config.json")) as f:
        config = json.load(f)
    return model, config
