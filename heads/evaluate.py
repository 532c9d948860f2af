"""`heads eval RUN`: test accuracy against the number of posts per influencer (paper Figure 5a)."""
from __future__ import annotations

import csv
import os

import numpy as np

from cache.readers import load_bags
from cache.schema import SPLITS
from cache.store import open_store
from heads.infer import load_run, predict_bags
from runtime.files import atomic_write


def posts_curve(run: str, counts: list[int], *, seed: int = 0, store_url: str | None = None,
                device: str = "cpu") -> list[dict]:
    """For each k, k posts drawn at random (seeded) from each test influencer's bag."""
    model, config = load_run(run, device)
    store = open_store(store_url or config["store"]["url"])
    modality = config["fit"]["modality"]
    label, split = store["influencers/label"][:], store["influencers/split"][:]
    test = np.flatnonzero((label >= 0) & (split == SPLITS["test"]))
    bags, masks = load_bags(store, test, modality)
    keep = [i for i, m in enumerate(masks) if m.any()]
    y = label[test][keep]
    rows = []
    for k in counts:
        rng = np.random.default_rng(seed)
        sb, sm = [], []
        for i in keep:
            usable = np.flatnonzero(masks[i].any(1))
            pick = np.sort(rng.choice(usable, size=min(k, len(usable)), replace=False))
            sb.append(bags[i][pick])
            sm.append(masks[i][pick])
        probs, _ = predict_bags(model, sb, sm, device)
        rows.append({"posts": k, "influencers": len(y), "accuracy": float((probs.argmax(1) == y).mean())})
    with atomic_write(os.path.join(run, "posts_curve.csv"), newline="") as f:
        w = csv.DictWriter(f, fieldnames=["posts", "influencers", "accuracy"])
        w.writeheader()
        w.writerows(rows)
    return rows
