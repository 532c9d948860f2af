"""The paper's image model (§3.3, §5.1): torchvision's Inception-v3, global average pooling and a
1024-unit ReLU layer (the image feature), with only the top inception blocks trainable, and the
loader of torchvision's ImageNet weights."""
from __future__ import annotations

import os

import torch
from torch import nn

from cache.schema import MODALITIES
from runtime.errors import EncoderLoadError, UserError

# the encoder file's format tag (extract.encoder_file); here because an encoder file can seed a backbone
FORMAT = "influencer-profiler/image-encoder/1"
DIM = MODALITIES["image"]                       # 1024
MIXED = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
         "Mixed_7a", "Mixed_7b", "Mixed_7c"]    # torchvision's inception blocks, bottom to top
# torchvision Inception3.forward's order up to the pooling (AuxLogits only matters in training).
TRUNK = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
         "maxpool2"] + MIXED
IMAGENET_FILE = "inception_v3_google-0cc3c7bd.pth"   # torchvision's file for IMAGENET1K_V1

class ImageEncoder(nn.Module):
    """torchvision's Inception-v3 trunk (its fc replaced by the identity), then the paper's layers:
    Linear 2048→1024 + ReLU (the image feature), dropout 0.5 and the post classifier (training only).

    `backbone(x)` is torchvision's own forward and returns the pooled 2048-d vector; `features`
    runs the same layers split at the trainable blocks, so the frozen stem can run without
    gradients.
    """

    def __init__(self, n_classes: int, trainable_blocks: int = 2, transform_input: bool = False,
                 dropout: float = 0.5, init_weights: bool = True):
        super().__init__()
        from torchvision.models import inception_v3
        if not 0 <= trainable_blocks <= len(MIXED):
            raise UserError(f"--trainable-blocks must be between 0 and {len(MIXED)}, got {trainable_blocks}")
        self.backbone = inception_v3(weights=None, aux_logits=False, transform_input=transform_input,
                                     init_weights=init_weights)
        self.backbone.fc = nn.Identity()
        self.proj = nn.Linear(2048, DIM)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(DIM, n_classes)
        self.trainable_blocks = trainable_blocks
        n_frozen = len(TRUNK) - trainable_blocks
        self.frozen_names, self.trainable_names = TRUNK[:n_frozen], TRUNK[n_frozen:]
        for name in self.frozen_names:
            for p in getattr(self.backbone, name).parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen_names:       # frozen blocks keep their batch-norm statistics
            getattr(self.backbone, name).eval()
        return self

    def _run(self, x: torch.Tensor, names: list[str]) -> torch.Tensor:
        for name in names:
            x = getattr(self.backbone, name)(x)
        return x

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part: no gradients, ever."""
        with torch.no_grad():
            if self.backbone.transform_input:
                x = self.backbone._transform_input(x)
            return self._run(x, self.frozen_names)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1024-d image feature: trunk, global average pooling, Linear + ReLU."""
        h = self._run(self.stem(x), self.trainable_names)
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1)
        return torch.relu(self.proj(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def load_imagenet_backbone(encoder: ImageEncoder, weights: str) -> str:
    """ImageNet weights into encoder.backbone: 'imagenet' through torchvision's own API (download
    or its cache), or PATH to torchvision's .pth file. Returns a description of the source."""
    if weights == "imagenet":
        from torchvision.models import Inception_V3_Weights
        w = Inception_V3_Weights.IMAGENET1K_V1
        try:
            state = w.get_state_dict(progress=False, check_hash=True)
        except Exception as e:   # URLError, socket errors, hash mismatch
            hub = os.path.join(torch.hub.get_dir(), "checkpoints", IMAGENET_FILE)
            raise EncoderLoadError(
                f"cannot fetch torchvision's ImageNet Inception-v3 weights ({_first_line(e)}). Without network, "
                f"copy {w.url} to {hub} (torchvision's cache) or pass --weights PATH to that file, or "
                f"--weights random for an untrained smoke run") from None
        source = f"torchvision {w}"
    else:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:
            raise EncoderLoadError(f"cannot read --weights {weights!r}: {_first_line(e)}") from None
        if isinstance(state, dict) and state.get("format") == FORMAT:
            state = {k[len("backbone."):]: v for k, v in state["state_dict"].items() if k.startswith("backbone.")}
        source = f"file {os.path.basename(weights)}"
    if not isinstance(state, dict):
        raise EncoderLoadError(f"--weights {weights!r} holds no state dict")
    state = {k: v for k, v in state.items() if not k.startswith(("AuxLogits.", "fc."))}
    missing, unexpected = encoder.backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise EncoderLoadError(f"--weights {weights!r} is not an Inception-v3 state dict "
                               f"(missing {missing[:3]}…, unexpected {unexpected[:3]}…)")
    return source


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
