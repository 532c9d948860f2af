"""Image features (paper §3.3, §5.1): Inception-v3, global average pooling, a 1024-unit ReLU layer.

The encoder is one self-describing file written by `extract finetune-images` (weights,
preprocessing, categories, metrics, fingerprint); `extract images --shard i/N` applies it
to every post's first image (a carousel's first image, a video's thumbnail) and writes the
1024-d features under the block commit protocol (extract.jobs).

Fast the way inference stacks are: decoding (JPEG DCT scaling, box resampling; see
extract.imaging) runs in DataLoader worker processes, several batches ahead of the model;
the model runs channels-last under bf16 autocast where the hardware has it; on a GPU the
JPEGs can also be decoded by nvJPEG through torchvision.io (`--decoder nvjpeg`).
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cache.store import UserError
from cache.schema import MODALITIES, Status
from extract.imaging import (DEFAULT_CROP, DEFAULT_RESIZE, IMAGENET_MEAN, IMAGENET_STD, ImageError, check_regular,
                             decode, normalize)
from extract.release import inside
from extract.text import DTYPES, EncoderLoadError, pick_device, pick_precision, weights_digest

FORMAT = "influencer-profiler/image-encoder/1"
DIM = MODALITIES["image"]                       # 1024
MIXED = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
         "Mixed_7a", "Mixed_7b", "Mixed_7c"]    # torchvision's inception blocks, bottom to top
# torchvision Inception3.forward's order up to the pooling (AuxLogits only matters in training).
TRUNK = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
         "maxpool2"] + MIXED
IMAGENET_FILE = "inception_v3_google-0cc3c7bd.pth"   # torchvision's file for IMAGENET1K_V1
# A batch not decoded in this long (a hung network filesystem) stops the job with an error instead
# of hanging it; done blocks are kept and a rerun goes on from there.
DECODE_TIMEOUT = 600


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


# ---------------------------------------------------------------- extraction job

@dataclass(frozen=True)
class Batch:
    block: int
    start: int
    stop: int


class BatchDecoder(torch.utils.data.Dataset):
    """Item k is batch k of the shard's pending blocks, decoded in a DataLoader worker.

    The worker opens the store itself (after it starts, as DESIGN.md asks) and reads a block's
    image paths once; nothing big is pickled to it.
    """

    def __init__(self, url: str, root: str, batches: list[Batch], block: int, resize: int, crop: int,
                 exact: bool, raw_jpeg: bool = False):
        self.url, self.root, self.batches, self.block = url, root, batches, block
        self.resize, self.crop, self.exact, self.raw_jpeg = resize, crop, exact, raw_jpeg
        self._store = None
        self._paths: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.batches)

    def _block_paths(self, b: int) -> np.ndarray:
        if self._paths is None or self._paths[0] != b:
            if self._store is None:
                from cache.store import open_store
                self._store = open_store(self.url, "r")
            self._paths = (b, self._store["posts/image"][self._store.block_rows(b)])
        return self._paths[1]

    def __getitem__(self, k: int):
        batch = self.batches[k]
        paths = self._block_paths(batch.block)
        base = batch.block * self.block
        n = batch.stop - batch.start
        pixels = np.zeros((n, self.crop, self.crop, 3), dtype=np.uint8)
        status = np.full(n, Status.OK, dtype=np.uint8)
        raw: dict[int, bytes] = {}
        errors: list[tuple[int, str, str]] = []
        for i in range(n):
            rel = str(paths[batch.start + i - base])
            if not rel:
                status[i] = Status.NO_INPUT
                continue
            path = os.path.join(self.root, rel)
            try:
                if not inside(self.root, path):
                    # the store's paths come from the release's text: one that leaves the dataset is never read
                    raise ImageError(Status.UNREADABLE, "path outside the dataset root")
                if self.raw_jpeg:
                    data = _jpeg_bytes(path)
                    if data is not None:
                        raw[i] = data
                        continue
                pixels[i] = decode(path, self.resize, self.crop, self.exact)
            except ImageError as e:
                status[i] = e.status
                errors.append((batch.start + i, rel, e.reason))
        return k, torch.from_numpy(pixels), status, raw, errors


def _jpeg_bytes(path: str) -> bytes | None:
    """A plain RGB/gray baseline-or-progressive JPEG's bytes for nvJPEG, or None to decode it with PIL.
    Header checks (size limits, CMYK, truncation) happen here, so nvJPEG only sees files PIL trusts."""
    from PIL import Image
    from extract.imaging import MAX_PIXELS
    try:
        check_regular(path)
        with open(path, "rb") as f:
            data = f.read()
    except (OSError, ImageError):
        return None                           # let decode() report it
    if not data.startswith(b"\xff\xd8") or b"\xff\xd9" not in data[-64:]:
        return None
    try:
        import io
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG" or img.mode not in ("RGB", "L") or img.width * img.height > MAX_PIXELS:
                return None
    except Exception:
        return None
    return data


def _gpu_decode(raw: dict[int, bytes], device: torch.device, resize: int, crop: int) -> dict[int, torch.Tensor | None]:
    """Batched torchvision.io.decode_jpeg on the device (nvJPEG on CUDA), then resize and centre crop
    on the device. Returns HWC uint8 tensors, None for an image that failed."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F
    keys = list(raw)
    datas = [torch.frombuffer(bytearray(raw[k]), dtype=torch.uint8) for k in keys]
    try:
        images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    except Exception:
        images = []
        for d in datas:
            try:
                images.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            except Exception:
                images.append(None)
    out: dict[int, torch.Tensor | None] = {}
    for k, img in zip(keys, images):
        if img is None:
            out[k] = None
            continue
        img = F.center_crop(F.resize(img, resize, InterpolationMode.BILINEAR, antialias=True), crop)
        out[k] = img.permute(1, 2, 0)
    return out


def image_fingerprint(ef: EncoderFile, precision: str, exact: bool, decoder: str) -> dict:
    p = ef.preprocessing
    return {
        "kind": "image", "model": "inception_v3", "weights_sha256": ef.meta["weights_sha256"],
        "source": ef.meta.get("weights_source"), "trainable_blocks": ef.meta["model"]["trainable_blocks"],
        "preprocessing": f"resize {p['resize']} crop {p['crop']} bilinear",
        "decode": "exact" if exact else f"fast/{decoder}", "precision": precision,
    }


def run_images(url: str, shard: str, *, encoder_path: str, batch_size: int | None = None,
               workers: int | None = None, device: str = "auto", precision: str = "auto",
               decoder: str = "pil", exact: bool = False, dataset: str | None = None,
               throttle: float = 0.0, quiet: bool = False):
    from cache.blocks import parse_shard, pending_blocks
    from cache.store import open_store
    from extract.jobs import run_shard
    sh = parse_shard(shard)
    if decoder not in ("pil", "nvjpeg"):
        raise UserError(f"--decoder must be pil or nvjpeg, got {decoder!r}")
    dev = pick_device(device)
    if exact:
        if precision not in ("auto", "fp32"):
            raise UserError("--exact computes in fp32; leave --precision out or pass fp32")
        if decoder != "pil":
            raise UserError("--exact decodes with PIL at full size; leave --decoder out")
        precision = "fp32"
    prec = pick_precision(precision, dev)
    store = open_store(url, "r+")
    root = dataset or store.attrs.get("dataset_root") or ""
    if not os.path.isdir(root):
        raise UserError(f"dataset root {root!r} (recorded in {url}) is not a folder; pass --dataset PATH")
    ef = load_encoder(encoder_path)
    pre = ef.preprocessing
    fingerprint = image_fingerprint(ef, prec, exact, decoder)
    encoder = ef.encoder.to(dev).eval()
    if dev.type == "cuda" or prec != "fp32":
        encoder = encoder.to(memory_format=torch.channels_last)
    if batch_size is None:
        batch_size = 256 if dev.type == "cuda" else 32
    if workers is None:
        workers = min(os.cpu_count() or 1, 16)
    if batch_size < 1 or workers < 0:
        raise UserError("--batch-size must be >= 1 and --workers >= 0")

    # Claim first (refuses a different encoder before any decoding starts), then plan the batches
    # from one read of the done flags, which run_shard then follows block for block.
    from cache.blocks import claim_fingerprint
    claim_fingerprint(store, "image", fingerprint)
    pending = pending_blocks(store, "image", sh)
    batches = []
    for b in pending:
        rows = store.block_rows(b)
        batches += [Batch(b, s, min(s + batch_size, rows.stop)) for s in range(rows.start, rows.stop, batch_size)]
    ds = BatchDecoder(url, root, batches, store.block, pre["resize"], pre["crop"], exact,
                      raw_jpeg=decoder == "nvjpeg")
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, shuffle=False, num_workers=workers,
        multiprocessing_context="spawn" if workers else None,
        prefetch_factor=4 if workers else None, pin_memory=dev.type == "cuda",
        timeout=DECODE_TIMEOUT if workers else 0)
    it = iter(loader) if batches else iter(())    # no worker processes for a shard with nothing to do
    ids = store["posts/id"]
    def autocast():
        return torch.autocast(dev.type, dtype=DTYPES[prec]) if prec != "fp32" else contextlib.nullcontext()

    @torch.inference_mode()
    def compute(rows: slice):
        n = rows.stop - rows.start
        feats = np.zeros((n, DIM), dtype=np.float32)
        status = np.empty(n, dtype=np.uint8)
        failures: list[tuple[int, str, str]] = []
        done = rows.start
        while done < rows.stop:
            _, pixels, st, raw, errors = next(it)
            m = len(st)
            if raw:
                decoded = _gpu_decode(raw, dev, pre["resize"], pre["crop"])
                pixels = pixels.to(dev)
                for i, img in decoded.items():
                    if img is None:
                        st[i] = Status.UNREADABLE
                        errors.append((done + i, "", "nvJPEG could not decode it"))
                    else:
                        pixels[i] = img
            ok = np.flatnonzero(st == Status.OK)
            if len(ok):
                x = normalize(pixels[torch.from_numpy(ok)].to(dev, non_blocking=True), pre["mean"], pre["std"])
                with autocast():
                    f = encoder.features(x.contiguous(memory_format=torch.channels_last))
                feats[done - rows.start + ok] = f.float().cpu().numpy()
            status[done - rows.start:done - rows.start + m] = st
            failures += errors
            done += m
        if failures:
            post_ids = ids[rows]
            for row, rel, reason in failures[:100]:
                print(f"image: post {post_ids[row - rows.start]} ({rel or 'row ' + str(row)}): {reason}",
                      file=sys.stderr)
            if len(failures) > 100:
                print(f"image: … and {len(failures) - 100} more failures in rows {rows.start}-{rows.stop - 1}",
                      file=sys.stderr)
        return feats, status

    # The worker processes end with the loader's iterator, when this function returns.
    return run_shard(store, "image", sh, fingerprint, lambda rows: rows, compute, unit="images",
                     throttle=throttle, quiet=quiet, pending=pending)
