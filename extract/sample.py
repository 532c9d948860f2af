"""`extract sample-data OUT`: a synthetic dataset in the exact release format (DATASET.md).

A fair stand-in for the real thing, small enough for a 2-core demo:
- each post category has its own visual pattern (hue, stripe angle and frequency, blobs)
  and its own caption vocabulary and hashtags;
- each influencer has a dominant category, but only 35–75 % of its posts are on topic
  (the rest are `other`, `product` or another category), so attention has something to find;
- captions run from empty or emoji-only to past BERT's 128-token limit, in several scripts;
- some posts are carousels (several images), some videos (a JPEG thumbnail);
- the bad inputs of the real release are planted (unless --clean): a malformed .info, a
  mapping row whose files are missing, duplicate mapping rows, an influencer with no posts,
  posts of an influencer not in influencers.txt, a missing #Posts, the `fasion` typo, a
  caption with no caption edge, a post with no mapping row;
- and the images the release can throw at an image job (PLANTED_IMAGES): CMYK, grayscale,
  palette-with-transparency and RGBA PNGs behind a .jpg name, 1×1 and 4000×60 images, a
  truncated JPEG, an empty file, a text file, a decompression bomb. labels/planted_images.csv
  says which post holds which and what status an image job must give it.
Everything is a function of --seed.
"""
from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
from PIL import Image

from cache.schema import INFLUENCER_CATEGORIES, POST_CATEGORIES
from extract import release
from runtime.errors import UserError

VOCAB = {
    "beauty": "makeup lipstick skincare glow foundation serum palette eyeliner mascara blush contour lashes "
              "highlighter concealer brows nails",
    "family": "kids mom dad family baby toddler daughter son parenting siblings grandma playtime bedtime "
              "homeschool motherhood",
    "fashion": "outfit style dress denim sneakers streetwear ootd jacket handbag runway trend boots "
               "vintage tailoring accessories",
    "fitness": "workout gym squat deadlift cardio protein gains training hiit abs running yoga sweat "
               "reps stretching",
    "food": "recipe delicious brunch pasta dessert chocolate homemade vegan baking pizza sushi dinner "
            "foodie tasty",
    "interior": "livingroom decor sofa plants shelf cozy minimalist kitchen design renovation rug lamp "
                "scandinavian walls",
    "other": "thoughts monday weekend random mood feelings throwback friends quote life music movie "
             "sunset coffee",
    "pet": "puppy dog cat kitten paws woof adopt fur walkies treats doggo meow rescue vet",
    "product": "giveaway discount code link bio shop sale launch collab sponsored unboxing review "
               "limited offer brand",
    "travel": "beach wanderlust passport island mountains hiking roadtrip hotel explore adventure "
              "sunrise backpacking flight ocean",
}
FILLER = "i you the a so my this today love just with and for of to in is new best what it".split()
SCRIPTS = ["오늘 너무 좋아요", "今日はとても楽しい", "привет друзья", "جميل جدا", "नमस्ते दोस्तों",
           "¡qué bonito día!", "très joli", "สวัสดีครับ"]
EMOJI = ["✨", "😍", "🔥", "💕", "🙌", "🌸", "😂", "👌", "🌍", "🍕", "🐶", "💪"]


def _pattern(cat: int, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A category's look: hue, stripe orientation and frequency, blob count; with noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = np.pi * cat / len(POST_CATEGORIES) + rng.normal(0, 0.08)
    freq = (0.03 + 0.012 * (cat % 5)) * (320.0 / max(h, w))
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    hue = cat / len(POST_CATEGORIES) + rng.normal(0, 0.02)
    base = 0.5 + 0.4 * np.cos(2 * np.pi * (hue + np.array([0.0, 1 / 3, 2 / 3])))
    img = base[None, None, :] * (0.55 + 0.45 * stripes[..., None])
    for _ in range(1 + cat % 4):   # blobs
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.08, 0.2) * min(h, w)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        img[mask] = 1.0 - img[mask] * 0.6
    img += rng.normal(0, 0.06, img.shape) + rng.normal(0, 0.05)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _caption(cat: str, rng: np.random.Generator) -> str | None:
    r = rng.random()
    if r < 0.03:
        return None                                    # no caption edge at all
    if r < 0.10:
        return ""
    if r < 0.15:
        return "".join(rng.choice(EMOJI, size=rng.integers(1, 6)))
    words = VOCAB[cat].split()
    if r < 0.20:
        n = int(rng.integers(150, 320))                # past the 128-token limit
    else:
        n = int(rng.geometric(0.08))
    topical = rng.random(n) < 0.35
    out = [str(rng.choice(words)) if t else str(rng.choice(FILLER)) for t in topical]
    if rng.random() < 0.15:
        out.insert(int(rng.integers(0, len(out) + 1)), str(rng.choice(SCRIPTS)))
    if rng.random() < 0.3:
        out.append(str(rng.choice(EMOJI)))
    tags = [f"#{rng.choice(words)}" for _ in range(int(rng.poisson(3) if rng.random() < 0.7 else 0))]
    if rng.random() < 0.2:
        tags.append(f"#{rng.choice(['instagood', 'photooftheday', 'love', 'nofilter'])}")
    return " ".join(out + tags)


def _username(i: int, rng: np.random.Generator) -> str:
    first = str(rng.choice(["anna", "ben", "chloe", "dan", "eva", "finn", "gia", "hugo", "iris", "jon"]))
    sep = str(rng.choice(["", ".", "_", "__", "._"]))
    return f"{first}{sep}{rng.choice(['daily', 'life', 'studio', 'official', 'x'])}{i}"


def _jpeg(arr: np.ndarray, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# kind -> the status an image job must give it ("ok" or "unreadable").
PLANTED_IMAGES = {
    "cmyk_jpeg": "ok", "grayscale_jpeg": "ok", "palette_alpha_png": "ok", "rgba_png": "ok",
    "progressive_jpeg": "ok", "tiny_1x1": "ok", "strip_4000x60": "ok",
    "truncated_jpeg": "unreadable", "empty_file": "unreadable", "text_file": "unreadable",
    "decompression_bomb": "unreadable",
}


def _bad_image(kind: str, rng: np.random.Generator, size: int) -> bytes:
    arr = _pattern(int(rng.integers(len(POST_CATEGORIES))), rng, size, size)
    buf = io.BytesIO()
    if kind == "cmyk_jpeg":
        Image.fromarray(arr).convert("CMYK").save(buf, format="JPEG", quality=90)
    elif kind == "grayscale_jpeg":
        Image.fromarray(arr).convert("L").save(buf, format="JPEG", quality=90)
    elif kind == "palette_alpha_png":
        img = Image.fromarray(arr).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        img.info["transparency"] = 0
        img.save(buf, format="PNG", transparency=0)
    elif kind == "rgba_png":
        alpha = (np.arange(size)[None, :].repeat(size, 0) * 255 // max(size - 1, 1)).astype(np.uint8)
        Image.fromarray(np.dstack([arr, alpha]), "RGBA").save(buf, format="PNG")
    elif kind == "progressive_jpeg":
        Image.fromarray(arr).save(buf, format="JPEG", quality=85, progressive=True)
    elif kind == "tiny_1x1":
        Image.fromarray(arr[:1, :1]).save(buf, format="JPEG")
    elif kind == "strip_4000x60":
        Image.fromarray(_pattern(1, rng, 60, 4000)).save(buf, format="JPEG")
    elif kind == "truncated_jpeg":
        data = _jpeg(arr)
        return data[: len(data) // 2]
    elif kind == "empty_file":
        return b""
    elif kind == "text_file":
        return b"<html><body>404 Not Found</body></html>\n"
    elif kind == "decompression_bomb":
        # A real one: a 1-bit PNG of 20000 x 20000 pixels (400 Mpx) that compresses to about 50 KB.
        import struct
        import zlib
        w = h = 20000
        raw = zlib.compress(b"".join(b"\x00" + bytes(w // 8) for _ in range(h)), 9)

        def chunk(tag: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    else:
        raise UserError(kind)
    return buf.getvalue()


def _media_node(post_id: str, user: str, owner_id: int, caption: str | None, ts: int, kind: str, *,
                size: tuple[int, int], rng: np.random.Generator, sponsor: bool = False) -> dict:
    likes = int(rng.lognormal(6, 1.5))
    comments = int(likes * rng.uniform(0.005, 0.05))
    return {
        "__typename": {"image": "GraphImage", "sidecar": "GraphSidecar", "video": "GraphVideo"}[kind],
        "id": post_id,
        "shortcode": f"B{int(post_id) % 10**10:010d}",
        "dimensions": {"height": size[0], "width": size[1]},
        "is_video": kind == "video",
        "edge_media_to_tagged_user": {"edges": [{"node": {"user": {"username": f"friend{int(rng.integers(99))}"}}}]
                                      if rng.random() < 0.2 else []},
        "edge_media_to_caption": {"edges": [] if caption is None else [{"node": {"text": caption}}]},
        "edge_media_to_parent_comment": {"count": comments},
        "edge_media_preview_comment": {"count": comments},
        "comments_disabled": False,
        "taken_at_timestamp": ts,
        "edge_media_preview_like": {"count": likes},
        "edge_media_to_sponsor_user": {"edges": [{"node": {"sponsor": {"username": "brand.co"}}}] if sponsor else []},
        "location": {"name": "Somewhere"} if rng.random() < 0.1 else None,
        "owner": {"id": str(owner_id), "username": user},
    }


class _Writer:
    """Writes posts (their .info, images and mapping row) in release format, drawing from one rng."""

    def __init__(self, out: str, rng: np.random.Generator, image_size: int):
        self.out, self.rng, self.image_size = out, rng, image_size
        self.mapping_rows: list[str] = []
        self.first_image: dict[str, str] = {}     # post id -> its first image file
        self.n_images = 0
        self.next_id = 1_700_000_000_000_000_000

    def post(self, user: str, owner: int, cat: str, ts: int, list_in_mapping: bool = True) -> str:
        rng, out, size = self.rng, self.out, self.image_size
        self.next_id += int(rng.integers(10**6, 10**9))
        post_id = str(self.next_id)
        kind = str(rng.choice(["image", "sidecar", "video"], p=[0.75, 0.17, 0.08]))
        h = w = size
        if rng.random() < 0.3:
            h = int(size * rng.choice([0.75, 1.25]))
        ids = ([post_id] if kind != "sidecar" else
               [str(self.next_id + 17 * k + 1) for k in range(int(rng.integers(2, 5)))])
        for k, image_id in enumerate(ids):
            # a carousel's later images are not always on topic
            icat = cat if k == 0 or rng.random() < 0.6 else str(rng.choice(POST_CATEGORIES))
            with open(os.path.join(out, release.IMAGE_DIR, f"{user}-{image_id}.jpg"), "wb") as f:
                f.write(_jpeg(_pattern(POST_CATEGORIES.index(icat), rng, h, w)))
            self.n_images += 1
        self.first_image[post_id] = os.path.join(out, release.IMAGE_DIR, f"{user}-{ids[0]}.jpg")
        # two in three `product` posts are paid partnerships (decided by the id: the rng's draws stay as they were)
        node = _media_node(post_id, user, owner, _caption(cat, rng), ts, kind, size=(h, w), rng=rng,
                           sponsor=cat == "product" and int(post_id) % 3 != 0)
        with open(os.path.join(out, release.INFO_DIR, f"{user}-{post_id}.info"), "w", encoding="utf-8") as f:
            json.dump(node, f, ensure_ascii=False)
        if list_in_mapping:
            self.mapping_rows.append(f"{user}\t{post_id}.info\t{[f'{i}.jpg' for i in ids]!r}")
        return post_id

    def last_post_id(self) -> str:
        return self.mapping_rows[-1].split("\t")[1].split(".")[0]


def _plant_edge_cases(w: _Writer, users: list[str], t0: int) -> list[str]:
    """What the real release holds and the index must survive; returns the unlisted influencers."""
    rng, out = w.rng, w.out
    # Posts of an influencer that influencers.txt does not list.
    ghost = "ghost.account_"
    for _ in range(3):
        w.post(ghost, 99_999, "other", t0 + int(rng.integers(0, 10**7)))
    first = users[0]
    # A malformed .info, listed in the mapping.
    w.post(first, 10_000, "other", t0 + 1)
    pid = w.last_post_id()
    with open(os.path.join(out, release.INFO_DIR, f"{first}-{pid}.info"), "w") as f:
        f.write('{"id": "' + pid + '", "edge_media_to_caption": {"edges": [')
    # A mapping row whose files do not exist; one whose image does not exist.
    w.mapping_rows.append(f"{first}\t1111111111111111111.info\t['1111111111111111111.jpg']")
    w.post(first, 10_000, "other", t0 + 2)
    pid = w.last_post_id()
    w.mapping_rows[-1] = f"{first}\t{pid}.info\t['2222222222222222222.jpg']"
    # Duplicate mapping rows.
    w.mapping_rows.append(w.mapping_rows[0])
    w.mapping_rows.append(w.mapping_rows[len(w.mapping_rows) // 2])
    # A post whose .info exists but which the mapping does not list.
    w.post(users[-1], 10_000 + len(users) - 1, "other", t0 + 3, list_in_mapping=False)
    # The bad images, as the first images of posts of the second influencer (or the first).
    owner = users[1 % len(users)]
    planted_posts = [pid for pid, path in w.first_image.items()
                     if os.path.basename(path).startswith(owner + "-")][:len(PLANTED_IMAGES)]
    planted = []
    for pid, kind in zip(planted_posts, PLANTED_IMAGES):
        with open(w.first_image[pid], "wb") as f:
            f.write(_bad_image(kind, rng, w.image_size))
        planted.append((pid, os.path.relpath(w.first_image[pid], out), kind, PLANTED_IMAGES[kind]))
    with open(os.path.join(out, "labels", "planted_images.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["post_id", "image", "kind", "expected"])
        writer.writerows(planted)
    return [ghost]


def _write_lists(w: _Writer, users: list[str], dominant: list[int], posts: int, clean: bool) -> None:
    """The mapping file and influencers.txt (whose categories, like the release's, are sometimes off)."""
    rng, out = w.rng, w.out
    with open(os.path.join(out, release.MAPPING_FILE), "w", encoding="utf-8") as f:
        f.write("influencer_name\tJSON_PostMetadata_file_name\tImage_file_name\n")
        f.write("\n".join(w.mapping_rows) + "\n")
    with open(os.path.join(out, release.INFLUENCERS_FILE), "w", encoding="utf-8") as f:
        f.write("Username\tCategory\t#Followers\t#Followees\t#Posts\n" + "=" * 50 + "\n")
        for i, user in enumerate(users):
            cat = INFLUENCER_CATEGORIES[dominant[i]]
            if rng.random() < 0.1:   # the release's categories come from a model: some are off
                cat = str(rng.choice(INFLUENCER_CATEGORIES + ["other"]))
            if not clean and i == 2:
                cat = "fasion"   # the real file's typo
            followers = int(rng.lognormal(10, 1.5)) + 1000
            n_posts = str(int(posts + rng.integers(0, 2000)))
            if not clean and i == 3:
                n_posts = ""
            f.write(f"{user}\t{cat}\t{followers}\t{int(rng.integers(50, 3000))}\t{n_posts}\n")
        if not clean:
            f.write("no_posts.here\tfood\t5000\t300\t120\n")  # listed, no posts


def _write_labels(out: str, users: list[str], dominant: list[int], post_labels: list[tuple[str, str]]) -> None:
    with open(os.path.join(out, "labels", "influencers.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["username", "category"])
        for i, user in enumerate(users):
            writer.writerow([user, INFLUENCER_CATEGORIES[dominant[i]]])
    with open(os.path.join(out, "labels", "posts.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["post_id", "category"])
        writer.writerows(post_labels)


def make_sample(out: str, influencers: int = 48, posts: int = 30, seed: int = 0, *,
                label_fraction: float = 0.4, image_size: int = 256, clean: bool = False) -> dict:
    """Write the dataset; returns counts of what was written."""
    if influencers < 1 or posts < 1:
        raise UserError("--influencers and --posts must be at least 1")
    if not 16 <= image_size <= 4096:
        raise UserError(f"--image-size must be 16..4096 pixels, got {image_size}")
    rng = np.random.default_rng(seed)
    for d in (release.INFO_DIR, release.IMAGE_DIR, "labels"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    users = [_username(i, rng) for i in range(influencers)]
    dominant = [i % len(INFLUENCER_CATEGORIES) for i in range(influencers)]
    rng.shuffle(dominant)
    w = _Writer(out, rng, image_size)
    post_labels: list[tuple[str, str]] = []
    t0 = 1_546_300_800  # 2019-01-01
    for i, user in enumerate(users):
        dom = INFLUENCER_CATEGORIES[dominant[i]]
        on_topic = rng.uniform(0.35, 0.75)
        n = max(1, int(posts * rng.uniform(0.8, 1.0))) if i % 7 else posts
        ts = t0 + int(rng.integers(0, 10**7))
        for _ in range(n):
            r = rng.random()
            if r < on_topic:
                cat = dom
            else:
                cat = str(rng.choice(["other", "product", str(rng.choice(POST_CATEGORIES))], p=[0.4, 0.3, 0.3]))
            ts += int(rng.integers(3600, 5 * 86400))
            pid = w.post(user, 10_000 + i, cat, ts)
            if rng.random() < label_fraction:
                post_labels.append((pid, cat))
    extra_users = [] if clean else _plant_edge_cases(w, users, t0)
    _write_lists(w, users, dominant, posts, clean)
    _write_labels(out, users, dominant, post_labels)
    return {"influencers": influencers + len(extra_users), "posts": len(w.mapping_rows), "images": w.n_images,
            "labelled_posts": len(post_labels)}
