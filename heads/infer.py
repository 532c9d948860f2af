"""Inference helpers shared by fit, eval, predict and ablate: batching bags, probabilities, loading a run."""
from __future__ import annotations

import numpy as np
import torch

from cache.runs import RunFolder
from heads.ensemble import ProfilerEnsemble, build_model
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
        logits = model.posts_logits(torch.from_numpy(x[s:s + batch_size].astype(np.float32)).to(device), p)
        out.append(torch.softmax(logits.float(), 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.n_post))


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (nan for no rows)."""
    if not len(y):
        return float("nan")
    return float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean())


def load_run(run: str | RunFolder, device: str = "cpu") -> tuple[InfluencerProfiler | ProfilerEnsemble, dict]:
    """The run's model and config.json, through the one validated reader (cache.runs): config.json's
    dimensions are checked before anything is allocated, model.pt is read weights-only and each tensor's
    shape is checked against a model built on the meta device (no memory) before the real one is."""
    folder = run if isinstance(run, RunFolder) else RunFolder.open(run)
    cfg = HeadConfig(**{k: folder.head[k] for k in HeadConfig.__dataclass_fields__ if k in folder.head})
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    state = folder.state_dict(expected, device, optional={"temperature": torch.ones(2)})
    for key in (k for k in state if k == "temperature" or k.endswith(".temperature")):
        if not bool((state[key] > 0).all()):        # every member's too: they divide the logits
            raise UserError(f"{folder.file('model.pt')}: {key} must be positive, got {state[key].tolist()}")
    model = build_model(cfg).to(device)
    model.load_state_dict(state)
    model.eval()
    return model, folder.config
