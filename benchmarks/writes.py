"""Benchmark: a shard job's writes overlapped with encoding (extract.jobs) against writing in the loop.

    python -m benchmarks.writes [--blocks 6] [--block 16384] [--text-rate 43670] [--image-rate 7444]

A GPU encodes a block in a fraction of a second; every block is then committed to the store
(features, statuses, done flag). Written in the job's loop, the GPU waits for every commit; in the
writer thread (`run_shard`'s default) the commit of block i runs while block i+1 is encoded.
No GPU is needed to measure that: the encoder is simulated by a job whose `encode` sleeps for as
long as the model alone took on an H200 (43,670 captions/s for BERT-base, 7,444 images/s for
Inception, benchmarks/results/gpu-h200-2026-11-26-run2.md; a sleep releases the GIL as the host's
wait on CUDA does) and returns float16 features of the right shape (text: dense, stored raw;
images: ReLU-sparse, stored zstd-compressed). The same blocks, on fresh copies of one store, are
run with `overlap_writes=False` (the reference) and with the default, in one run.

Also prints the float32 → float16 conversion the store needs, by numpy (what the encoders' float32
features went through in `commit_block`) against torch (what the encoders now do before copying
back), on one block.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

import numpy as np

from benchmarks._util import scratch
from cache import schema
from cache.blocks import parse_shard
from cache.store import open_store
from cache.synthetic import planted_store
from extract.jobs import run_shard


class SimulatedEncoder:
    """A BlockJob (extract.jobs) whose model takes rows / rate seconds and gives fixed features."""
    waited = 0.0

    def __init__(self, modality: str, rate: float, block: int):
        self.modality, self.rate = modality, rate
        self.unit = "captions" if modality == "text" else "images"
        self.fingerprint = {"kind": modality, "model": "simulated"}
        rng = np.random.default_rng(0)
        x = rng.normal(0, 1, (block, schema.MODALITIES[modality])).astype(np.float32)
        self.features = (np.maximum(x, 0) if modality == "image" else x).astype(np.float16)

    def plan(self, blocks):
        pass

    def prepare(self, rows: slice) -> slice:
        return rows

    def encode(self, rows: slice):
        n = rows.stop - rows.start
        time.sleep(n / self.rate)
        return self.features[:n], np.full(n, schema.Status.OK, dtype=np.uint8), []

    def close(self):
        pass


def conversion(block: int) -> dict:
    import torch
    x = np.random.default_rng(0).normal(0, 1, (block, 1024)).astype(np.float32)
    best = {"numpy": np.inf, "torch": np.inf}
    for _ in range(3):
        t = time.perf_counter()
        a = x.astype(np.float16)
        best["numpy"] = min(best["numpy"], time.perf_counter() - t)
        t = time.perf_counter()
        b = torch.from_numpy(x).half().numpy()
        best["torch"] = min(best["torch"], time.perf_counter() - t)
    assert np.array_equal(a, b)     # the same rounding (to nearest, ties to even)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--block", type=int, default=16_384, help="rows per block (the release's store: 16,384)")
    ap.add_argument("--text-rate", type=float, default=43_670)
    ap.add_argument("--image-rate", type=float, default=7_444)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    posts = args.blocks * args.block // 128 * 128
    with scratch("bench-writes-", args.keep) as tmp:
        template = os.path.join(tmp, "template.zarr")
        planted_store(template, influencers=posts // 128, posts=128, block=args.block, write_features=False)
        print(f"store: {posts:,} posts in {args.blocks} blocks of {args.block:,}; encoder simulated at the "
              f"H200's model-alone rates; {os.cpu_count()} cores")
        print(f"{'modality':<8} {'writes':<18} {'rate/s':>9} {'x model':>8} {'wait writes s':>14} {'writer s':>9} "
              f"{'per block ms':>13}")
        for modality, rate in (("text", args.text_rate), ("image", args.image_rate)):
            rates = {}
            for overlap in (False, True):
                url = os.path.join(tmp, f"{modality}-{overlap}.zarr")
                shutil.copytree(template, url)
                job = SimulatedEncoder(modality, rate, args.block)
                t = time.perf_counter()
                r = run_shard(open_store(url, "r+"), parse_shard("0/1"), job, quiet=True, overlap_writes=overlap)
                seconds = time.perf_counter() - t
                rates[overlap] = r.rows / seconds
                print(f"{modality:<8} {'overlapped' if overlap else 'in the loop (ref)':<18} {rates[overlap]:>9,.0f} "
                      f"{rates[overlap] / rate:>8.2f} {r.commit_s:>14.2f} {r.write_s:>9.2f} "
                      f"{r.write_s / r.blocks_done * 1000:>13.0f}")
                assert r.rows == posts
                shutil.rmtree(url)
            print(f"{modality:<8} overlapped / in the loop: {rates[True] / rates[False]:.2f}x")
    c = conversion(args.block)
    print(f"float32 -> float16, one {args.block:,} x 1024 block: numpy {c['numpy'] * 1000:.0f} ms, "
          f"torch {c['torch'] * 1000:.0f} ms ({c['numpy'] / c['torch']:.1f}x)")


if __name__ == "__main__":
    main()
