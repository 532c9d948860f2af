"""The image encoder file: one self-describing file written by `extract finetune-images` (weights,
preprocessing, categories, training record, metrics, a weights digest checked on load)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from extract.imaging import DEFAULT_CROP, DEFAULT_RESIZE, IMAGENET_MEAN, IMAGENET_STD
from extract.inception import FORMAT, ImageEncoder, _first_line
from runtime.device import weights_digest
from runtime.errors import EncoderLoadError, UserError


@dataclass
class EncoderFile:
    encoder: ImageEncoder
    meta: dict          # everything in the file except the weights

    @property
    def preprocessing(self) -> dict:
        return self.meta["preprocessing"]


def save_encoder(path: str, encoder: ImageEncoder, meta: dict) -> None:
    """Write atomically (a temporary file, then rename): a killed job never leaves half a file."""
    payload = dict(meta, format=FORMAT, state_dict=encoder.state_dict(),
                   weights_sha256=weights_digest(encoder))
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_encoder(path: str) -> EncoderFile:
    if not os.path.exists(path):
        raise UserError(f"{path}: no such encoder file (write one with `extract finetune-images`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EncoderLoadError(f"{path}: not a readable encoder file: {_first_line(e)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EncoderLoadError(f"{path}: not an image encoder file written by `extract finetune-images` "
                               f"(format {payload.get('format') if isinstance(payload, dict) else type(payload)})")
    state = payload.pop("state_dict")
    cfg = payload["model"]
    encoder = ImageEncoder(len(payload["categories"]), cfg["trainable_blocks"], cfg["transform_input"],
                           cfg["dropout"], init_weights=False)
    encoder.load_state_dict(state)
    if weights_digest(encoder) != payload["weights_sha256"]:
        raise EncoderLoadError(f"{path}: weights do not match the digest recorded in the file (corrupt copy?)")
    return EncoderFile(encoder.eval(), payload)


def default_preprocessing(crop: int = DEFAULT_CROP) -> dict:
    """torchvision's Inception-v3 preset (342 → 299), scaled when a smaller input is asked for."""
    if crop < 75:
        raise UserError(f"--image-size must be at least 75 (Inception-v3's smallest input), got {crop}")
    resize = DEFAULT_RESIZE if crop == DEFAULT_CROP else int(round(crop * DEFAULT_RESIZE / DEFAULT_CROP))
    return {"resize": resize, "crop": crop, "interpolation": "bilinear", "antialias": True,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
