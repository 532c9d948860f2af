"""`heads fit`: train on the train split, select on validation, score on test; write a run folder.

The run folder holds everything needed to know later what produced its numbers:
config.json (resolved options, git commit, store and encoder fingerprints), model.pt,
history.csv (one line per epoch), metrics.json, report.md, test_predictions.csv.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from cache import schema
from cache.hardware import cpu_has_bf16
from cache.readers import MODALITY_SETS, feature_dim, load_bags, post_features_at, require_features
from cache.store import Store, StoreError, open_store
from heads.metrics import classification_metrics
from heads.model import HeadConfig, InfluencerProfiler, multitask_loss


@dataclass
class FitConfig:
    modality: str = "both"
    pooling: str = "attention"
    aux_weight: float = 1.0
    epochs: int = 30
    batch_size: int = 32
    aux_batch: int = 256
    lr: float = 1e-3              # paper §5.1
    dropout: float = 0.5          # paper §5.1
    standardize: bool = False     # per-feature scaling fitted on train posts (not in the paper)
    precision: str = "auto"       # bf16 autocast on GPUs and bf16-capable CPUs (2x the fp32 matmul rate), else fp32
    seed: int = 0
    device: str = "auto"


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def store_fingerprint(store: Store) -> dict:
    enc = {m: store[f"features/{m}"].attrs.get("encoder") for m in schema.MODALITIES if store.has_features(m)}
    return {"url": store.location,
            "posts": store.n_posts, "influencers": store.n_influencers,
            "index": store.attrs.get("index_stats"), "labels": store.attrs.get("labels"), "encoders": enc}


def resolve_device(device: str) -> str:
    """'auto' is CUDA where there is one, else the CPU; any other name is taken as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pad_batch(bags, masks, idx, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(bags[i]) for i in idx))
    dim = bags[idx[0]].shape[1]
    # padded in the bags' own dtype (float16 from the store); torch widens to float32 far faster than numpy
    x = np.zeros((len(idx), width, dim), dtype=bags[idx[0]].dtype)
    m = np.zeros((len(idx), width), dtype=bool)
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
        w = out["weights"].cpu().numpy()
        weights += [w[k, :len(bags[i])] for k, i in enumerate(idx)]
    return (np.concatenate(probs) if probs else np.zeros((0, model.cfg.n_influencer))), weights


@torch.no_grad()
def predict_posts(model, x: np.ndarray, device, batch_size=4096) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(x), batch_size):
        v = model.encode_posts(torch.from_numpy(x[s:s + batch_size].astype(np.float32)).to(device))
        out.append(torch.softmax(model.post_logits(v).float(), 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.n_post))


def input_scaling(train: dict, segments: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each feature over the training posts whose half is present (float64 sums)."""
    dim = sum(segments)
    total, sq, count = np.zeros(dim), np.zeros(dim), np.zeros(dim)
    for bag in train["bags"]:
        x = bag.astype(np.float64)
        start = 0
        for w in segments:
            seg = x[:, start:start + w]
            present = (seg != 0).any(axis=1)
            total[start:start + w] += seg[present].sum(0)
            sq[start:start + w] += (seg[present] ** 2).sum(0)
            count[start:start + w] += present.sum()
            start += w
    count = np.maximum(count, 1)
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean ** 2, 0))
    return mean.astype(np.float32), np.where(std > 0, std, 1).astype(np.float32)


def load_labelled(store: Store, modality: str):
    """Labelled influencers' bags and labelled posts, by split; unusable bags set aside."""
    label, split = store["influencers/label"][:], store["influencers/split"][:]
    chosen = np.flatnonzero(label >= 0)
    if not len(chosen):
        raise StoreError(f"{store.url}: no labelled influencers; run `cache labels` first")
    bags, masks = load_bags(store, chosen, modality)
    usable = np.array([m.any() for m in masks], dtype=bool)
    data = {"unusable": [int(j) for j in chosen[~usable]]}
    for name, code in (("train", 1), ("val", 2), ("test", 3)):
        keep = (split[chosen] == code) & usable
        data[name] = {"rows": chosen[keep], "y": label[chosen][keep].astype(np.int64),
                      "bags": [bags[i] for i in np.flatnonzero(keep)], "masks": [masks[i] for i in np.flatnonzero(keep)]}
    plabel, psplit = store["posts/label"][:], store["posts/split"][:]
    for name, code in (("train", 1), ("val", 2), ("test", 3)):
        rows = np.flatnonzero((plabel >= 0) & (psplit == code))
        x, ok = post_features_at(store, rows, modality)
        data[f"posts_{name}"] = {"rows": rows[ok], "x": x[ok], "y": plabel[rows][ok].astype(np.int64)}
    for name in ("train", "val"):
        if not len(data[name]["y"]):
            raise StoreError(f"{store.url}: no usable labelled influencers in the {name} split")
    return data


def fit(url: str, out: str, cfg: FitConfig, log=print) -> dict:
    if cfg.modality not in ("both", "image", "text"):
        raise ValueError(f"--modality must be both, image or text, got {cfg.modality!r}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(resolve_device(cfg.device))
    store = open_store(url)
    require_features(store, cfg.modality)
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    data = load_labelled(store, cfg.modality)
    log(f"loaded {sum(len(data[s]['y']) for s in ('train', 'val', 'test'))} labelled influencers and "
        f"{sum(len(data['posts_' + s]['y']) for s in ('train', 'val', 'test'))} labelled posts "
        f"in {time.perf_counter() - t0:.1f}s" + (f"; {len(data['unusable'])} bags with no usable post set aside"
                                                 if data["unusable"] else ""))
    head = HeadConfig(in_dim=feature_dim(cfg.modality), pooling=cfg.pooling, dropout=cfg.dropout,
                      n_influencer=len(store.influencer_categories), n_post=len(store.post_categories),
                      segments=tuple(schema.MODALITIES[m] for m in MODALITY_SETS[cfg.modality]))
    model = InfluencerProfiler(head).to(device)
    if cfg.standardize:
        model.set_input_scaling(*[torch.from_numpy(v).to(device) for v in input_scaling(data["train"], head.segments)])
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    config = {"fit": asdict(cfg), "model": head.to_dict(), "store": store_fingerprint(store), "git_commit": git_commit(),
              "command": " ".join(sys.argv), "influencer_categories": store.influencer_categories,
              "post_categories": store.post_categories, "torch": torch.__version__, "device": str(device)}
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--precision must be auto, fp32 or bf16, got {cfg.precision!r}")
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and (device.type == "cuda" or cpu_has_bf16()))
    config["precision"] = "bf16" if use_bf16 else "fp32"
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)

    train, val = data["train"], data["val"]
    ptrain = data["posts_train"]
    best, best_key, history = None, None, []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t = time.perf_counter()
        order = rng.permutation(len(train["y"]))
        sums = {"loss": 0.0, "main": 0.0, "aux": 0.0}
        steps = 0
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            x, m = pad_batch(train["bags"], train["masks"], idx, device)
            post_logits = post_y = None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out_ = model(x, m, posts=False)   # the aux loss uses its own batch of labelled posts
                if cfg.aux_weight > 0 and len(ptrain["y"]):
                    pick = rng.integers(0, len(ptrain["y"]), size=min(cfg.aux_batch, len(ptrain["y"])))
                    px = torch.from_numpy(ptrain["x"][pick].astype(np.float32)).to(device)
                    post_logits = model.post_logits(model.encode_posts(px))
                    post_y = torch.from_numpy(ptrain["y"][pick]).to(device)
            loss, parts = multitask_loss(out_, torch.from_numpy(train["y"][idx]).to(device), post_logits, post_y,
                                         cfg.aux_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sums["loss"] += loss.item()
            sums["main"] += parts["main"]
            sums["aux"] += parts["aux"]
            steps += 1
        probs, _ = predict_bags(model, val["bags"], val["masks"], device)
        val_acc = float((probs.argmax(1) == val["y"]).mean())
        val_loss = float(-np.log(probs[np.arange(len(val["y"])), val["y"]] + 1e-12).mean())
        pval = data["posts_val"]
        post_acc = float((predict_posts(model, pval["x"], device).argmax(1) == pval["y"]).mean()) if len(pval["y"]) else float("nan")
        row = {"epoch": epoch, "loss": sums["loss"] / steps, "main": sums["main"] / steps, "aux": sums["aux"] / steps,
               "val_acc": val_acc, "val_loss": val_loss, "val_post_acc": post_acc, "seconds": time.perf_counter() - t}
        history.append(row)
        log(f"epoch {epoch:3d} loss {row['loss']:.4f} (main {row['main']:.4f} aux {row['aux']:.4f}) "
            f"val acc {val_acc:.4f} loss {val_loss:.4f} post acc {post_acc:.4f} {row['seconds']:.1f}s")
        key = (val_acc, -val_loss)
        if best_key is None or key > best_key:
            best_key, best = key, (epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[1])
    with open(os.path.join(out, "history.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    torch.save({"state_dict": model.state_dict(), "head": head.to_dict(), "fit": asdict(cfg),
                "influencer_categories": store.influencer_categories, "post_categories": store.post_categories},
               os.path.join(out, "model.pt"))

    test, ptest = data["test"], data["posts_test"]
    probs, _ = predict_bags(model, test["bags"], test["masks"], device)
    post_probs = predict_posts(model, ptest["x"], device)
    metrics = {
        "best_epoch": best[0], "val_acc": best_key[0],
        "influencer": classification_metrics(test["y"], probs.argmax(1), store.influencer_categories),
        "post": classification_metrics(ptest["y"], post_probs.argmax(1), store.post_categories),
        "unusable_bags": data["unusable"], "seconds": time.perf_counter() - t0,
    }
    users = store["influencers/username"]
    with open(os.path.join(out, "test_predictions.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "row", "name", "true", "predicted", "probability"])
        for r, y, p in zip(test["rows"], test["y"], probs):
            w.writerow(["influencer", int(r), str(users[int(r)]), store.influencer_categories[y],
                        store.influencer_categories[int(p.argmax())], f"{p.max():.6f}"])
        ids = store["posts/id"].oindex[ptest["rows"]] if len(ptest["rows"]) else []
        for r, pid, y, p in zip(ptest["rows"], ids, ptest["y"], post_probs):
            w.writerow(["post", int(r), str(pid), store.post_categories[y], store.post_categories[int(p.argmax())],
                        f"{p.max():.6f}"])
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    from heads.report import write_report
    write_report(out, config, metrics)
    return metrics


def load_run(run: str, device: str = "cpu") -> tuple[InfluencerProfiler, dict]:
    path = os.path.join(run, "model.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not a `heads fit` run folder")
    ckpt = torch.load(path, map_location=device, weights_only=False)
    model = InfluencerProfiler(HeadConfig(**ckpt["head"])).to(device)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    with open(os.path.join(run, "config.json")) as f:
        config = json.load(f)
    return model, config
