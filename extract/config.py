"""`extract finetune-images`' options (FinetuneConfig): light to import (no torch), so the command line builds
its options from the fields (runtime.options: each field's default, help and bounds)."""
from __future__ import annotations

from dataclasses import dataclass

from runtime.choices import Precision, WeakLabels
from runtime.options import check_options, option


@dataclass
class FinetuneConfig:
    weights: str = option("imagenet", "imagenet (torchvision's), PATH to torchvision's inception_v3 .pth or to an "
                          "encoder file, or 'random'")
    trainable_blocks: int = option(2, "top inception blocks trained (0: only the new layers, the paper's "
                                   "no-fine-tuning ablation)", low=0, high=11)
    epochs: int = option(10, "training epochs (the best on validation is kept)", low=1, high=10**6)
    batch_size: int = option(32, "images per step", low=1, high=1 << 16)
    lr: float = option(1e-3, "Adam learning rate (the paper's 1e-3)", low=0.0, high=10.0, low_allowed=False)
    dropout: float = option(0.5, "dropout before the classifier", low=0.0, high=0.999)
    image_size: int = option(299, "network input side; smaller is faster, for smoke runs", low=75, high=4096)
    augment: bool = option(True, "rotation, shift, flip, zoom, channel shift")
    workers: int | None = option(None, "decoding processes (default: cores, at most 8)", low=0, high=1024)
    device: str = option("auto", "auto, cpu or cuda")
    precision: Precision = option("auto", "auto: bf16 where the hardware has it")
    seed: int = option(0, "seed of the split sampling, the initialisation and the augmentation")
    dataset: str | None = option(None, "dataset root, if it moved since `extract index`")
    labels: WeakLabels = option("posts", "posts: hand-labelled posts; influencers: weak labels, posts of labelled "
                                "influencers labelled with their owner's category")
    posts_per_influencer: int = option(20, "--labels influencers: posts sampled per influencer (then "
                                       "class-balanced)", low=1, high=10**6)

    def __post_init__(self):
        check_options(self)
