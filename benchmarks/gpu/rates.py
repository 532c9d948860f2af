"""The GPU check's rates: the jobs, the plain loops beside them, the decoders and the models alone."""
from __future__ import annotations

import copy
import os
import time

import numpy as np


def plain_text(url: str, device, limit: int) -> dict:
    from benchmarks.text import plain_loop
    from cache.store import open_store
    from extract.text import _random_encoder
    captions = [str(c) for c in open_store(url)["posts/caption"][:limit]]
    tokenizer, model = _random_encoder(captions)
    return {"captions": len(captions), "per_s": len(captions) / plain_loop(captions, tokenizer, model, device)}


def job_text(url: str, device: str, compile: bool = False, workers: int = 0) -> dict:
    from extract.text import run_text
    return {**job_figures(run_text(url, "0/1", model="random", device=device, compile=compile, workers=workers,
                                   quiet=True)), "workers": workers}


def job_figures(r) -> dict:
    """A shard job's rate after its first block (the rate of a long job), and the whole run's."""
    return {"rows": r.rows, "per_s": r.steady_per_s or r.rows / r.seconds, "whole_run_per_s": r.rows / r.seconds,
            "first_block_s": round(r.first_block_s, 2), "loop_s": round(r.seconds, 2), "blocks": r.blocks_done,
            "close_s": round(r.close_s, 2),
            "wait_s": round(r.wait_s, 2), "encode_s": round(r.encode_s, 2), "commit_s": round(r.commit_s, 2),
            "write_s": round(r.write_s, 2)}


def finetune_encoder(url: str, out: str, dry: bool, device: str, precision: str = "auto") -> dict:
    from extract.finetune import FinetuneConfig, finetune
    m = finetune(url, out, FinetuneConfig(weights="random", epochs=1, image_size=75 if dry else 299,
                                          batch_size=16 if dry else 64, workers=0 if dry else None, device=device,
                                          precision=precision),
                 log=lambda *a: None, quiet=True)
    return {"val_accuracy": m["val_accuracy"], "train_posts": m["train_posts"]}


def image_paths(url: str, data: str, limit: int) -> list[str]:
    from cache.store import open_store
    return [os.path.join(data, str(p)) for p in open_store(url)["posts/image"][:] if str(p)][:limit]


def plain_images(paths: list[str], encoder: str, device) -> dict:
    from benchmarks.images import plain_loop
    from extract.images import load_encoder
    return {"images": len(paths), "per_s": len(paths) / plain_loop(paths, load_encoder(encoder).encoder, device)}


def job_images(url: str, encoder: str, device: str, decoder: str, workers, compile: bool = False,
               precision: str = "auto") -> dict:
    from extract.images import run_images
    return {**job_figures(run_images(url, "0/1", encoder_path=encoder, device=device, decoder=decoder, workers=workers,
                                     compile=compile, precision=precision, quiet=True)), "precision": precision}


def decode_rates(paths: list[str], workers: int) -> dict:
    from benchmarks.images import decode_fast, decode_plain, decode_workers
    n = len(paths)
    out = {"plain_per_s": n / decode_plain(paths), "fast_per_s": n / decode_fast(paths), "workers": workers}
    if workers:
        out["workers_per_s"] = n / decode_workers(paths, workers)
    return out


def nvjpeg_decode_rate(paths: list[str], device) -> dict:
    import torch
    from torchvision.io import decode_jpeg
    raw = [torch.frombuffer(bytearray(open(p, "rb").read()), dtype=torch.uint8) for p in paths]
    decode_jpeg(raw[:8], device=device)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(0, len(raw), 256):
        decode_jpeg(raw[i:i + 256], device=device)
    torch.cuda.synchronize()
    return {"per_s": len(raw) / (time.perf_counter() - t)}


def model_only(encoder: str, device, batch: int, reps: int, crop: int, compile: bool = False) -> dict:
    import torch
    from extract.images import load_encoder
    from runtime.device import DTYPES, maybe_compile, pick_precision
    model = load_encoder(encoder).encoder.to(device).eval().to(memory_format=torch.channels_last)
    features = maybe_compile(model.features, compile)
    prec = pick_precision("auto", device)
    x = torch.randn(batch, 3, crop, crop, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=DTYPES[prec], enabled=prec != "fp32"):
        t = time.perf_counter()
        features(x)
        warm_s = time.perf_counter() - t
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            features(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return {"per_s": batch * reps / (time.perf_counter() - t), "precision": prec, "batch": batch,
            "first_call_s": round(warm_s, 1)}


def text_model(url: str, device: str, compile: bool, n: int) -> dict:
    """Captions/s of the text encoder alone (tokenised beforehand), after a warm-up pass over the same
    captions, so that torch.compile's compilations are not in the rate."""
    from cache.store import open_store
    from extract.text import load_text_encoder
    s = open_store(url)
    enc = load_text_encoder("random", s, device=device, compile=compile)
    prepared = enc.prepare([str(c) for c in s["posts/caption"][:n]])
    t = time.perf_counter()
    enc.encode(prepared)
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    enc.encode(prepared)
    return {"per_s": len(prepared.lengths) / (time.perf_counter() - t), "first_pass_s": round(warm_s, 1),
            "precision": enc.precision}


def tokenizer_threads() -> int:
    """Threads the Rust tokenizer's batch call spreads over in this process: its rayon pool (one per
    usable CPU, or RAYON_NUM_THREADS), or 1 where TOKENIZERS_PARALLELISM turns that off (as in the
    `--workers` processes)."""
    if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("0", "false", "off", "no"):
        return 1
    from runtime.cpus import usable_cpus
    return int(os.environ.get("RAYON_NUM_THREADS") or usable_cpus())


def text_host(url: str, workers: int = 0) -> dict:
    """The text job's host stages alone, block by block in one thread, no model: reading the block's
    captions, tokenising them (the job's in-process tokeniser, whose Rust batch call spreads over
    `tokenizer_threads` threads by itself), padding its batches. Microseconds per caption, and the rate
    the job's prefetch thread could feed the model at; the job's writing is in its own split.
    With `workers`, also the rate `workers` tokenising processes deliver the blocks at (after the first).
    The reference for the tokeniser's cut of long captions (extract.tokenise): each block tokenised
    whole right after, the same ids checked (`tokenise_whole_us`, `tokenise_cut_gain`)."""
    from cache.store import open_store
    from extract.text import load_text_encoder
    s = open_store(url)
    enc = load_text_encoder("random", s, device="cpu", precision="fp32")
    captions, spent, rows = s["posts/caption"], np.zeros(3), 0
    blocks = [s.block_rows(b) for b in range(s.n_blocks)]
    whole, whole_s = None, 0.0
    if enc.tokenise._cut:       # the reference: the same blocks tokenised whole (long captions not cut)
        whole = copy.copy(enc.tokenise)
        whole._cut = None
    for k, r in enumerate(blocks):
        t0 = time.perf_counter()
        texts = [str(c) for c in captions[r]]
        read = time.perf_counter() - t0
        if whole is not None and k % 2:         # the reference first in every other block: no order bias
            t3 = time.perf_counter()
            ref = whole(texts)
            whole_s += time.perf_counter() - t3
        t1 = time.perf_counter()
        prepared = enc.prepare(texts)
        t2 = time.perf_counter()
        for _ in enc.padded(prepared):
            pass
        spent += (read, t2 - t1, time.perf_counter() - t2)
        rows += len(texts)
        if whole is not None and not k % 2:
            t3 = time.perf_counter()
            ref = whole(texts)
            whole_s += time.perf_counter() - t3
        if whole is not None:
            assert np.array_equal(ref.flat, prepared.flat), "cut captions gave other ids"
    us = spent / max(rows, 1) * 1e6
    out = {"rows": rows, "tokenizer_threads": tokenizer_threads(), "read_us": round(float(us[0]), 1),
           "tokenise_us": round(float(us[1]), 1),
           "pad_us": round(float(us[2]), 1), "per_s": 1e6 / float(us.sum()) if us.sum() else None}
    if whole is not None:
        whole_us = whole_s / max(rows, 1) * 1e6
        out.update(tokenise_whole_us=round(whole_us, 1), tokenise_cut_gain=round(whole_us / float(us[1]), 2))
    if workers and len(blocks) > 1:     # the same blocks read and tokenised by `extract text --workers`' processes
        from extract.tokenise import TokenisingWorkers
        t0 = time.perf_counter()
        pool = TokenisingWorkers(enc.tokenise, url, blocks, workers)
        try:
            pool.next(blocks[0])
            t1 = time.perf_counter()
            for r in blocks[1:]:
                pool.next(r)
            t2 = time.perf_counter()
        finally:
            pool.close()
        first = blocks[0].stop - blocks[0].start
        out.update(workers=workers, workers_first_block_s=round(t1 - t0, 2),
                   workers_per_s=(rows - first) / (t2 - t1) if t2 > t1 else None)
    return out
