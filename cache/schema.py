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
