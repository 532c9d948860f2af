"""Decoding the release's images into the network's input, without wasting the CPU.

One function, `decode`, turns a file into a `crop`×`crop`×3 uint8 array the way
torchvision's Inception-v3 preset does (shorter side resized to `resize`, bilinear with
antialiasing, centre crop of `crop`), or says why it cannot:
- fast (default): a JPEG is decoded at reduced size by the decoder itself (libjpeg's DCT
  scaling, PIL's draft mode) to just above the size that is needed, so a 1080×1080 post is
  never decoded whole, and resampled by torch's uint8 kernel (only the crop's box of a large one);
- exact: full decode, then torchvision's own resize and centre crop, pixel for pixel.

Everything the release can throw at it is handled: CMYK, grayscale, palette and alpha
images (composited on white), PNG or other formats behind a .jpg name, tiny and very
elongated images, truncated or empty files, decompression bombs. A missing file is
status 2 (no input); anything else that fails is status 3 (unreadable), with a reason.
"""
from __future__ import annotations

import functools
import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageFile

from cache.schema import Status
from runtime.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's Inception_V3_Weights.IMAGENET1K_V1.transforms(): resize 342, crop 299, bilinear.
DEFAULT_RESIZE, DEFAULT_CROP = 342, 299
# Decompression-bomb limit. Instagram serves at most 1080×1350; a real photo above 64 Mpx is
# not something a post holds. Checked from the header, before any pixel is decoded.
MAX_PIXELS = 64_000_000
# Exact mode resizes the whole image first, as torchvision does; past this many resized pixels
# (a 1×100000 strip) it resamples only the crop's box instead, which gives the same pixels.
MAX_RESIZED_PIXELS = 50_000_000
# Fast mode resizes a small image whole (then crops) while that is at most this many times resize².
MAX_WHOLE_RESIZE = 4

ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageError(Exception):
    """An image that gives no features: status is Status.NO_INPUT or Status.UNREADABLE."""

    def __init__(self, status: Status, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_regular(path: str) -> None:
    """Refuse what is not a regular file before opening it: a FIFO named like an image would block
    the reader forever, a device or folder is no image."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError(Status.NO_INPUT, "file missing") from None
    except OSError as e:
        raise ImageError(Status.UNREADABLE, f"cannot open: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(Status.UNREADABLE, "not a regular file")


def _open(path: str) -> Image.Image:
    check_regular(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)     # reads the header only; PIL owns and closes the file
    except FileNotFoundError:
        raise ImageError(Status.NO_INPUT, "file missing") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(Status.UNREADABLE, f"decompression bomb: {_short(e)}") from None
    except OSError as e:
        if e.strerror:   # permission denied, is a directory, I/O error
            raise ImageError(Status.UNREADABLE, f"cannot open: {e.strerror}") from None
        raise ImageError(Status.UNREADABLE, f"not a readable image ({_size_of(path)} bytes): {_short(e)}") from None
    except Exception as e:   # SyntaxError, struct.error, ValueError from broken headers
        raise ImageError(Status.UNREADABLE, f"not a readable image ({_size_of(path)} bytes): {_short(e)}") from None
    w, h = img.size
    if w < 1 or h < 1 or w * h > MAX_PIXELS:
        img.close()
        raise ImageError(Status.UNREADABLE, f"decompression bomb or bad header: {w}x{h} pixels "
                                            f"(limit {MAX_PIXELS:,})")
    return img


def _size_of(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:160]


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16- or 32-bit grayscale: scale to 8 bits instead of clipping.
        a = np.asarray(img, dtype=np.float64)
        top = a.max() if a.size and a.max() > 0 else 1.0
        return Image.fromarray((a * (255.0 / top)).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")     # L, 1, P, CMYK, YCbCr, LAB, HSV, F


def _crop_box(w: int, h: int, resize: int, crop: int) -> tuple[float, float, float, float]:
    """The source box that torchvision's Resize(resize) + CenterCrop(crop) keeps, with its exact
    integer sizes and rounded offsets (in resized pixels), mapped back to source coordinates."""
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
    sx, sy = new_w / w, new_h / h
    return left / sx, top / sy, (left + crop) / sx, (top + crop) / sy


def _box_resize(img: Image.Image, resize: int, crop: int) -> np.ndarray:
    """Resize-shorter-side-then-centre-crop with torch's uint8 antialiased bilinear kernel (AVX2,
    channels-last), which PIL's resampler is slower than at every size measured:
    - shrinking by 1.5x or more (a large photo): only the crop's box, cut at whole pixels, is
      resampled (half a pixel of rounding is a third of an output pixel at most);
    - otherwise (the release's 320-400 px images): the whole image is resized as torchvision does and
      the crop cut at torchvision's own offsets, the reference's geometry exactly (closer to it than
      PIL resampling the fractional box was, and 1.1-1.2x faster decoding in one thread);
    - an image that would resize to more than MAX_WHOLE_RESIZE × resize² pixels (a 4000×60 strip)
      keeps PIL's exact fractional box, so no huge intermediate is made."""
    w, h = img.size
    box = _crop_box(w, h, resize, crop)
    if box[2] - box[0] >= 1.5 * crop and box[3] - box[1] >= 1.5 * crop:
        left, top = int(round(box[0])), int(round(box[1]))
        right, bottom = max(left + 1, min(w, int(round(box[2])))), max(top + 1, min(h, int(round(box[3]))))
        return _torch_resize(np.asarray(img)[top:bottom, left:right], crop, crop)
    new_w, new_h = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    if new_w * new_h > MAX_WHOLE_RESIZE * resize * resize or crop > resize:   # (a crop past the image: PIL's box)
        return np.array(img.resize((crop, crop), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)
    top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
    return _torch_resize(np.asarray(img), new_h, new_w, top, left, crop)


def _torch_resize(a: np.ndarray, height: int, width: int, top: int = 0, left: int = 0,
                  crop: int | None = None) -> np.ndarray:
    """An HWC uint8 array resized by torch's antialiased bilinear uint8 kernel (AVX2 from channels-last
    input) to height × width, optionally cut to crop × crop at (top, left); HWC uint8 out.

    Given a channels-last output (`_resize_channels_last`) the kernel writes interleaved pixels and
    the crop is one contiguous copy: on a 360 px image 508 + 43 µs, against 977 + 147 µs when torch
    allocated the output itself, planar (its own conversion to planar, then ours back)."""
    import torch
    x = torch.from_numpy(np.array(a, dtype=np.uint8))    # a writable, contiguous copy of the region
    out = _resize_channels_last(x.permute(2, 0, 1)[None], height, width)[0].permute(1, 2, 0)
    h, w = (height, width) if crop is None else (crop, crop)
    return np.ascontiguousarray(out[top:top + h, left:left + w].numpy())


def _resize_channels_last(x, height: int, width: int):
    """torch's antialiased bilinear resize of a (1, C, H, W) uint8 tensor into a channels-last output,
    which `interpolate` does not offer (it returns planar memory from channels-last input). Where the
    ATen op's out= form is missing or refuses, `interpolate` itself (the same pixels, planar)."""
    import torch
    out = torch.empty((1, x.shape[1], height, width), dtype=torch.uint8, memory_format=torch.channels_last)
    try:
        torch.ops.aten._upsample_bilinear2d_aa.out(x, [height, width], False, None, None, out=out)
        return out
    except (AttributeError, RuntimeError, TypeError):
        return torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", antialias=True,
                                               align_corners=False)


def decode(path: str, resize: int = DEFAULT_RESIZE, crop: int = DEFAULT_CROP, exact: bool = False) -> np.ndarray:
    """The network's input for one image file: (crop, crop, 3) uint8, or ImageError."""
    src = img = _open(path)
    try:
        w, h = img.size
        if not exact and img.format == "JPEG":
            # DCT scaling: decode at 1/2, 1/4 or 1/8 while the shorter side stays >= resize.
            short = min(w, h)
            img.draft("RGB", (max(1, w * resize // short), max(1, h * resize // short)))
        img = _to_rgb(img)     # decodes (load) here
        w, h = img.size
        if exact and (w * h * (resize / min(w, h)) ** 2) <= MAX_RESIZED_PIXELS:
            from torchvision.transforms import InterpolationMode
            from torchvision.transforms import functional as F
            out = F.center_crop(F.resize(img, resize, InterpolationMode.BILINEAR, antialias=True), crop)
            arr = np.array(out, dtype=np.uint8)   # a writable copy
        else:
            arr = _box_resize(img, resize, crop)
        if arr.shape != (crop, crop, 3):
            raise UserError(f"decoded to shape {arr.shape}")
        return arr
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(Status.UNREADABLE, "out of memory decoding it") from None
    except Exception as e:          # truncated data, broken tables, bad palettes …
        raise ImageError(Status.UNREADABLE, f"cannot decode ({_size_of(path)} bytes): {_short(e)}") from None
    finally:
        src.close()


def normalize(pixels, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 NHWC tensor → float NCHW (channels-last in memory), scaled as torchvision's preset."""
    x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    m, s = _channel_constants(x.device, tuple(map(float, mean)), tuple(map(float, std)))
    return x.sub_(m).div_(s)


@functools.lru_cache(maxsize=16)
def _channel_constants(device, mean: tuple, std: tuple):
    """Mean and std as (1, 3, 1, 1) float tensors on the device, made once: building them from lists
    for every batch was a copy from pageable memory, which on a GPU waits for the queued kernels."""
    import torch
    with torch.inference_mode(False):     # normal tensors, usable by training (extract.finetune) too
        return (torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(device),
                torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(device))
