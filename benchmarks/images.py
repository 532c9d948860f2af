"""Benchmark of `extract images` against a plain loop, same encoder, same JPEGs, in one run.

    python -m benchmarks.images [--influencers 16] [--posts 25] [--sizes 1080,320] [--device auto]
                                [--decoder pil] [--workers N]

Plain loop (the reference): PIL full decode, torchvision Resize(342) + CenterCrop(299),
batches of 32, fp32, no worker processes. `extract images`: the shard job itself (draft-mode
decoding in DataLoader workers, channels-last, bf16 where the hardware has it), timed by
its own report (model loaded, loop only) and by wall clock (process start to exit).
Decode-only figures: the reference's per-image PIL + torchvision path, `extract.imaging.decode`
in one process, and `decode` in the job's worker processes.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np
import torch
from PIL import Image

from cache.labels import apply_labels
from cache.store import open_store
from extract.finetune import FinetuneConfig, finetune
from extract.images import load_encoder
from extract.imaging import decode
from extract.index import run_index
from extract.sample import make_sample
from runtime.device import pick_device


def _soften(job: tuple[str, int | None]) -> int:
    from PIL import ImageFilter
    p, size = job
    img = Image.open(p).convert("RGB")
    if size and max(img.size) != size:     # enlarge a small pattern; the blur hides the upscaling
        scale = size / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
        arr = np.asarray(img, np.float32)  # a camera's sensor noise, so the JPEG's size is a photo's
        noise = 4.0 * np.random.default_rng(zlib.crc32(os.path.basename(p).encode())).standard_normal(arr.shape, np.float32)
        img = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))
    img.filter(ImageFilter.GaussianBlur(1.5)).save(p, format="JPEG", quality=85)
    return os.path.getsize(p)


def photo_like(data: str, size: int | None = None, workers: int = 1) -> float:
    """The sample's patterns carry per-pixel noise, which makes JPEGs of 3 bits per pixel (a 1080 px
    one is 440 KB), all entropy-decoding time. Camera photos posted to Instagram are nearer 1 bit per
    pixel: soften each image as a lens would and save it at quality 85. With `size`, each image is
    first enlarged to that longer side (drawing small patterns and enlarging them is what makes a
    20 k-post sample quick to build); `workers` processes share the files. Returns the mean KB."""
    folder = os.path.join(data, "image")
    jobs = [(os.path.join(folder, name), size) for name in sorted(os.listdir(folder))]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(workers) as pool:
            sizes = list(pool.map(_soften, jobs, chunksize=64))
    else:
        sizes = [_soften(j) for j in jobs]
    return float(np.mean(sizes)) / 1024


def build(tmp: str, size: int, influencers: int, posts: int) -> tuple[str, str, list[str]]:
    data, url = os.path.join(tmp, f"data{size}"), os.path.join(tmp, f"s{size}.zarr")
    make_sample(data, influencers, posts, seed=0, image_size=size, clean=True)
    kb = photo_like(data)
    print(f"{size} px: mean JPEG {kb:.0f} KB")
    run_index(data, url, workers=1, quiet=True)
    apply_labels(open_store(url, "r+"), os.path.join(data, "labels/influencers.csv"),
                 os.path.join(data, "labels/posts.csv"), seed=0)
    paths = [os.path.join(data, str(p)) for p in open_store(url)["posts/image"][:] if str(p)]
    return data, url, paths


def plain_pixels(path: str, preset) -> torch.Tensor:
    from torchvision.transforms import functional as F
    img = Image.open(path).convert("RGB")
    img = F.center_crop(F.resize(img, preset.resize_size, preset.interpolation, antialias=True), preset.crop_size)
    return F.normalize(F.to_tensor(img), preset.mean, preset.std)


def plain_loop(paths, encoder, device) -> float:
    from torchvision.models import Inception_V3_Weights
    preset = Inception_V3_Weights.IMAGENET1K_V1.transforms()
    model = encoder.to(device).eval()
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), 32):
            x = torch.stack([plain_pixels(p, preset) for p in paths[i:i + 32]]).to(device)
            model.features(x).float().cpu()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def decode_plain(paths) -> float:
    from torchvision.models import Inception_V3_Weights
    preset = Inception_V3_Weights.IMAGENET1K_V1.transforms()
    t = time.perf_counter()
    for p in paths:
        plain_pixels(p, preset)
    return time.perf_counter() - t


def decode_fast(paths) -> float:
    t = time.perf_counter()
    for p in paths:
        decode(p)
    return time.perf_counter() - t


def _decode_chunk(chunk):
    for p in chunk:
        decode(p)
    return len(chunk)


def decode_workers(paths, workers: int) -> float:
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pool.map(_decode_chunk, [paths[:workers]] * workers)      # start-up and imports out of the timing
        t = time.perf_counter()
        pool.map(_decode_chunk, [paths[i:i + 32] for i in range(0, len(paths), 32)])
        return time.perf_counter() - t


def job(url: str, encoder: str, args) -> tuple[float, float, str]:
    cmd = [sys.executable, "-m", "extract.cli_main", "images", url, "--shard", "0/1", "--encoder", encoder,
           "--device", args.device, "--decoder", args.decoder]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wall = time.perf_counter() - t
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    summary = out.stderr.strip().splitlines()[-1]
    rate = float(summary.split(" images/s")[0].split("; ")[-1])
    return rate, wall, summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--influencers", type=int, default=16)
    ap.add_argument("--posts", type=int, default=25)
    ap.add_argument("--sizes", default="1080,320")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--decoder", default="pil")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--encoder", help="an encoder file; default: fine-tune one epoch on the 320 px sample")
    args = ap.parse_args()
    device = pick_device(args.device)
    tmp = tempfile.mkdtemp(prefix="bench-images-")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        built = {s: build(tmp, s, args.influencers, args.posts) for s in sizes}
        encoder = args.encoder
        if encoder is None:
            encoder = os.path.join(tmp, "encoder.pt")
            finetune(built[min(sizes)][1], encoder, FinetuneConfig(weights="random", epochs=1, workers=0),
                     log=lambda *a: None, quiet=True)
        print(f"device {device}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
              f"encoder {os.path.basename(encoder)} (input 299 px)")
        rows = []
        for size in sizes:
            data, url, paths = built[size]
            n = len(paths)
            plain_s = plain_loop(paths, load_encoder(encoder).encoder, device)
            rate, wall, summary = job(url, encoder, args)
            d_plain = decode_plain(paths)
            d_fast = decode_fast(paths)
            workers = args.workers or min(os.cpu_count() or 1, 16)
            d_workers = decode_workers(paths, workers) if workers else float("nan")
            rows.append((size, n, n / plain_s, rate, n / wall, n / d_plain, n / d_fast, n / d_workers, workers))
            print(f"  {size}px: {summary}")
        print()
        print("| JPEG | images | plain loop | extract images (loop) | ratio | extract images (wall, incl. start-up) "
              "| decode plain | decode fast, 1 process | ratio | decode fast, workers | ratio |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for size, n, plain, rate, wall, dp, df, dw, w in rows:
            print(f"| {size}×{size} | {n} | {plain:.1f}/s | {rate:.1f}/s | **{rate / plain:.2f}×** | {wall:.1f}/s "
                  f"| {dp:.0f}/s | {df:.0f}/s | **{df / dp:.2f}×** | {dw:.0f}/s ({w}) | {dw / dp:.2f}× |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
