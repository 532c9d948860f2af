"""The labelled data of a fit: bags and labelled posts by split, the input normalisation, bag means."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cache import schema
from cache.labels import require_sound_labels
from cache.readers import load_bags, post_features_at
from cache.store import Store, StoreError

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Bags:
    """One split's labelled influencers: a (posts, features) array per bag, its (posts, halves) presence
    mask (which modality halves each post holds), the label codes, and the influencers' store rows."""
    bags: list[np.ndarray]
    masks: list[np.ndarray]
    y: np.ndarray
    rows: np.ndarray | None = None


@dataclass
class Posts:
    """One split's labelled posts: (posts, features), (posts, halves) presence, label codes, store rows."""
    x: np.ndarray
    present: np.ndarray
    y: np.ndarray
    rows: np.ndarray | None = None

    @classmethod
    def empty(cls, dim: int, halves: int = 1) -> "Posts":
        return cls(np.zeros((0, dim), np.float32), np.zeros((0, halves), bool), np.zeros(0, np.int64),
                   np.zeros(0, np.int64))


@dataclass
class Labelled:
    """What a fit trains, selects and scores on: bags and labelled posts by split (`test` and `posts_test`
    absent where nothing is scored, as in the estimator), and the labelled rows set aside as unusable."""
    train: Bags
    val: Bags
    posts_train: Posts
    posts_val: Posts
    test: Bags | None = None
    posts_test: Posts | None = None
    unusable: list[int] = field(default_factory=list)

    def count(self, posts: bool = False) -> int:
        parts = (self.posts_train, self.posts_val, self.posts_test) if posts else (self.train, self.val, self.test)
        return sum(len(p.y) for p in parts if p is not None)


def load_labelled(store: Store, modality: str) -> Labelled:
    """Labelled influencers' bags and labelled posts, by split; unusable bags set aside."""
    require_sound_labels(store)
    label, split = store["influencers/label"][:], store["influencers/split"][:]
    chosen = np.flatnonzero(label >= 0)
    if not len(chosen):
        raise StoreError(f"{store.url}: no labelled influencers; run `cache labels` first")
    bags, masks = load_bags(store, chosen, modality)      # masks: (posts, modalities) presence per bag
    usable = np.array([m.any() for m in masks], dtype=bool)
    parts: dict = {}
    for name in SPLIT_NAMES:
        keep = (split[chosen] == schema.SPLITS[name]) & usable
        parts[name] = Bags([bags[i] for i in np.flatnonzero(keep)], [masks[i] for i in np.flatnonzero(keep)],
                           label[chosen][keep].astype(np.int64), chosen[keep])
    plabel, psplit = store["posts/label"][:], store["posts/split"][:]
    for name in SPLIT_NAMES:
        rows = np.flatnonzero((plabel >= 0) & (psplit == schema.SPLITS[name]))
        x, present = post_features_at(store, rows, modality)
        ok = present.any(1)
        parts[f"posts_{name}"] = Posts(x[ok], present[ok], plabel[rows][ok].astype(np.int64), rows[ok])
    for name in ("train", "val"):
        if not len(parts[name].y):
            raise StoreError(f"{store.url}: no usable labelled influencers in the {name} split")
    return Labelled(**parts, unusable=[int(j) for j in chosen[~usable]])


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
