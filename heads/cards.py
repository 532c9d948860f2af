"""The report's cards: the most confident influencers with the posts they attended to most, and the
posts the post head is surest of, with thumbnails made from the dataset's own images.

Cards read only the rows of the posts they show (and each shown influencer's attention weights,
to find its top posts); the post examples take one chunked pass over the post predictions."""
from __future__ import annotations

import os

import numpy as np

from cache import schema

THUMB = 160
TOP_POSTS = 3
CHUNK = schema.TABLE_CHUNK * 4


def thumbnail(root: str, rel: str, out: str, name: str) -> str | None:
    """A ~160 px JPEG of the dataset's image in OUT/assets/thumbs/NAME.jpg (NAME chosen by the caller from a
    row number, never from data); None when it cannot be read or lies outside the dataset."""
    from PIL import Image

    from runtime.files import atomic_write, dataset_file, inside
    path = dataset_file(root, rel) if schema.valid_image_path(rel) else None
    if path is None or not os.path.isfile(path):
        return None
    dest = f"assets/thumbs/{name}.jpg"
    target = inside(os.path.join(out, dest), out)
    try:
        with Image.open(path) as im:
            im.draft("RGB", (THUMB, THUMB))
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            with atomic_write(target, "wb") as f:
                im.save(f, "JPEG", quality=80)
    except Exception:      # a corrupt or hostile image gets a placeholder, never a broken report
        return None
    return dest


def _post_details(store, rows: np.ndarray) -> list[dict]:
    if not len(rows):
        return []
    rows = np.asarray(rows, np.int64)
    ids = store["posts/id"].get_orthogonal_selection((rows,))
    caps = store["posts/caption"].get_orthogonal_selection((rows,))
    imgs = store["posts/image"].get_orthogonal_selection((rows,))
    return [{"row": int(r), "id": str(i), "caption": str(c), "image": str(p)} for r, i, c, p in zip(rows, ids, caps, imgs)]


def influencer_cards(store, pred: dict, per_category: int) -> dict[str, list[dict]]:
    """Per category, the most confident influencers and their TOP_POSTS most attended posts."""
    icats = store.influencer_categories
    offsets = store.offsets()
    attention = store["predictions/attention"]
    users = store["influencers/username"]
    out = {}
    for c, name in enumerate(icats):
        idx = np.flatnonzero(pred["label"] == c)
        idx = idx[np.argsort(-pred["prob"][idx], kind="stable")][:per_category]
        cards = []
        for j in idx.tolist():
            a, b = int(offsets[j]), int(offsets[j + 1])
            w = attention[a:b].astype(np.float32)
            top = np.argsort(-np.nan_to_num(w, nan=-1.0), kind="stable")[:TOP_POSTS]
            top = top[~np.isnan(w[top])]
            posts = _post_details(store, a + top)
            for p, t in zip(posts, top):
                p["weight"] = float(w[t])
            cards.append({"row": j, "username": str(users[j]), "probability": float(pred["prob"][j]),
                          "posts": posts})
        out[name] = cards
    return out


def post_examples(store, k: int) -> dict[str, list[dict]] | None:
    """Per post category, the k posts the post head is surest of (a chunked pass over the predictions)."""
    if "predictions/post_label" not in store:
        return None
    pcats = store.post_categories
    best: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    label_arr, prob_arr = store["predictions/post_label"], store["predictions/post_prob"]
    any_label = False
    for start in range(0, store.n_posts, CHUNK):
        lab = label_arr[start:start + CHUNK]
        prob = prob_arr[start:start + CHUNK].astype(np.float32)
        for c in np.unique(lab[lab >= 0]).tolist():
            any_label = True
            idx = np.flatnonzero(lab == c)
            top = idx[np.argsort(-prob[idx], kind="stable")[:k]]
            rows, probs = best.get(c, (np.zeros(0, np.int64), np.zeros(0, np.float32)))
            rows, probs = np.concatenate([rows, start + top]), np.concatenate([probs, prob[top]])
            keep = np.argsort(-probs, kind="stable")[:k]
            best[c] = (rows[keep], probs[keep])
    if not any_label:
        return None
    out = {}
    for c, (rows, probs) in sorted(best.items()):
        posts = _post_details(store, rows)
        for p, q in zip(posts, probs):
            p["probability"] = float(q)
        out[pcats[c]] = posts
    return out
