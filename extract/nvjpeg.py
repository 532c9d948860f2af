"""`extract images --decoder nvjpeg`: JPEGs decoded on the model's device by torchvision.io.decode_jpeg
(nvJPEG on CUDA, batched; libjpeg-turbo on the CPU), resized and centre-cropped there.

The DataLoader workers (extract.images.BatchDecoder) send the bytes of the JPEGs nvJPEG can take
(`jpeg_bytes`: header checks first, so it only sees files PIL trusts); the job decodes them a batch
at a time (`gpu_decode`), and what the decoder refuses goes back to PIL on the host.
"""
from __future__ import annotations

import torch

from extract.imaging import ImageError, check_regular
from runtime.errors import UserError


def jpeg_bytes(path: str) -> bytes | None:
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


def gpu_decode(raw: dict[int, bytes], device: torch.device, resize: int,
               crop: int) -> tuple[list[int], torch.Tensor | None, list[int]]:
    """Batched torchvision.io.decode_jpeg on the device (nvJPEG on CUDA), then resize and centre crop
    there, one call per image size (a release's images share a few sizes). Returns the rows decoded,
    their NHWC uint8 pixels in that order (None if none), and the rows that failed."""
    keys = list(raw)
    datas = [torch.frombuffer(bytearray(raw[k]), dtype=torch.uint8) for k in keys]
    images = decode_jpegs(datas, device)
    failed = [k for k, img in zip(keys, images) if img is None]
    by_size: dict[tuple[int, int], list[int]] = {}
    for j, img in enumerate(images):
        if img is not None:
            by_size.setdefault(tuple(img.shape[1:]), []).append(j)
    rows, parts = [], []
    for js in by_size.values():
        rows += [keys[j] for j in js]
        parts.append(resize_crop(torch.stack([images[j] for j in js]), resize, crop))
    return rows, (torch.cat(parts) if parts else None), failed


_DECODE_STREAMS: dict = {}


def decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """torchvision.io.decode_jpeg of a batch on `device` (one by one if the batch call fails; None
    for an image it refuses).

    On CUDA it runs with a stream of its own current. torchvision's CUDA decoder allocates its
    outputs on the caller's current stream, then writes them from a private stream that does not wait
    for the caller's (pytorch/vision#9606): the caching allocator hands it blocks just freed on the
    caller's stream that kernels queued there (the model on the previous batch) have yet to read, and
    nvJPEG overwrites them. On an H200 the image job's features came out NaN by the fourth block
    (benchmarks/results/gpu-h200-2026-11-27-run1.json; the commit refused them). Current here is a stream
    that only ever runs these calls, synchronised before they return: every block of its pool is
    either idle or, when last used on the caller's stream, held by record_stream until that use is
    done. The model's stream is not waited for, so the decode still overlaps it."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode_all() -> list[torch.Tensor | None]:
        try:
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
        except Exception:
            out: list[torch.Tensor | None] = []
            for d in datas:
                try:
                    out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                except Exception:
                    out.append(None)
            return out

    if device.type != "cuda":
        return decode_all()
    caller = torch.cuda.current_stream(device)
    stream = _DECODE_STREAMS.get(device)
    if stream is None:
        stream = _DECODE_STREAMS[device] = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        images = decode_all()
    stream.synchronize()                     # nothing of the decoder's left running on its blocks
    for img in images:
        if img is not None:
            img.record_stream(caller)        # freed blocks come back to `stream` only after the caller's use
    return images


def check_device_decoder(device: torch.device) -> None:
    """--decoder nvjpeg: a small JPEG decoded on the device first, so that a torchvision without nvJPEG
    (or a device it cannot use) stops the job with one line before any block, instead of every image
    falling back to PIL in the main process."""
    import io

    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buf, format="JPEG")
    try:
        decode_jpeg([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], mode=ImageReadMode.RGB,
                    device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as e:
        raise UserError(f"--decoder nvjpeg: torchvision cannot decode JPEGs on {device} here "
                        f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); "
                        f"leave --decoder out to decode with PIL in the workers") from None


def resize_crop(images: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """NCHW uint8 images of one size → NHWC uint8: shorter side to `resize` (bilinear, antialiased),
    centre crop to `crop`; torchvision's functional ops, so the same on any device."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F
    return F.center_crop(F.resize(images, resize, InterpolationMode.BILINEAR, antialias=True), crop).permute(0, 2, 3, 1)
