"""The command lines' fixed choices, as typer shows and checks them (`--precision [auto|fp32|bf16|fp16]`).

Each command passes `.value` (a plain string) to the library, so the library and the run files
never hold an Enum."""
from __future__ import annotations

from enum import Enum


class Precision(str, Enum):
    """Extraction: auto is bf16 on GPUs; on CPUs fp32, bf16 for text where the CPU has it (runtime.device.pick_precision: why)."""
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class HeadPrecision(str, Enum):
    """`heads fit`: fp32 by default (README: why); auto as for extraction."""
    fp32 = "fp32"
    bf16 = "bf16"
    auto = "auto"


class Decoder(str, Enum):
    pil = "pil"
    nvjpeg = "nvjpeg"


class DatasetFormat(str, Enum):
    release = "release"
    instaloader = "instaloader"
    jsonl = "jsonl"


class WeakLabels(str, Enum):
    posts = "posts"
    influencers = "influencers"


class InstanceLoss(str, Enum):
    """`heads fit --instance-loss`: weak post labels off, on, or auto (both trained, the better on validation)."""
    auto = "auto"
    on = "on"
    off = "off"


class Modality(str, Enum):
    both = "both"
    image = "image"
    text = "text"


class Pooling(str, Enum):
    attention = "attention"
    mean = "mean"


class Attention(str, Enum):
    paper = "paper"
    gated = "gated"


class Normalize(str, Enum):
    auto = "auto"
    feature = "feature"
    none = "none"
