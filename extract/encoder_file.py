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
from runtime.files import atomic_write


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
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)


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
    try:
        state = payload.pop("state_dict")
        cfg = payload["model"]
        n = len(payload["categories"])
        if not 1 <= n <= 1000 or not isinstance(cfg["trainable_blocks"], int) or not 0 <= cfg["trainable_blocks"] <= 3:
            raise ValueError(f"{n} categories, trainable_blocks {cfg['trainable_blocks']!r}")
        encoder = ImageEncoder(n, cfg["trainable_blocks"], bool(cfg["transform_input"]), float(cfg["dropout"]),
                               init_weights=False)
        encoder.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise EncoderLoadError(f"{path}: a damaged encoder file ({_first_line(e)})") from None
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
