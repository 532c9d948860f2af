"""Stores with planted features, written directly (no dataset, no encoder).

For tests and benchmarks of everything downstream of extraction: each post category has
a prototype direction in feature space; a post is its category's prototype plus noise; an
influencer's bag holds a minority of on-topic posts among distractors (`other` and
`product` posts, more varied than the rest, and a few posts of random other categories), so pooling has something to find.
"""
from __future__ import annotations

import numpy as np

from cache import schema
from cache.blocks import claim_fingerprint, commit_block
from cache.labels import assign_splits
from cache.store import create_features, create_labels, create_store, write_influencers


def planted_store(url: str, influencers: int = 64, posts: int = 40, *, seed: int = 0, block: int = 512,
                  on_topic: float = 0.3, noise: float = 1.0, label_posts: float = 0.2,
                  labelled_influencers: int | None = None, post_counts: np.ndarray | None = None,
                  write_features: bool = True, spread_labels: bool = False, fast_noise: bool = False,
                  offset: float = 0.0, scale: float = 1.0, missing: tuple[float, float] = (0.0, 0.0),
                  loud: float = 4.0) -> dict:
    """Create the store; returns the ground truth (post categories, dominant categories).

    `spread_labels`: the labelled influencers are spread evenly over the store (as in the
    release) instead of being the first ones. `fast_noise`: each block's noise is a random
    window of one pre-drawn pool instead of fresh draws (for full-scale benchmark stores,
    where drawing 18 G normals would dominate).

    Real encoders' statistics: `offset` adds a large common vector (every post shares it, as
    BERT's [CLS] and an Inception ReLU layer's features do: |N(0, offset)| per image feature,
    N(0, offset) per text feature), `scale` shrinks the informative part (prototype + noise),
    and `missing` = (image, text) is the share of posts whose image or caption is missing
    (status `no input`, as the release's videos and empty captions are). `on_topic` is one share
    for every influencer, or (low, high): each influencer's share drawn uniformly between them.
    `loud`: the distractors' noise as a multiple of `noise`.
    """
    rng = np.random.default_rng(seed)
    counts = post_counts if post_counts is not None else np.full(influencers, posts, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    dominant, post_cat = _categories(rng, counts, on_topic)
    store = create_store(url, "(planted)", block)
    _write_tables(store, rng, post_cat, counts, offsets, dominant)
    _plant_labels(store, rng, post_cat, dominant, labelled_influencers=labelled_influencers,
                  spread_labels=spread_labels, label_posts=label_posts, seed=seed)
    if write_features:
        _plant_features(store, rng, post_cat, seed, noise=noise, fast_noise=fast_noise, offset=offset, scale=scale,
                        missing=missing, loud=loud)
    return {"post_category": post_cat, "dominant": dominant, "offsets": offsets}


def _categories(rng, counts: np.ndarray, on_topic) -> tuple[np.ndarray, np.ndarray]:
    """Each influencer's dominant category, and each post's category: on topic, off topic, or a distractor."""
    influencers, n = len(counts), int(counts.sum())
    dominant = rng.permutation(np.arange(influencers) % len(schema.INFLUENCER_CATEGORIES))
    infl_to_post = np.array([schema.POST_CATEGORIES.index(c) for c in schema.INFLUENCER_CATEGORIES])
    post_cat = np.empty(n, dtype=np.int64)
    owner = np.repeat(np.arange(influencers), counts)
    r = rng.random(n)
    if not np.isscalar(on_topic):       # (low, high): a share per influencer
        on_topic = rng.uniform(on_topic[0], on_topic[1], influencers)[owner]
    on = r < on_topic
    sec = (r >= on_topic) & (r < on_topic + 0.1)
    post_cat[on] = infl_to_post[dominant[owner[on]]]
    post_cat[sec] = infl_to_post[rng.integers(0, len(infl_to_post), int(sec.sum()))]   # off-topic posts
    rest = ~(on | sec)
    post_cat[rest] = rng.choice([schema.POST_CATEGORIES.index("other"), schema.POST_CATEGORIES.index("product")],
                                size=int(rest.sum()))
    return dominant, post_cat


def _write_tables(store, rng, post_cat, counts, offsets, dominant) -> None:
    n, influencers = len(post_cat), len(counts)
    store["posts/id"].append(np.array([f"p{i}" for i in range(n)], dtype=object))
    store["posts/influencer"].append(np.repeat(np.arange(influencers), counts).astype(np.int32))
    store["posts/caption"].append(np.array([f"#{schema.POST_CATEGORIES[c]} post" for c in post_cat], dtype=object))
    store["posts/image"].append(np.array([""] * n, dtype=object))
    store["posts/timestamp"].append(np.arange(n, 0, -1, dtype=np.int64) + 1_500_000_000)
    store["posts/likes"].append(rng.integers(0, 1000, n).astype(np.int64))
    store["posts/comments"].append(rng.integers(0, 50, n).astype(np.int64))
    write_influencers(store, {
        "username": np.array([f"user.{j}" for j in range(influencers)], dtype=object),
        "offsets": offsets,
        "followers": rng.integers(1000, 10**6, influencers).astype(np.int64),
        "followees": rng.integers(10, 5000, influencers).astype(np.int64),
        "posts_total": counts.astype(np.int64),
        "release_category": dominant.astype(np.int8),
    })
    create_labels(store)
    create_features(store)


def _plant_labels(store, rng, post_cat, dominant, *, labelled_influencers, spread_labels, label_posts,
                  seed) -> None:
    """Influencer labels (their dominant category) and post labels (their category), split as `cache labels` does."""
    n, influencers = len(post_cat), len(dominant)
    n_lab = influencers if labelled_influencers is None else labelled_influencers
    lab = (np.unique(np.linspace(0, influencers - 1, n_lab).round().astype(np.int64)) if spread_labels and n_lab
           else np.arange(n_lab))
    il = np.full(influencers, -1, np.int8)
    il[lab] = dominant[lab]
    isplit = np.zeros(influencers, np.int8)
    isplit[lab] = assign_splits(il[lab], np.zeros(len(lab), np.int8), seed)
    store["influencers/label"][:] = il
    store["influencers/split"][:] = isplit
    labelled = np.flatnonzero(rng.random(n) < label_posts)
    pl = np.full(n, -1, np.int8)
    ps = np.zeros(n, np.int8)
    pl[labelled] = post_cat[labelled]
    ps[labelled] = assign_splits(post_cat[labelled], np.zeros(len(labelled), np.int8), seed)
    store["posts/label"][:] = pl
    store["posts/split"][:] = ps
    store.group.attrs.update(complete=True, release_categories=schema.RELEASE_CATEGORIES,
                             labels={"planted": {"seed": seed}})


def _plant_features(store, rng, post_cat, seed, *, noise, fast_noise, offset, scale, missing, loud) -> None:
    """Both modalities' features, block by block through the commit protocol (module docstring)."""
    n, n_cat, block = len(post_cat), len(schema.POST_CATEGORIES), store.block
    distractors = [schema.POST_CATEGORIES.index("other"), schema.POST_CATEGORIES.index("product")]
    protos = {m: rng.normal(0, 1, (n_cat, d)).astype(np.float32) for m, d in schema.MODALITIES.items()}
    pools = {m: rng.normal(0, 1, (block + 4093, d)).astype(np.float32) for m, d in schema.MODALITIES.items()} \
        if fast_noise else None
    common = {"image": np.abs(rng.normal(0, offset, schema.MODALITIES["image"])),
              "text": rng.normal(0, offset, schema.MODALITIES["text"])}
    absent = {m: rng.random(n) < share for m, share in zip(("image", "text"), missing)}
    for m, d in schema.MODALITIES.items():
        claim_fingerprint(store, m, {"kind": m, "model": "planted", "seed": seed})
        for b in range(store.n_blocks):
            rows = store.block_rows(b)
            cats = post_cat[rows]
            # `other` and `product` posts are the most varied on Instagram: their noise is
            # larger, so averaging them in drowns the on-topic signal; attention can learn to
            # look past them.
            noise_scale = np.where(np.isin(cats, distractors), loud * noise, noise).astype(np.float32)[:, None]
            if pools is not None:
                start = int(rng.integers(0, 4093))
                noise_rows = pools[m][start:start + len(cats)]
            else:
                noise_rows = rng.normal(0, 1, (len(cats), d)).astype(np.float32)
            x = common[m].astype(np.float32) + (protos[m][cats] + noise_rows * noise_scale) * scale
            if m == "image":
                x = np.maximum(x, 0)   # image features come out of a ReLU
            status = np.where(absent[m][rows], schema.Status.NO_INPUT, schema.Status.OK).astype(np.uint8)
            commit_block(store, m, b, np.where(status[:, None] == schema.Status.OK, x, 0).astype(np.float16),
                         status)
