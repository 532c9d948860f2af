"""The labelled data of a fit: bags and labelled posts by split, the input normalisation, bag means."""
from __future__ import annotations

import numpy as np

from cache import schema
from cache.labels import require_sound_labels
from cache.readers import load_bags, post_features_at
from cache.store import Store, StoreError

SPLIT_NAMES = ("train", "val", "test")


def load_labelled(store: Store, modality: str) -> dict:
    """Labelled influencers' bags and labelled posts, by split; unusable bags set aside."""
    require_sound_labels(store)
    label, split = store["influencers/label"][:], store["influencers/split"][:]
    chosen = np.flatnonzero(label >= 0)
    if not len(chosen):
        raise StoreError(f"{store.url}: no labelled influencers; run `cache labels` first")
    bags, masks = load_bags(store, chosen, modality)      # masks: (posts, modalities) presence per bag
    usable = np.array([m.any() for m in masks], dtype=bool)
    data = {"unusable": [int(j) for j in chosen[~usable]]}
    for name in SPLIT_NAMES:
        keep = (split[chosen] == schema.SPLITS[name]) & usable
        data[name] = {"rows": chosen[keep], "y": label[chosen][keep].astype(np.int64),
                      "bags": [bags[i] for i in np.flatnonzero(keep)], "masks": [masks[i] for i in np.flatnonzero(keep)]}
    plabel, psplit = store["posts/label"][:], store["posts/split"][:]
    for name in SPLIT_NAMES:
        rows = np.flatnonzero((plabel >= 0) & (psplit == schema.SPLITS[name]))
        x, present = post_features_at(store, rows, modality)
        ok = present.any(1)
        data[f"posts_{name}"] = {"rows": rows[ok], "x": x[ok], "present": present[ok],
                                 "y": plabel[rows][ok].astype(np.int64)}
    for name in ("train", "val"):
        if not len(data[name]["y"]):
            raise StoreError(f"{store.url}: no usable labelled influencers in the {name} split")
    return data


def _present(x: np.ndarray, segments: tuple, present: np.ndarray | None) -> list[np.ndarray]:
    """Per segment, which rows hold that modality: the readers' `present` mask where given; without one
    (arrays built by hand), a half that is all zeros is taken for missing."""
    if present is not None:
        return [present[:, k] for k in range(len(segments))]
    out, start = [], 0
    for w in segments:
        out.append((x[:, start:start + w] != 0).any(axis=1))
        start += w
    return out


def input_scaling(bags: list[np.ndarray], segments: tuple,
                  presents: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each feature over the training posts whose half is present (float64 sums).

    A missing half (all zeros) is kept out of its modality's statistics: counting it would
    drag the mean towards zero by the missing share and inflate the std.
    """
    dim = sum(segments)
    total, sq, count = np.zeros(dim), np.zeros(dim), np.zeros(dim)
    for i, bag in enumerate(bags):
        x = bag.astype(np.float64)
        start = 0
        for w, present in zip(segments, _present(x, segments, presents[i] if presents is not None else None)):
            seg = x[present, start:start + w]
            total[start:start + w] += seg.sum(0)
            sq[start:start + w] += (seg ** 2).sum(0)
            count[start:start + w] += present.sum()
            start += w
    count = np.maximum(count, 1)
    mean = total / count
    var = np.maximum(sq / count - mean ** 2, 0)
    std = np.sqrt(var)
    return mean.astype(np.float32), np.where(std > 0, std, 1).astype(np.float32)


def bag_means(bags: list[np.ndarray], segments: tuple, presents: list[np.ndarray] | None = None) -> np.ndarray:
    """Per-influencer mean features, each modality averaged over the posts where it is present (0 if none)."""
    dim = sum(segments)
    out = np.zeros((len(bags), dim), np.float32)
    for i, bag in enumerate(bags):
        x = bag.astype(np.float32)
        start = 0
        for w, present in zip(segments, _present(x, segments, presents[i] if presents is not None else None)):
            if present.any():
                out[i, start:start + w] = x[present, start:start + w].mean(0)
            start += w
    return out
