"""Names and codes of the store (DESIGN.md, "The store"). One place, imported everywhere."""
import re
from enum import IntEnum

SCHEMA_VERSION = 1

# The paper's eight influencer categories and ten post categories (§4.2), in a fixed order:
# label arrays hold indices into these lists, and the lists are copied into the store's
# attributes so a store stays readable if they ever change here.
INFLUENCER_CATEGORIES = ["beauty", "family", "fashion", "fitness", "food", "interior", "pet", "travel"]
POST_CATEGORIES = ["beauty", "family", "fashion", "fitness", "food", "interior", "other", "pet", "product", "travel"]

# influencers.txt also uses "other", and the real file has a typo.
RELEASE_CATEGORY_FIXES = {"fasion": "fashion"}
RELEASE_CATEGORIES = INFLUENCER_CATEGORIES + ["other"]

SPLITS = {"none": 0, "train": 1, "val": 2, "test": 3}
SPLIT_NAMES = {v: k for k, v in SPLITS.items()}
# What `extract index` reads (extract.formats); the root attribute dataset_format names it (absent: release).
DATASET_FORMATS = ["release", "instaloader", "jsonl"]
# influencers/label_source: a hand label (CSV) or one drawn from influencers.txt (`--from-release`)
LABEL_SOURCES = {"none": 0, "hand": 1, "release": 2}


class Status(IntEnum):
    """Per-post, per-modality extraction status (features/{image,text}_status)."""
    PENDING = 0
    OK = 1
    NO_INPUT = 2
    UNREADABLE = 3


MODALITIES = {"image": 1024, "text": 768}
DEFAULT_BLOCK = 16384
FEATURE_CHUNK = 512       # rows per inner chunk; a block (Zarr shard) holds block/512 of them
TABLE_CHUNK = 65536       # rows per chunk of the posts/ tables

POST_STR = ["id", "caption", "image"]
POST_INT = ["timestamp", "likes", "comments"]
INFLUENCER_INT = ["followers", "followees", "posts_total"]
# posts/ columns `extract index` writes since they were added (stores indexed before lack them; readers
# take their absence as unknown): images in the post, and the encoded image's size and mtime (ns)
POST_EXTRA = ["media_count", "image_bytes", "image_mtime", "sponsored"]

# predictions/ (written by `heads predict` through cache.outputs): name -> (table it follows, dtype, fill)
PREDICTIONS = {
    "influencer_label": ("influencers", "int8", -1),
    "influencer_prob": ("influencers", "float32", float("nan")),
    "post_label": ("posts", "int8", -1),
    "post_prob": ("posts", "float16", float("nan")),
    "attention": ("posts", "float16", float("nan")),
}

# predictions/influencer_embedding (M, D) float16: h, the attention-pooled representation of every influencer
# (D: the run's hidden width, at most MAX_EMBEDDING; NaN where the influencer has no usable post)
EMBEDDING = "influencer_embedding"
MAX_EMBEDDING = 4096

# Where `heads predict` builds the next predictions in a local store before they replace predictions/
# (cache/outputs.py); never exported, never part of a finished store.
PREDICTIONS_PARTIAL = "predictions_partial"
TRANSIENT_GROUPS = (PREDICTIONS_PARTIAL, "predictions.replaced")

# Every array a store may hold (DESIGN.md "The store", plus what was added since): path -> (rows, writer).
# N posts, M influencers, B blocks.
ARRAYS = {
    **{f"posts/{n}": ("N", "extract index") for n in POST_STR + ["influencer"] + POST_INT},
    "posts/label": ("N", "cache labels"), "posts/split": ("N", "cache labels"),
    "posts/media_count": ("N", "extract index: images (or video thumbnails) the post has; the first is encoded "
                               "(0 unknown; stores indexed before it was stored lack the array)"),
    "posts/image_bytes": ("N", "extract index: the image file's size (-1 none), for `extract index --update`"),
    "posts/image_mtime": ("N", "extract index: the image file's modification time in ns (-1 none)"),
    "posts/sponsored": ("N", "extract index: paid content 1, not 0, unknown -1 (extract.reading.sponsored_flag)"),
    **{f"influencers/{n}": ("M", "extract index") for n in ["username"] + INFLUENCER_INT},
    "influencers/offsets": ("M+1", "extract index"),
    "influencers/release_category": ("M", "extract index: influencers.txt's category, an index into the root "
                                          "attribute release_categories (-1 none)"),
    "influencers/label": ("M", "cache labels"), "influencers/split": ("M", "cache labels"),
    "influencers/label_source": ("M", "cache labels: LABEL_SOURCES"),
    **{f"features/{m}": ("N", "extract images / extract text") for m in MODALITIES},
    **{f"features/{m}_status": ("N", "shard jobs: Status") for m in MODALITIES},
    **{f"features/{m}_done": ("B", "shard jobs") for m in MODALITIES},
    **{f"problems/{k}": ("problems", "extract index, shard jobs") for k in ("kind", "where", "detail")},
    **{f"predictions/{n}": ("M" if t == "influencers" else "N", "heads predict") for n, (t, _, _) in
       PREDICTIONS.items()},
    f"predictions/{EMBEDDING}": ("M", "heads predict: (M, D) h of every influencer, for `heads similar`"),
}

# The dtype of every array ("str": a UTF-8 string table). `cache import` checks a foreign file against it.
DTYPES = {
    **{f"posts/{n}": "str" for n in POST_STR}, "posts/influencer": "int32",
    **{f"posts/{n}": "int64" for n in POST_INT}, "posts/label": "int8", "posts/split": "int8",
    "posts/media_count": "int32", "posts/image_bytes": "int64", "posts/image_mtime": "int64",
    "posts/sponsored": "int8",
    "influencers/username": "str", **{f"influencers/{n}": "int64" for n in INFLUENCER_INT},
    "influencers/offsets": "int64", "influencers/release_category": "int8", "influencers/label": "int8",
    "influencers/split": "int8", "influencers/label_source": "int8",
    **{f"features/{m}": "float16" for m in MODALITIES}, **{f"features/{m}_status": "uint8" for m in MODALITIES},
    **{f"features/{m}_done": "bool" for m in MODALITIES},
    **{f"problems/{k}": "str" for k in ("kind", "where", "detail")},
    **{f"predictions/{n}": dtype for n, (_, dtype, _) in PREDICTIONS.items()},
    f"predictions/{EMBEDDING}": "float16",
}
# Arrays every finished store holds (the rest come with labels, features or predictions).
REQUIRED = [f"posts/{n}" for n in POST_STR + ["influencer"] + POST_INT] + \
    [f"influencers/{n}" for n in ["username", "offsets"] + INFLUENCER_INT]
MAX_BLOCK = 1 << 16        # rows per block a store may declare (a shard of image features: 128 MiB)
MAX_ID = 256               # characters of a post id or a username


_NOT_IN_A_NAME = re.compile("[\x00-\x1f/\\\\\ud800-\udfff]")     # control characters, separators, lone surrogates


def valid_name(name: str) -> bool:
    """A post id or username that may become part of a path or a file name: one plain path component
    of valid UTF-8, no control characters (`extract index` and `cache import` apply the same rule)."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_ID and name not in (".", "..")
            and _NOT_IN_A_NAME.search(name) is None)


def valid_image_path(rel: str) -> bool:
    """posts/image: empty (no image) or a relative path below the dataset root, no '..' or absolute part."""
    if rel == "":
        return True
    parts = rel.replace("\\", "/").split("/")
    return (not rel.startswith(("/", "\\")) and ":" not in parts[0] and len(rel) <= 4096
            and all(valid_name(p) for p in parts))
