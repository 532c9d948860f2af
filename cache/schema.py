"""Names and codes of the store (DESIGN.md, "The store"). One place, imported everywhere."""
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

# predictions/ (written by `heads predict` through cache.outputs): name -> (table it follows, dtype, fill)
PREDICTIONS = {
    "influencer_label": ("influencers", "int8", -1),
    "influencer_prob": ("influencers", "float32", float("nan")),
    "post_label": ("posts", "int8", -1),
    "post_prob": ("posts", "float16", float("nan")),
    "attention": ("posts", "float16", float("nan")),
}

# Every array a store may hold (DESIGN.md "The store", plus what was added since): path -> (rows, writer).
# N posts, M influencers, B blocks.
ARRAYS = {
    **{f"posts/{n}": ("N", "extract index") for n in POST_STR + ["influencer"] + POST_INT},
    "posts/label": ("N", "cache labels"), "posts/split": ("N", "cache labels"),
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
}
