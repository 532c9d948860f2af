"""The run folder of `heads fit`, written: whole or absent (the one reader is cache.runs.RunFolder).

The run is built in a temporary folder beside the final one (`OUT.partial/`): config.json
(resolved options, git commit, store and encoder fingerprints) first, history.csv one line per
evaluation round as training goes (as timm's summary.csv does, so a running or killed fit can be
read there), then model.pt, metrics.json, report.md and test_predictions.csv. `commit()` swaps it
in for OUT only once everything is written; a kill or a full disk before that leaves OUT as it was
(a finished earlier run, or nothing), never a mix of two runs. A finished run is replaced only with
`--overwrite`, and a folder that is not a run folder is never replaced.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess

import torch

from cache import schema
from cache.store import Store
from heads.data import Bags, Posts
from runtime.errors import UserError
from runtime.files import atomic_write, csv_rows, swap_folder, write_json


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


def check_run_target(out: str, overwrite: bool) -> None:
    """Refuse, before anything is read or written, an OUT that holds something `heads fit` must not replace."""
    if os.path.isfile(out) or (os.path.lexists(out) and not os.path.isdir(out)):
        raise UserError(f"{out}: exists and is not a folder; choose another --out (nothing was written)")
    if not os.path.isdir(out) or not os.listdir(out):
        return
    if not os.path.isfile(os.path.join(out, "config.json")):
        raise UserError(f"{out}: not empty and not a run folder; choose another --out (nothing was written)")
    if not overwrite:
        raise UserError(f"{out} holds a run already; pass --overwrite to replace it (nothing was written)")


class RunWriter:
    """Builds the run in OUT.partial/ and swaps it in at `commit()`."""

    def __init__(self, out: str, overwrite: bool = False):
        check_run_target(out, overwrite)
        self.out = out.rstrip(os.sep) or out
        self.path = f"{self.out}.partial"
        if os.path.isdir(self.path):
            shutil.rmtree(self.path)            # a killed fit's leftovers: never part of a run
        os.makedirs(self.path)
        self._history = os.path.join(self.path, "history.csv")
        self._fields: list[str] | None = None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_json(self, name: str, obj: dict) -> None:
        write_json(self.file(name), obj)

    def commit(self) -> None:
        """OUT becomes this run: the old run (if any) is moved aside, the new one renamed in, the old removed."""
        swap_folder(self.path, self.out)
        self.path = self.out
        self._history = os.path.join(self.out, "history.csv")

    def append_history(self, row: dict) -> None:
        """One line per evaluation round, flushed at once."""
        new = self._fields is None
        if new:
            self._fields = list(row)
        with open(self._history, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=self._fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def save_model(self, model) -> None:
        """model.pt holds the weights only (tensors, read back weights-only); what they are is config.json's."""
        with atomic_write(self.file("model.pt"), "wb") as f:
            torch.save({"state_dict": model.state_dict()}, f)

    def write_test_predictions(self, store: Store, test: Bags, probs, ptest: Posts, post_probs) -> None:
        icats, pcats = store.influencer_categories, store.post_categories
        users = store["influencers/username"]
        ids = store["posts/id"].oindex[ptest.rows] if len(ptest.rows) else []
        rows = ([["influencer", int(r), str(users[int(r)]), icats[y], icats[int(p.argmax())], f"{p.max():.6f}"]
                 for r, y, p in zip(test.rows, test.y, probs)]
                + [["post", int(r), str(pid), pcats[y], pcats[int(p.argmax())], f"{p.max():.6f}"]
                   for r, pid, y, p in zip(ptest.rows, ids, ptest.y, post_probs)])
        with atomic_write(self.file("test_predictions.csv"), newline="") as f:
            w = csv.writer(f)
            w.writerow(["task", "row", "name", "true", "predicted", "probability"])
            w.writerows(csv_rows(rows))
