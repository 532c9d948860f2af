"""`extract images --shard i/N`: image features (paper §3.3, §5.1) of every post, block by block.

The model is in extract.inception (Inception-v3, global average pooling, a 1024-unit ReLU
layer), its file in extract.encoder_file (written by `extract finetune-images`: weights,
preprocessing, categories, metrics, fingerprint). This job applies it
to every post's first image (a carousel's first image, a video's thumbnail) and writes the
1024-d features under the block commit protocol (extract.jobs).

Fast the way inference stacks are: decoding (JPEG DCT scaling, box resampling; see
extract.imaging) runs in DataLoader worker processes, several batches ahead of the model;
the model runs channels-last under bf16 autocast where the hardware has it; on a GPU the
JPEGs can also be decoded by nvJPEG through torchvision.io (`--decoder nvjpeg`).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from cache.blocks import carried_rows
from cache.schema import Status
from extract.imaging import ImageError, decode, normalize
from extract.nvjpeg import check_device_decoder, gpu_decode, jpeg_bytes
from runtime.console import warn
from runtime.cpus import usable_cpus
from runtime.errors import UserError
from runtime.files import dataset_file
# the model and the encoder file live in their own modules; re-exported for callers of this one
from extract.encoder_file import EncoderFile, default_preprocessing, load_encoder, save_encoder  # noqa: F401
from extract.inception import DIM, ImageEncoder, load_imagenet_backbone  # noqa: F401
from extract.release import inside
from runtime.device import autocast, maybe_compile, pick_device, pick_precision, shrinking_on_oom, to_device

# A batch not decoded in this long (a hung network filesystem) stops the job with an error instead
# of hanging it; done blocks are kept and a rerun goes on from there.
DECODE_TIMEOUT = 600
# Batches each decoding worker keeps ready ahead of the model (fewer if shared memory is short).
PREFETCH = 4
SHM = "/dev/shm"


def shared_memory_free(path: str = SHM) -> int | None:
    """Bytes free in the shared memory that DataLoader workers hand their batches over in (Linux:
    /dev/shm), or None where there is no such folder."""
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def prefetch_for(workers: int, batch_bytes: int, free: int | None) -> int:
    """How many batches each worker may keep ready: PREFETCH, or fewer so that all of them fit the
    shared memory, with two batches more (the one being copied out and one not yet freed). A
    container's default /dev/shm is 64 MB (Docker, Kubernetes), less than one GPU batch (256 images of
    299 px: 69 MB); a worker fails at its first batch there. Raises UserError when not even one batch
    per worker fits."""
    if free is None or workers == 0:
        return PREFETCH
    fits = int((free // batch_bytes - 2) // workers)
    if fits < 1:
        mb = 1 << 20
        raise UserError(
            f"shared memory {SHM} has {free / mb:,.0f} MB free; {workers} decoding workers need "
            f"{(workers + 2) * batch_bytes / mb:,.0f} MB for one batch each ({batch_bytes / mb:,.1f} MB a batch): "
            f"raise it (docker run --shm-size=8g; Kubernetes: an emptyDir with medium Memory at /dev/shm, as "
            f"`extract plan` writes) or pass fewer --workers or a smaller --batch-size")
    return min(PREFETCH, fits)


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

    def __init__(self, url: str, root: str, batches: list[Batch], block: int, *, resize: int, crop: int,
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
            rows = self._store.block_rows(b)
            paths = self._store["posts/image"][rows]
            # rows carried over by `extract index --update` keep their features: nothing to decode
            paths[carried_rows(self._store, "image", rows)] = ""
            self._paths = (b, paths)
        return self._paths[1]

    def __getitem__(self, k: int):
        """Batch k: (k, pixels, rows, status, raw, errors). `pixels` holds only the images decoded
        here, in `rows` order (a failed or missing image costs no transfer); `raw` holds the JPEG
        bytes left to nvJPEG, by row."""
        batch = self.batches[k]
        paths = self._block_paths(batch.block)
        base = batch.block * self.block
        n = batch.stop - batch.start
        status = np.full(n, Status.OK, dtype=np.uint8)
        decoded: list[np.ndarray] = []
        rows: list[int] = []
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
                    raise ImageError(Status.UNREADABLE, "path_outside_dataset: the path leaves the dataset (outside the dataset root)")
                if dataset_file(self.root, rel) is None:
                    # a link inside image/ to a file elsewhere (image/ itself may be a link to another disk)
                    raise ImageError(Status.UNREADABLE, "path_outside_dataset: a link to a file outside the dataset")
                if self.raw_jpeg:
                    data = jpeg_bytes(path)
                    if data is not None:
                        raw[i] = data
                        continue
                decoded.append(decode(path, self.resize, self.crop, self.exact))
                rows.append(i)
            except ImageError as e:
                status[i] = e.status
                errors.append((batch.start + i, rel, e.reason))
        pixels = np.stack(decoded) if decoded else np.zeros((0, self.crop, self.crop, 3), dtype=np.uint8)
        return k, torch.from_numpy(pixels), np.array(rows, dtype=np.int64), status, raw, errors


def image_fingerprint(ef: EncoderFile, precision: str, exact: bool, decoder: str) -> dict:
    p = ef.preprocessing
    return {
        "kind": "image", "model": "inception_v3", "weights_sha256": ef.meta["weights_sha256"],
        "source": ef.meta.get("weights_source"), "trainable_blocks": ef.meta["model"]["trainable_blocks"],
        "preprocessing": f"resize {p['resize']} crop {p['crop']} bilinear",
        "decode": "exact" if exact else f"fast/{decoder}", "precision": precision,
    }


class ImageJob:
    """`extract images` as a shard job (extract.jobs.BlockJob): decoding workers feed the encoder.

    `plan` cuts the pending blocks into batches and starts the DataLoader's worker processes on
    them, which then decode several batches ahead; `prepare` has nothing left to read, and
    `encode` takes a block's batches from the workers (nvJPEG-decoding raw JPEGs on the device)."""
    modality, unit = "image", "images"

    def __init__(self, ef: EncoderFile, store, root: str, dev: torch.device, prec: str, *,
                 batch_size: int, workers: int, exact: bool, decoder: str, compile: bool = False):
        self.pre, self.dev, self.prec = ef.preprocessing, dev, prec
        self.store, self.root = store, root
        self.batch_size, self.workers, self.exact, self.decoder = batch_size, workers, exact, decoder
        self.fingerprint = image_fingerprint(ef, prec, exact, decoder)
        self.encoder = ef.encoder.to(dev).eval()
        if dev.type == "cuda" or prec != "fp32":
            self.encoder = self.encoder.to(memory_format=torch.channels_last)
        self.features = maybe_compile(self.encoder.features, compile)
        # compiled: every batch padded to the batch size, so that a short batch (a block's last, or one
        # with failed images) is not a new shape to compile (the GPU bench saw one such recompile take
        # 28 s); rows are independent in eval mode, so padding changes no feature
        self.pad_batches = compile
        self.model_batch = batch_size           # images per model call: halved if the device runs out of memory
        self.refused = 0                        # images nvJPEG refused (decoded with PIL instead)
        self._paths: tuple[int, np.ndarray | None] = (-1, None)      # (block start, its image paths) for those
        if decoder == "nvjpeg":
            check_device_decoder(dev)
        self.it = iter(())
        self.waited = 0.0                       # seconds spent waiting for the decoding workers

    def plan(self, blocks: list[int]) -> None:
        batches = []
        for b in blocks:
            rows = self.store.block_rows(b)
            batches += [Batch(b, s, min(s + self.batch_size, rows.stop))
                        for s in range(rows.start, rows.stop, self.batch_size)]
        if not batches:
            return                              # no worker processes for a shard with nothing to do
        ds = BatchDecoder(self.store.url, self.root, batches, self.store.block, resize=self.pre["resize"],
                          crop=self.pre["crop"], exact=self.exact, raw_jpeg=self.decoder == "nvjpeg")
        crop = self.pre["crop"]
        self.prefetch = prefetch_for(self.workers, self.batch_size * crop * crop * 3, shared_memory_free())
        if self.prefetch < PREFETCH:
            warn(f"image: {SHM} has room for {self.prefetch} batch(es) per decoding worker, not {PREFETCH}; "
                 f"the workers may fall behind the model (raise the shared memory: docker run --shm-size=8g)")
        loader = torch.utils.data.DataLoader(
            ds, batch_size=None, shuffle=False, num_workers=self.workers,
            multiprocessing_context="spawn" if self.workers else None,
            prefetch_factor=self.prefetch if self.workers else None, pin_memory=self.dev.type == "cuda",
            timeout=DECODE_TIMEOUT if self.workers else 0)
        self.it = iter(loader)

    def prepare(self, rows: slice) -> slice:
        return rows                             # the workers already decode ahead, in plan's order

    @torch.inference_mode()
    def encode(self, rows: slice):
        """A block's batches from the workers: pixels to the device (pinned, non-blocking), nvJPEG's
        share decoded there, the model; features stay on the device until the block is done, and no
        copy in the loop makes the host wait for the GPU (runtime.device.to_device; the normalising
        constants are made once), so the host queues the next batch while the device computes this
        one (one synchronisation per block)."""
        pre, dev = self.pre, self.dev
        n = rows.stop - rows.start
        feats = torch.zeros((n, DIM), dtype=torch.float32, device=dev)
        status = np.empty(n, dtype=np.uint8)
        failures: list[tuple[int, str, str]] = []
        done = rows.start
        while done < rows.stop:
            t = time.perf_counter()
            _, pixels, cpu_rows, st, raw, errors = next(self.it)
            self.waited += time.perf_counter() - t
            m = len(st)
            x, ok = to_device(pixels, dev), np.asarray(cpu_rows, dtype=np.int64)
            if raw:
                gpu_rows, gpu_pixels, failed = gpu_decode(raw, dev, pre["resize"], pre["crop"])
                host_rows, host_pixels = self._refused(done, failed, st, errors)
                for more_rows, more in ((gpu_rows, gpu_pixels), (host_rows, host_pixels)):
                    if more is not None:
                        x, ok = torch.cat([x, more]), np.concatenate([ok, np.array(more_rows, dtype=np.int64)])
            if len(ok):
                if self.pad_batches and len(ok) < self.batch_size:
                    x = torch.cat([x, x.new_zeros((self.batch_size - len(ok), *x.shape[1:]))])
                # out of device memory: the batch again in halves (and the next batches in pieces that size)
                f, self.model_batch = shrinking_on_oom(lambda size: self._model(x, size), self.model_batch, 1,
                                                       "image", dev, "--batch-size")
                feats[to_device(done - rows.start + ok, dev)] = f[:len(ok)].float()
            status[done - rows.start:done - rows.start + m] = st
            failures += errors
            done += m
        # float16 on the device, as the store keeps them: half the bytes back, and a faster conversion
        return feats.half().cpu().numpy(), status, failures

    def _refused(self, start: int, failed: list[int], status, errors: list) -> tuple[list[int], torch.Tensor | None]:
        """The images nvJPEG refused (a JPEG variant it does not support), decoded with PIL here, on the
        host: their pixels on the device, or their status and reason where PIL cannot decode them either.
        Said once per job, naming the first such post, so that a decoder refusing everything is seen."""
        rows, pixels = [], []
        if failed:
            block = self.store.block_rows((start + failed[0]) // self.store.block)
            if self._paths[0] != block.start:        # the block's paths, read once (a read decodes them all)
                self._paths = (block.start, self.store["posts/image"][block])
        for i in failed:
            rel = str(self._paths[1][start + i - self._paths[0]])
            try:
                pixels.append(decode(os.path.join(self.root, rel), self.pre["resize"], self.pre["crop"]))
                rows.append(i)
            except ImageError as e:
                status[i] = e.status
                errors.append((start + i, rel, e.reason))
        if failed and not self.refused:
            post = self.store["posts/id"][start + failed[0]]
            warn(f"image: nvJPEG refused post {post} ({self._paths[1][start + failed[0] - self._paths[0]]}); "
                 f"decoding what it refuses with PIL")
        self.refused += len(failed)
        return rows, (to_device(np.stack(pixels), self.dev) if pixels else None)

    def _model(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """Features of a batch of uint8 NHWC pixels on the device, `size` images at a time."""
        with autocast(self.dev, self.prec):
            parts = [self.features(normalize(x[i:i + size], self.pre["mean"], self.pre["std"])
                                   .contiguous(memory_format=torch.channels_last)) for i in range(0, len(x), size)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def close(self) -> None:
        self.it = iter(())                      # the worker processes end with the loader's iterator


def run_images(url: str, shard: str, *, encoder_path: str, batch_size: int | None = None,
               workers: int | None = None, device: str = "auto", precision: str = "auto",
               decoder: str = "pil", exact: bool = False, dataset: str | None = None, compile: bool = False,
               quiet: bool = False):
    from cache.blocks import parse_shard
    from cache.store import open_store
    from extract.jobs import run_shard
    sh = parse_shard(shard)
    if decoder not in ("pil", "nvjpeg"):
        raise UserError(f"--decoder must be pil or nvjpeg, got {decoder!r}")
    dev = pick_device(device, slow_on_cpu=True)
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
    if batch_size is None:
        batch_size = 256 if dev.type == "cuda" else 32
    if workers is None:
        workers = min(usable_cpus(), 16)
    if batch_size < 1 or workers < 0:
        raise UserError("--batch-size must be >= 1 and --workers >= 0")
    job = ImageJob(load_encoder(encoder_path), store, root, dev, prec, batch_size=batch_size, workers=workers,
                   exact=exact, decoder=decoder, compile=compile)
    return run_shard(store, sh, job, quiet=quiet)
