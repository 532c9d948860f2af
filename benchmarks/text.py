"""Benchmark of `extract text` against a plain loop, same BERT-base-shaped model, same captions.

    python -m benchmarks.text [--influencers 80] [--posts 30] [--device auto]

Plain loop: every caption padded to 128 tokens, batches of 32 in caption order, fp32.
`extract text`: the shard job itself (length-sorted token-budget batches, prefetching,
bf16 where the hardware has it). Also prints the model FLOP/s each achieves (useful
tokens only) against this machine's measured matmul peak.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import torch

from cache.store import open_store
from extract.index import run_index
from extract.sample import make_sample
from extract.text import _random_encoder, load_text_encoder, run_text
from runtime.device import pick_device


def matmul_peak(dtype, device, n=2048, reps=10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def flops_per_caption(model, lengths) -> np.ndarray:
    """Forward FLOPs: 2 × (non-embedding weights) per token, plus attention's QKᵀ and AV."""
    c = model.config
    dense = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n and p.dim() == 2)
    lengths = np.asarray(lengths, dtype=np.float64)
    return 2 * dense * lengths + 4 * c.num_hidden_layers * c.hidden_size * lengths ** 2


def plain_loop(captions: list[str], tokenizer, model, device) -> float:
    """The reference: every caption padded to 128 tokens, batches of 32 in order, fp32; seconds."""
    model = model.to(device).eval()
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(captions), 32):
            enc = tokenizer(captions[i:i + 32], padding="max_length", truncation=True, max_length=128,
                            return_tensors="pt").to(device)
            model(**enc).last_hidden_state[:, 0].float().cpu()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--influencers", type=int, default=80)
    ap.add_argument("--posts", type=int, default=30)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--captions-file", help="benchmark on a store already indexed elsewhere (path)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-text-")
    try:
        data, url = os.path.join(tmp, "data"), os.path.join(tmp, "s.zarr")
        make_sample(data, args.influencers, args.posts, seed=0, image_size=16)
        run_index(data, url, workers=1, quiet=True)
        store = open_store(url)
        captions = [str(c) for c in store["posts/caption"][:]]
        device = pick_device(args.device)
        print(f"{len(captions)} captions on {device} ({torch.get_num_threads()} threads)")

        # The same random BERT-base weights and vocabulary for both runs (fixed seed).
        tokenizer, model = _random_encoder(captions)
        plain_s = plain_loop(captions, tokenizer, model, device)

        enc = load_text_encoder("random", store, device=args.device)
        lengths = [len(x) for x in enc.prepare(captions).ids]
        report = run_text(url, "0/1", model="random", device=args.device, quiet=True)
        ours_s = report.seconds

        flops = flops_per_caption(enc.model, lengths).sum()
        peak32 = matmul_peak(torch.float32, device)
        peak_prec = matmul_peak({"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[enc.precision], device)
        n = len(captions)
        print(f"{'run':<44} {'s':>7} {'captions/s':>11} {'x plain':>8} {'GFLOP/s':>9} {'% peak':>7}")
        print(f"{'plain loop (pad 128, batch 32, fp32, order)':<44} {plain_s:>7.1f} {n / plain_s:>11.1f} {1:>8.2f} "
              f"{flops / plain_s / 1e9:>9.1f} {100 * flops / plain_s / peak32:>6.1f}%")
        print(f"{'extract text (' + enc.precision + ', sorted, token budget)':<44} {ours_s:>7.1f} {n / ours_s:>11.1f} "
              f"{plain_s / ours_s:>8.2f} {flops / ours_s / 1e9:>9.1f} {100 * flops / ours_s / peak_prec:>6.1f}%")
        print(f"matmul peak measured: fp32 {peak32 / 1e9:.0f} GFLOP/s, {enc.precision} {peak_prec / 1e9:.0f} GFLOP/s; "
              f"mean tokens/caption {np.mean(lengths):.1f} (plain loop computes 128)")
        print(f"10,180,500 captions at this rate: {10_180_500 / (n / ours_s) / 3600:.1f} h on this device")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
