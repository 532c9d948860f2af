"""The run folder of `heads fit`: what produced a run, its history as it goes, the model and its test outputs.

config.json (resolved options, git commit, store and encoder fingerprints) is written before
training; history.csv gets one line per evaluation round as training goes (as timm's
summary.csv does), so a killed or running fit can be read; model.pt, metrics.json,
report.md and test_predictions.csv are written at the end.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess

import torch

from cache import schema
from cache.store import Store


def write_json_atomic(path: str, obj: dict) -> None:
    """Write JSON under a temporary name and rename it: a killed run never leaves half a file."""
    tmp = f"{path}.partial"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


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


class RunFolder:
    def __init__(self, path: str):
        self.path = path
        os.makedirs(path, exist_ok=True)
        self._history = os.path.join(path, "history.csv")
        self._fields: list[str] | None = None
        if os.path.exists(self._history):
            os.remove(self._history)       # a previous run's history in the same folder is replaced, not extended

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_json(self, name: str, obj: dict) -> None:
        write_json_atomic(self.file(name), obj)

    def append_history(self, row: dict) -> None:
        """One line per evaluation round, flushed at once."""
        new = self._fields is None
        if new:
            self._fields = list(row)
        with open(self._history, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def save_model(self, model, head: dict, fit: dict, icats: list[str], pcats: list[str]) -> None:
        torch.save({"state_dict": model.state_dict(), "head": head, "fit": fit,
                    "influencer_categories": icats, "post_categories": pcats}, self.file("model.pt"))

    def write_test_predictions(self, store: Store, test: dict, probs, ptest: dict, post_probs) -> None:
        icats, pcats = store.influencer_categories, store.post_categories
        users = store["influencers/username"]
        with open(self.file("test_predictions.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["task", "row", "name", "true", "predicted", "probability"])
            for r, y, p in zip(test["rows"], test["y"], probs):
                w.writerow(["influencer", int(r), str(users[int(r)]), icats[y], icats[int(p.argmax())], f"{p.max():.6f}"])
            ids = store["posts/id"].oindex[ptest["rows"]] if len(ptest["rows"]) else []
            for r, pid, y, p in zip(ptest["rows"], ids, ptest["y"], post_probs):
                w.writerow(["post", int(r), str(pid), pcats[y], pcats[int(p.argmax())], f"{p.max():.6f}"])
