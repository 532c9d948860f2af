"""The prepared GPU check (`make bench-gpu`): extraction on CUDA against plain loops, in one short run.

    python -m benchmarks.gpu [--posts 20000] [--out DIR] [--dry-run]

On a GPU machine (offline; zarr, numcodecs and dask installed from the wheels in .whl/ by
`make bench-gpu`), on a release-like sample built here (360 px photo-like JPEGs of about 15 KB,
the sample's captions), it measures:
- `extract text` (BERT-base shape, random weights: throughput is the same as the real model's)
  against a plain loop on the same GPU (pad to 128, batch 32, fp32);
- `extract images` with PIL decoding workers and with `--decoder nvjpeg`, against a plain loop
  (PIL full decode, torchvision transforms, batch 32, fp32); decode-only rates (one process, the
  job's worker count) and the model alone on synthetic tensors, so the bottleneck is named;
- features computed on CUDA against a CPU fp32 reference on a few hundred posts (cosine);
- how often each job's loop makes the host wait for the GPU (torch.profiler, one block of each);
- `heads fit` and `heads predict` on CUDA;
- `--compile` (torch.compile) against the same model uncompiled, steady state after a warm-up pass
  (text encoder on tokenised captions; Inception on synthetic tensors), last, since compiling takes
  minutes; the README keeps it off by default until this has shown it pays;
and prints one table (captions/s, images/s, ratio to the plain loop, GPU memory peak and busy
share sampled with nvidia-smi, decode workers) with the extrapolation to 10.2 M posts per GPU.
Every step is timed and its failure recorded, so one broken path does not lose the others.
`--dry-run` runs the same code on the CPU with tiny sizes (a test runs it, so it cannot rot).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback

import numpy as np


RELEASE_POSTS = 10_180_500
FLOORS = {"text": 20_000, "images": 5_000}        # per second on one H100 (issue #17)
# An image path keeps the features when, on every row against the fp32 PIL job, at most TAIL_SHARE of
# the rows fall under a cosine of 0.99 and none under TAIL_FLOOR, and its first 256 posts are at 0.99 or
# above against the CPU's fp32 reference (issue #17's floor); benchmarks/precision.py shows what such
# rows do to a classifier's labels.
TAIL_SHARE, TAIL_FLOOR = 0.005, 0.95


class GpuSampler:
    """nvidia-smi's utilisation and memory every 0.2 s while a step runs (n/a without a GPU)."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                util, mem = out.stdout.strip().splitlines()[0].split(",")
                self.samples.append((float(util), float(mem)))
            except Exception:
                pass
            self._stop.wait(0.2)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def busy(self):
        return sum(u for u, _ in self.samples) / len(self.samples) if self.samples else None

    def memory_mib(self):
        return max(m for _, m in self.samples) if self.samples else None


SKIP: set[str] = set()


def step(results: dict, name: str, fn, *args, **kw):
    """Run one measured step; record its figures, or its failure, under `name`, and write everything
    so far to $OUT/gpu-bench.json (a run killed by its time limit still returns what it measured)."""
    if name in SKIP:
        print(f"{name}: skipped (--skip)", flush=True)
        return {}
    t = time.perf_counter()
    with GpuSampler() as g:
        try:
            out = fn(*args, **kw) or {}
            out["ok"] = True
        except Exception as e:       # a broken path is a result too: record it and go on
            out = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                   "traceback": traceback.format_exc()[-2000:]}
    out.update(wall_s=round(time.perf_counter() - t, 2), gpu_busy_pct=g.busy(), gpu_memory_mib=g.memory_mib())
    results[name] = out
    save(results)
    state = "ok" if out["ok"] else f"FAILED ({out['error']})"
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {state} in {out['wall_s']} s", flush=True)
    return out


def save(results: dict) -> None:
    out = results.get("_out")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "gpu-bench.json"), "w") as f:
            json.dump({k: v for k, v in results.items() if k != "_out"}, f, indent=2, default=str)
        if isinstance(results.get("sample"), dict):
            with open(os.path.join(out, "gpu-bench.md"), "w") as f:
                f.write(table(results, results["device"]) + "\n")


def build(tmp: str, posts: int, image_size: int, workers: int, repeat: int) -> dict:
    """The release-like sample: patterns drawn at 90 px (drawing 360 px ones took 340 s for 12 k
    posts on one core), enlarged to `image_size`, softened and saved as ~15 KB JPEGs in `workers`
    processes; then indexed and labelled."""
    from benchmarks.images import photo_like
    from cache.labels import apply_labels
    from cache.store import open_store
    from extract.index import run_index
    from extract.sample import make_sample
    data, url = os.path.join(tmp, "data"), os.path.join(tmp, "pil.zarr")
    per = 50 if posts >= 1000 else 2           # the dry run: 24 influencers, 3 per category, so every split has some
    make_sample(data, max(24, posts // per), per, seed=0, image_size=min(90, image_size), clean=True)
    kb = photo_like(data, size=image_size, workers=max(1, workers))
    # blocks of 2,048 rows (the release's store uses 16,384): ~9 blocks, so the jobs reach their steady
    # state (tokenising or decoding the next block while the model runs this one) and it can be measured
    run_index(data, url, block=2048 if posts >= 1000 else 16, workers=min(os.cpu_count() or 1, 16), quiet=True)
    apply_labels(open_store(url, "r+"), os.path.join(data, "labels/influencers.csv"),
                 os.path.join(data, "labels/posts.csv"), seed=0)
    repeated(url, os.path.join(tmp, "jobs.zarr"), repeat)
    apply_labels(open_store(os.path.join(tmp, "jobs.zarr"), "r+"), os.path.join(data, "labels/influencers.csv"),
                 os.path.join(data, "labels/posts.csv"), seed=0)
    shutil.copytree(os.path.join(tmp, "jobs.zarr"), os.path.join(tmp, "jobs-b.zarr"))    # the second job of each kind
    shutil.copytree(os.path.join(tmp, "jobs.zarr"), os.path.join(tmp, "jobs-c.zarr"))    # the fp32 image job's
    shutil.copytree(url, os.path.join(tmp, "oom.zarr"))       # oom_recovery's (its first block only)
    s, j = open_store(url), open_store(os.path.join(tmp, "jobs.zarr"))
    return {"data": data, "posts": s.n_posts, "jpeg_kb": round(kb, 1),
            "images": sum(1 for p in s["posts/image"][:] if str(p)), "job_rows": j.n_posts, "job_blocks": j.n_blocks,
            "repeat": repeat}


def repeated(src: str, dst: str, times: int) -> None:
    """The sample's store with its posts and influencers repeated `times` over (ids and usernames made
    unique, the same captions and image files), unlabelled (`cache labels` with the sample's files
    labels the first copy only: the others' ids are not in them), features empty.
    The jobs run on it so that they last long enough for a steady state: a 20 k-post sample is one
    second of text at the floor's rate, and the jobs' workers would tokenise or decode all of it ahead
    while the first block starts up, so the rate after the first block would not include them."""
    from cache import schema
    from cache.store import create_features, create_labels, create_store, open_store, write_influencers
    s = open_store(src)
    d = create_store(dst, s.group.attrs["dataset_root"], s.block)
    n, m = s.n_posts, s.n_influencers
    for name in schema.POST_STR + ["influencer"] + schema.POST_INT:
        a = s[f"posts/{name}"][:]
        if name == "id":
            parts = [a if k == 0 else np.array([f"{x}.{k}" for x in a], dtype=object) for k in range(times)]
        elif name == "influencer":
            parts = [a + k * m for k in range(times)]
        else:
            parts = [a] * times
        d[f"posts/{name}"].append(np.concatenate(parts))
    offsets = s["influencers/offsets"][:]
    table = {"username": np.concatenate([np.array([f"{u}.{k}" if k else str(u) for u in s["influencers/username"][:]],
                                                  dtype=object) for k in range(times)]),
             "offsets": np.concatenate([offsets[:-1] + k * n for k in range(times)] + [[times * n]]).astype(np.int64)}
    for name in schema.INFLUENCER_INT + ["release_category"]:
        table[name] = np.tile(s[f"influencers/{name}"][:], times)
    write_influencers(d, table)
    create_labels(d)
    create_features(d)
    d.group.attrs.update({k: v for k, v in s.group.attrs.items()
                          if k not in ("block", "dataset_root", "index_stats", "labels")})


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


DECODE_RANGE = "extract.nvjpeg.gpu_decode"
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def host_syncs(url: str, data: str, encoder: str, device: str) -> dict:
    """How often each encoder's loop makes the host wait for the GPU, counted by torch.profiler (CUDA
    runtime calls that block: stream, device and event synchronisations, synchronous memcpy) over one
    block after a warm-up block. One per block is the design (the features come back once); one or
    more per batch means the host and the GPU take turns instead of overlapping. The nvJPEG job's
    waits inside the decode call are reported apart (`image_nvjpeg_decoder_syncs`): torchvision's
    decode_jpeg synchronises its own stream, which holds only the decode, not the model."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from cache.store import open_store
    from extract.images import ImageJob, load_encoder
    from extract.text import load_text_encoder
    dev = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])

    seen = {"runtime_calls": 0}      # every CUDA runtime call the profiler saw: 0 on a GPU means it saw none
    inside = {"decoder_syncs": 0, "decode_calls": 0}

    def count(fn) -> int:
        """Blocking calls in fn; those inside the nvJPEG decode (DECODE_RANGE) are counted apart in
        `inside`: torchvision's decode_jpeg waits for its own CUDA stream, not for the model."""
        with profile(activities=activities) as prof:
            fn()
        events = prof.events()
        seen["runtime_calls"] += sum(1 for e in events if e.name.startswith("cuda"))
        ranges = [(e.time_range.start, e.time_range.end) for e in events if e.name == DECODE_RANGE]
        syncs = [e.time_range.start for e in events if e.name in SYNC_CALLS]
        decoder = sum(1 for t in syncs if any(a <= t <= b for a, b in ranges))
        inside["decoder_syncs"] += decoder
        inside["decode_calls"] += len(ranges)
        return len(syncs) - decoder

    s = open_store(url)
    enc = load_text_encoder("random", s, device=device)
    rows = s.block_rows(min(1, s.n_blocks - 1))
    prepared = enc.prepare([str(c) for c in s["posts/caption"][rows]])
    enc.encode(prepared)
    out = {"text_batches": sum(1 for _ in enc.padded(prepared)), "text_syncs": count(lambda: enc.encode(prepared))}
    import extract.images as images
    plain_decode = images.gpu_decode

    def marked_decode(*args, **kwargs):
        with torch.profiler.record_function(DECODE_RANGE):
            return plain_decode(*args, **kwargs)
    images.gpu_decode = marked_decode
    try:
        for decoder in ("pil", "nvjpeg"):
            job = ImageJob(load_encoder(encoder), s, data, dev, enc.precision, 256 if dev.type == "cuda" else 8,
                           min(4, os.cpu_count() or 1) if dev.type == "cuda" else 0, False, decoder)
            try:
                blocks = list(range(min(2, s.n_blocks)))
                job.plan(blocks)
                job.encode(s.block_rows(blocks[0]))
                last = s.block_rows(blocks[-1])
                out.update(image_batches=-(-(last.stop - last.start) // job.batch_size),
                           **{f"image_{decoder}_syncs": count(lambda: job.encode(last)) if len(blocks) > 1 else None})
            finally:
                job.close()
    finally:
        images.gpu_decode = plain_decode
    out.update(image_nvjpeg_decoder_syncs=inside["decoder_syncs"], image_nvjpeg_decode_calls=inside["decode_calls"])
    out["cuda_runtime_calls_seen"] = seen["runtime_calls"]
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosines between two feature arrays (float64)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest row-wise cosine between two feature arrays."""
    return float(cosines(a, b).min())


def store_cosines(a: str, b: str, m: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows two stores both encoded (status OK) for modality `m` ("text" or "image"), the cosine
    between their features on each (-1 where either holds NaN), and which hold NaN."""
    from cache import schema
    from cache.store import open_store
    sa, sb = open_store(a), open_store(b)
    ok = (sa[f"features/{m}_status"][:] == schema.Status.OK) & (sb[f"features/{m}_status"][:] == schema.Status.OK)
    rows = np.flatnonzero(ok)
    fa = sa[f"features/{m}"].get_orthogonal_selection((rows,))
    fb = sb[f"features/{m}"].get_orthogonal_selection((rows,))
    nan = ~(np.isfinite(fa).all(1) & np.isfinite(fb).all(1))
    cos = cosines(fa, fb)
    cos[nan] = -1.0
    return rows, cos, nan


def jobs_agree(a: str, b: str, base: int = 0) -> dict:
    """Every row of two stores whose jobs encoded the same posts by different paths (text in one process
    and in `--workers` processes; images decoded by PIL and by nvJPEG): the smallest cosine, the rows
    under 0.99, the rows holding NaN. A path that corrupts some batches (pytorch/vision#9606 wrote
    into the model's memory) shows here on rows the first-posts agreement never reads. With `base`
    (the stores hold a sample of `base` posts repeated, `repeated`), where the rows under 0.99 fall:
    the same posts in every copy is the two paths' preprocessing differing on those images; rows
    scattered over the copies is a path that corrupts batches."""
    out = {}
    for m in ("text", "image"):
        rows, cos, nan = store_cosines(a, b, m)
        if not len(rows):
            continue
        out.update({f"{m}_rows": len(rows), f"{m}_min_cosine": float(cos.min()),
                    f"{m}_rows_under_0.99": int((cos < 0.99).sum()), f"{m}_nan_rows": int(nan.sum()),
                    f"{m}_lowest_rows": [int(x) for x in rows[np.argsort(cos, kind="stable")[:16]]]})
        if base:
            low = rows[cos < 0.99] % base
            posts, copies = np.unique(low, return_counts=True)
            copies_of = np.bincount(rows % base, minlength=base)          # the copies each post has in `rows`
            out.update({f"{m}_posts_under_0.99": len(posts),
                        f"{m}_posts_under_0.99_in_every_copy": int((copies == copies_of[posts]).sum())})
    return out


def decoded_pixels(url: str, data: str, device, lowest: list[int], n: int = 16) -> dict:
    """The device decoder's pixels against libjpeg-turbo's (torchvision's decode_jpeg on the CPU) for
    the posts whose nvJPEG features were furthest from PIL's (jobs_agree's lowest rows) and for `n`
    others: mean and largest absolute difference per image, in levels. Low rows whose pixels differ
    much more than the others' were decoded differently (nvJPEG's hardware decoder takes baseline
    JPEGs); pixels as close as the others' put the difference after decoding (bf16, or corruption)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from cache.store import open_store
    from extract.nvjpeg import decode_jpegs
    paths = open_store(url)["posts/image"][:]
    others = [int(x) for x in np.random.default_rng(0).choice(len(paths), size=min(n, len(paths)), replace=False)]

    def diffs(rows):
        mean, peak = [], []
        for r in rows:
            p = os.path.join(data, str(paths[r]))
            raw = torch.frombuffer(bytearray(open(p, "rb").read()), dtype=torch.uint8)
            ref = decode_jpeg(raw, mode=ImageReadMode.RGB).int()
            got = decode_jpegs([raw], torch.device(device))[0]
            d = (got.cpu().int() - ref).abs() if got is not None and got.shape == ref.shape else None
            mean.append(float(d.float().mean()) if d is not None else None)
            peak.append(int(d.max()) if d is not None else None)
        return mean, peak
    lm, lp = diffs(lowest[:n])
    om, op = diffs(others)
    return {"lowest_rows": lowest[:n], "lowest_mean_diff": lm, "lowest_max_diff": lp,
            "other_rows": others, "other_mean_diff": om, "other_max_diff": op}


def oom_recovery(url: str, encoder: str, device: str, gib: float, ref: str) -> dict:
    """Both jobs on one block with the device's memory capped below what their default batches need
    (torch's caching allocator limited to `gib` GiB: a small GPU, or a MIG slice): each must halve its
    batches until they fit (runtime.device.shrinking_on_oom), finish the block, and say what it did.
    On the CPU (the dry run) the out-of-memory error is raised by the model above 4 images or 256
    tokens a batch instead, the same path without a device. Its first block's features are compared
    with the uncapped jobs' on the same posts (`ref`'s first block): minimum cosine."""
    import logging

    import torch
    import extract.images as images
    import extract.text as text
    from cache import schema
    from cache.store import open_store
    from extract.images import run_images
    from extract.text import run_text
    from runtime.device import OUT_OF_MEMORY
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    log = logging.getLogger("profiler")
    log.addHandler(handler)
    dev = torch.device(device)
    undo = []
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(gib * 2**30 / torch.cuda.get_device_properties(dev).total_memory)
        undo.append(lambda: torch.cuda.set_per_process_memory_fraction(1.0))
    else:                           # emulated: the models refuse big batches as a full device would
        plain_model, plain_compile = images.ImageJob._model, text.maybe_compile

        def model(job, x, size):
            if size > 4:
                raise OUT_OF_MEMORY("emulated: out of memory")
            return plain_model(job, x, size)

        def compile_(module, enabled):
            forward = plain_compile(module, enabled)

            def limited(input_ids, attention_mask):
                if input_ids.numel() > 256:
                    raise OUT_OF_MEMORY("emulated: out of memory")
                return forward(input_ids=input_ids, attention_mask=attention_mask)
            return limited
        images.ImageJob._model, text.maybe_compile = model, compile_
        undo.append(lambda: (setattr(images.ImageJob, "_model", plain_model),
                             setattr(text, "maybe_compile", plain_compile)))
    shard = f"0/{open_store(url).n_blocks}"       # the first block only
    try:
        t = time.perf_counter()
        r_text = run_text(url, shard, model="random", device=device, quiet=True)
        t_text = time.perf_counter() - t
        text_said = list(said)
        t = time.perf_counter()
        r_img = run_images(url, shard, encoder_path=encoder, device=device, workers=min(4, os.cpu_count() or 1),
                           quiet=True)
        t_img = time.perf_counter() - t
    finally:
        for u in undo:
            u()
        log.removeHandler(handler)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    s, r = open_store(url), open_store(ref)
    rows, cosines = s.block_rows(0), {}
    for m in ("text", "image"):
        ok = (s[f"features/{m}_status"][rows] == schema.Status.OK) & (r[f"features/{m}_status"][rows] == schema.Status.OK)
        cosines[m] = min_cosine(*(x[f"features/{m}"][rows][ok] for x in (s, r)))
    return {"cap_gib": gib if dev.type == "cuda" else None, "emulated": dev.type != "cuda",
            "text_min_cosine": cosines["text"], "image_min_cosine": cosines["image"],
            "text_rows": r_text.rows, "text_s": round(t_text, 1), "text_said": [x for x in text_said if "memory" in x],
            "image_rows": r_img.rows, "image_s": round(t_img, 1),
            "image_said": [x for x in said[len(text_said):] if "memory" in x]}


def agreement(url: str, data: str, encoder: str, n: int, text: bool = True) -> dict:
    """Cosine between the job's stored features (on the device) and a CPU fp32 reference, first n posts."""
    import torch
    from cache import schema
    from cache.store import open_store
    from extract.images import load_encoder
    from extract.imaging import ImageError, decode, normalize
    from extract.text import load_text_encoder
    s = open_store(url)

    out = {}
    if text:
        enc = load_text_encoder("random", s, device="cpu", precision="fp32")
        captions = [str(c) for c in s["posts/caption"][:n]]
        ref, status = enc.encode(enc.prepare(captions))
        ok = (status == schema.Status.OK) & (s["features/text_status"][:n] == schema.Status.OK)
        out = {"text_min_cosine": min_cosine(ref[ok], s["features/text"][:n][ok].astype(np.float32)),
               "text_posts": int(ok.sum())}
    ef = load_encoder(encoder)
    pre = ef.preprocessing
    model = ef.encoder.eval()
    rows, pix = [], []
    for r, p in enumerate(s["posts/image"][:n]):
        if str(p) and s["features/image_status"][r] == schema.Status.OK:
            try:
                pix.append(torch.from_numpy(decode(os.path.join(data, str(p)), pre["resize"], pre["crop"])))
                rows.append(r)
            except ImageError:
                pass
    with torch.inference_mode():
        ref = np.concatenate([model.features(normalize(torch.stack(pix[i:i + 32]), pre["mean"], pre["std"])).numpy()
                              for i in range(0, len(pix), 32)])
    got = s["features/image"].get_orthogonal_selection((np.array(rows),)).astype(np.float32)
    out.update(image_min_cosine=min_cosine(ref, got), image_posts=len(rows))
    return out


def heads_on(url: str, tmp: str, device: str, dry: bool) -> dict:
    from heads.predict import predict
    from heads.train import FitConfig, fit
    run = os.path.join(tmp, "run")
    t = time.perf_counter()
    m = fit(url, run, FitConfig(max_steps=100 if dry else 2000, device=device, precision="fp32", restarts=1), log=lambda *a: None)
    fit_s = time.perf_counter() - t
    p = predict(run, url, device=device, quiet=True)
    return {"fit_s": round(fit_s, 1), "test_accuracy": m["influencer"]["accuracy"],
            "predict_influencers_per_s": p["influencers"] / p["seconds"]}


def table(r: dict, device_name: str) -> str:
    def f(x, fmt="{:,.0f}"):
        return "n/a" if x is None else fmt.format(x)

    def get(name, key):
        return (r.get(name) or {}).get(key)

    def pixel_diffs(which):
        v = [x for x in (get("decoded_pixels", f"{which}_mean_diff") or []) if x is not None]
        peak = [x for x in (get("decoded_pixels", f"{which}_max_diff") or []) if x is not None]
        return f"{np.mean(v):.2f} (largest {max(peak)})" if v and peak else "n/a"

    def tail(name):
        return (f"min cosine {f(get(name, 'image_min_cosine'), '{:.5f}')} over {f(get(name, 'image_rows'))} rows "
                f"({get(name, 'image_rows_under_0.99')} under 0.99 in {get(name, 'image_posts_under_0.99')} posts, "
                f"{get(name, 'image_posts_under_0.99_in_every_copy')} of them in every copy; "
                f"{get(name, 'image_nan_rows')} NaN)")

    def halvings(m):
        said = get("oom_recovery", f"{m}_said") or []
        return (f"halved {len(said)} times, to {said[-1].split('going on with ')[-1].split(' ')[0]} "
                f"{'tokens' if m == 'text' else 'images'} a batch") if said else "not halved"

    lines = [f"GPU bench on {device_name}, {time.strftime('%Y-%m-%d')}; sample: {r['sample'].get('posts', 0):,} posts, "
             f"{r['sample'].get('images', 0):,} images, mean JPEG {r['sample'].get('jpeg_kb')} KB; the jobs ran on it "
             f"{r['sample'].get('repeat')} times over: {r['sample'].get('job_rows') or 0:,} rows in "
             f"{r['sample'].get('job_blocks')} blocks", "",
             "| path | rate | vs reference | GPU memory peak | GPU busy | notes |", "|---|---:|---:|---:|---:|---|"]
    for name, unit, plain in (("text_job", "captions/s", "text_plain"), ("text_job_workers", "captions/s", "text_plain"),
                              ("text_plain", "captions/s", None),
                              ("images_pil", "images/s", "images_plain"), ("images_nvjpeg", "images/s", "images_plain"),
                              ("images_pil_fp32", "images/s", "images_plain"),
                              ("images_plain", "images/s", None), ("text_model", "captions/s", None),
                              ("text_model_compiled", "captions/s", "text_model"),
                              ("model_only", "images/s", None), ("model_only_compiled", "images/s", "model_only"),
                              ("images_nvjpeg_compiled", "images/s", "images_nvjpeg")):
        rate, base = get(name, "per_s"), get(plain, "per_s") if plain else None
        note = "" if (r.get(name) or {}).get("ok", False) else (r.get(name) or {}).get("error", "not run")
        if get(name, "whole_run_per_s"):
            note = (f"whole run {f(get(name, 'whole_run_per_s'))}/s over {get(name, 'blocks')} blocks, "
                    f"first block encoded at {get(name, 'first_block_s')} s; loop {get(name, 'loop_s')} s: waiting for "
                    f"inputs {get(name, 'wait_s')} s, encoding {get(name, 'encode_s')} s, waiting for writes "
                    f"{get(name, 'commit_s')} s (writing {get(name, 'write_s')} s in the writer thread), closing the "
                    f"workers {get(name, 'close_s')} s (outside the rate)")
        lines.append(f"| {name} | {f(rate)} {unit} | {f(rate / base, '{:.1f}x') if rate and base else ''} | "
                     f"{f(get(name, 'gpu_memory_mib'))} MiB | {f(get(name, 'gpu_busy_pct'), '{:.0f} %')} | {note} |")
    d = r.get("decode") or {}
    lines += ["", "text_job and images_*: the shard job's rate from its first block's end to its last commit "
                  "(start-up and the pipeline's fill are in the first block, the workers' closing after the last; a "
                  "10.2 M-post shard has hundreds of blocks)",
              "reference: the plain loop on the same GPU for text_job and images_*; the same model uncompiled "
              "for *_compiled (steady state, after a warm-up pass that compiles)",
              f"decode only: plain {f(d.get('plain_per_s'))}/s, fast {f(d.get('fast_per_s'))}/s in one process, "
                  f"{f(d.get('workers_per_s'))}/s in {d.get('workers')} workers; nvJPEG {f(get('nvjpeg_decode', 'per_s'))}/s; "
                  f"Inception alone {f(get('model_only', 'per_s'))} images/s ({get('model_only', 'precision')})",
              f"agreement with CPU fp32: text min cosine {f(get('agreement', 'text_min_cosine'), '{:.5f}')} "
              f"(floor 0.999), image {f(get('agreement', 'image_min_cosine'), '{:.5f}')} (floor 0.99), "
              f"image with --decoder nvjpeg {f(get('agreement_nvjpeg', 'image_min_cosine'), '{:.5f}')}",
              f"text host stages alone (the job's prefetch thread, no model, per caption): read "
              f"{get('text_host', 'read_us')} us, tokenise {get('text_host', 'tokenise_us')} us (the tokenizer's "
              f"own {get('text_host', 'tokenizer_threads')} threads; {get('text_host', 'tokenise_whole_us')} us "
              f"without the cut of long captions), pad {get('text_host', 'pad_us')} us: "
              f"{f(get('text_host', 'per_s'))} captions/s at most from that thread, "
              f"{f(get('text_host', 'workers_per_s'))}/s read and tokenised by {get('text_host', 'workers')} worker "
              f"processes; writing in text_job's split",
              f"host waits for the GPU (torch.profiler, one block): text {get('host_syncs', 'text_syncs')} over "
              f"{get('host_syncs', 'text_batches')} batches, images {get('host_syncs', 'image_pil_syncs')} (PIL) and "
              f"{get('host_syncs', 'image_nvjpeg_syncs')} (nvJPEG) over {get('host_syncs', 'image_batches')} batches "
              f"(one per block is the design), and {get('host_syncs', 'image_nvjpeg_decoder_syncs')} inside "
              f"{get('host_syncs', 'image_nvjpeg_decode_calls')} nvJPEG decode calls (waits for the decoder's own "
              f"stream, not the model; the profiler saw "
              f"{get('host_syncs', 'cuda_runtime_calls_seen')} CUDA runtime calls in all: 0 means it could not see them)",
              f"out of device memory (oom_recovery, one block, memory capped at {get('oom_recovery', 'cap_gib')} GiB"
              f"{', emulated on the CPU' if get('oom_recovery', 'emulated') else ''}): text {halvings('text')}, images "
              f"{halvings('image')}; min cosine to the uncapped jobs: text "
              f"{f(get('oom_recovery', 'text_min_cosine'), '{:.5f}')}, image {f(get('oom_recovery', 'image_min_cosine'), '{:.5f}')}",
              f"every row, job against job (jobs_agree): text in --workers processes against one process "
              f"min cosine {f(get('jobs_agree', 'text_min_cosine'), '{:.5f}')} over {f(get('jobs_agree', 'text_rows'))} "
              f"rows ({get('jobs_agree', 'text_rows_under_0.99')} under 0.99, {get('jobs_agree', 'text_nan_rows')} NaN); "
              f"images decoded by nvJPEG against PIL {f(get('jobs_agree', 'image_min_cosine'), '{:.5f}')} over "
              f"{f(get('jobs_agree', 'image_rows'))} rows ({get('jobs_agree', 'image_rows_under_0.99')} under 0.99, "
              f"{get('jobs_agree', 'image_nan_rows')} NaN; {get('jobs_agree', 'image_posts_under_0.99')} posts of the "
              f"sample, {get('jobs_agree', 'image_posts_under_0.99_in_every_copy')} of them under in every copy: "
              f"the same posts in every copy is the decoders' preprocessing, not a race); the device decoder's "
              f"pixels against libjpeg-turbo's, mean |difference| in levels: {pixel_diffs('lowest')} on the "
              f"lowest rows, {pixel_diffs('other')} on others",
              f"against the fp32 PIL job (images_pil_fp32, fp32 without TF32), every row: images_pil (--precision auto, the "
              f"default: bf16 on a GPU) {tail('precision_agree')}; images_nvjpeg (auto) {tail('nvjpeg_to_fp32')}",
              f"heads: fit {f(get('heads', 'fit_s'), '{:.1f}')} s, predict "
              f"{f(get('heads', 'predict_influencers_per_s'))} influencers/s"]
    lines.append(choices(r))
    tr = max(get("text_job", "per_s") or 0, get("text_job_workers", "per_s") or 0)
    # images by the paths the choices keep: bf16 PIL unless it is too far from fp32 (then fp32), nvJPEG and
    # its compiled job only where they say "use it"
    items = choice_items(r)
    nv = items[2].endswith("(use it)")
    usable = (["images_pil" if items[1].endswith("(use it)") or items[1].endswith("not measured") else "images_pil_fp32"]
              + ["images_nvjpeg"] * nv + ["images_nvjpeg_compiled"] * (nv and items[3].endswith("(use it)")))
    ir, ipath = max((get(k, "per_s") or 0, k) for k in usable)
    if tr and ir:
        hours = (RELEASE_POSTS / tr + RELEASE_POSTS / ir) / 3600
        nv = ipath.startswith("images_nvjpeg")
        rates = {"decode (workers)": None if nv else d.get("workers_per_s"),
                 "decode (nvJPEG)": get("nvjpeg_decode", "per_s") if nv else None,
                 "model": get("model_only_compiled" if ipath.endswith("compiled") else "model_only", "per_s")}
        slow = min((v, k) for k, v in rates.items() if v) if any(rates.values()) else (None, "n/a")
        lines.append(f"10.2 M posts per GPU: text {RELEASE_POSTS / tr / 60:.0f} min + images ({ipath}) "
                     f"{RELEASE_POSTS / ir / 60:.0f} min = {hours:.2f} h (floor 45 min); floors: text "
                     f"{'met' if tr >= FLOORS['text'] else 'missed'}, images {'met' if ir >= FLOORS['images'] else 'missed'}; "
                     f"slowest stage measured alone on that image path: {slow[1]}")
    return "\n".join(lines)


def choice_items(r: dict) -> list[str]:
    """What the figures choose among the options that stay off by default until a GPU has shown them
    (issue #17): `extract text --workers`, `--decoder nvjpeg`, `--compile` for images, and bf16 for the
    image job (`--precision auto`, the default); each the measured job rate with it against without, on
    the same GPU in the same run, "use it" above 1.05x; an image path only while it keeps the features
    (`far_from_fp32`)."""
    def rate(name):
        return (r.get(name) or {}).get("per_s") if (r.get(name) or {}).get("ok") else None

    def pick(option, on, off, why=None):
        a, b = rate(on), rate(off)
        if not a or not b:
            return f"{option}: not measured"
        return (f"{option}: {a / b:.2f}x" + (f", {why}" if why else "")
                + f" ({'use it' if a > 1.05 * b and not why else 'keep it off'})")
    tw = (r.get("text_job_workers") or {}).get("workers") or (r.get("text_host") or {}).get("workers")
    return [pick(f"text --workers {tw}", "text_job_workers", "text_job"),
            pick("images --precision bf16 (auto, the default)", "images_pil", "images_pil_fp32",
                 far_from_fp32(r.get("precision_agree"), (r.get("agreement") or {}).get("image_min_cosine"))),
            pick("images --decoder nvjpeg", "images_nvjpeg", "images_pil",
                 far_from_fp32(r.get("nvjpeg_to_fp32"), (r.get("agreement_nvjpeg") or {}).get("image_min_cosine"))),
            pick("images --decoder nvjpeg --compile", "images_nvjpeg_compiled", "images_nvjpeg")]


def choices(r: dict) -> str:
    """The `choices` line of the table (choice_items)."""
    return ("choices (job rate with the option / without, same GPU; 'use it' above 1.05x and, for images, "
            f"features kept: on every row against the fp32 PIL job at most {TAIL_SHARE:.1%} under 0.99 and none "
            f"under {TAIL_FLOOR}, first 256 posts at 0.99 or above): " + "; ".join(choice_items(r)))


def far_from_fp32(every_row: dict | None, first: float | None) -> str | None:
    """Why an image path's features are too far from fp32 ones to be used, or None when they are close:
    `every_row` is jobs_agree of the fp32 PIL job against the path's job, `first` the min cosine of the
    path's first 256 posts against the CPU's fp32 reference."""
    if not every_row or not every_row.get("ok") or not every_row.get("image_rows") or first is None:
        return "not compared with fp32"
    n, under = every_row["image_rows"], every_row["image_rows_under_0.99"]
    low = every_row["image_min_cosine"]
    if under > TAIL_SHARE * n or low < TAIL_FLOOR or every_row.get("image_nan_rows") or first < 0.99:
        return (f"too far from fp32: {under / n:.2%} of rows under 0.99, min cosine {low:.5f}, "
                f"first posts {first:.5f}")
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=4, help="the jobs run on the sample's posts this many times over")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script, measures nothing")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--skip", default="", help="steps to leave out, comma-separated (e.g. text_model_compiled)")
    ap.add_argument("--text-host", metavar="STORE", help="only the text_host step, on this store, on any machine "
                    "(with --text-workers processes); prints its JSON")
    ap.add_argument("--text-workers", type=int, default=2)
    args = ap.parse_args()
    if args.text_host:
        print(json.dumps(text_host(args.text_host, args.text_workers)))
        return
    import tempfile

    import torch
    SKIP.update(x.strip() for x in args.skip.split(",") if x.strip())
    dry = args.dry_run
    device_s = "cpu" if dry else "cuda"
    if not dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run on a CPU")
    device = torch.device(device_s)
    posts = min(args.posts, 48) if dry else args.posts
    from runtime.cpus import usable_cpus
    workers = 0 if dry else min(usable_cpus(), 16)         # the jobs' own default
    name = "CPU (dry run)" if dry else torch.cuda.get_device_name(0)
    results: dict = {"device": name, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "dry_run": dry,
                     "cores": os.cpu_count(), "usable_cpus": usable_cpus(), "_out": args.out}
    tmp = tempfile.mkdtemp(prefix="bench-gpu-")
    try:
        results["sample"] = step(results, "sample", build, tmp, posts, 96 if dry else 360, workers,
                                 2 if dry else args.repeat)
        # pil.zarr: the sample (fine-tuning, plain loops); the jobs run on the sample repeated (`repeated`):
        # jobs.zarr gets text_job and images_pil, jobs-b.zarr text_job_workers and images_nvjpeg
        pil, jobs, jobs_b, jobs_c = (os.path.join(tmp, f) for f in ("pil.zarr", "jobs.zarr", "jobs-b.zarr", "jobs-c.zarr"))
        data = results["sample"].get("data", "")
        step(results, "text_plain", plain_text, pil, device, 16 if dry else 4096)
        step(results, "text_job", job_text, jobs, device_s)
        # the same job tokenising in worker processes (on a fresh copy of the store)
        text_workers = 2 if dry else max(1, workers // 2)
        step(results, "text_host", text_host, jobs, text_workers)
        step(results, "text_job_workers", job_text, jobs_b, device_s, False, text_workers)
        enc = os.path.join(tmp, "encoder.pt")
        step(results, "finetune", finetune_encoder, pil, enc, dry, device_s)
        paths = image_paths(pil, data, 16 if dry else 2048) if os.path.exists(pil) else []
        step(results, "images_plain", plain_images, paths, enc, device)
        step(results, "images_pil", job_images, jobs, enc, device_s, "pil", workers)
        step(results, "images_nvjpeg", job_images, jobs_b, enc, device_s, "nvjpeg", workers)   # the CPU: libjpeg-turbo
        # every row of both pairs of jobs: the same posts by two paths
        step(results, "jobs_agree", jobs_agree, jobs, jobs_b, results["sample"].get("posts") or 0)
        # bf16 (the default on a GPU) against fp32 without TF32, the PIL job on every row: the tail that bf16
        # alone gives, beside which the nvJPEG job's is judged (benchmarks/precision.py measures it on a CPU)
        step(results, "images_pil_fp32", job_images, jobs_c, enc, device_s, "pil", workers, False, "fp32")
        step(results, "precision_agree", jobs_agree, jobs_c, jobs, results["sample"].get("posts") or 0)
        # the nvJPEG job against the same fp32 reference: is it further from it than the default path is?
        step(results, "nvjpeg_to_fp32", jobs_agree, jobs_c, jobs_b, results["sample"].get("posts") or 0)
        # the device decoder's pixels for the rows furthest from PIL's, against libjpeg-turbo's
        step(results, "decoded_pixels", decoded_pixels, jobs_b, data, device,
             (results.get("jobs_agree") or {}).get("image_lowest_rows") or [])
        if not dry:
            step(results, "nvjpeg_decode", nvjpeg_decode_rate, paths, device)
        step(results, "decode", decode_rates, paths, workers)
        step(results, "model_only", model_only, enc, device, 8 if dry else 256, 2 if dry else 20, 75 if dry else 299)
        step(results, "agreement", agreement, jobs, data, enc, 16 if dry else 256)
        step(results, "agreement_nvjpeg", agreement, jobs_b, data, enc, 16 if dry else 256, False)
        step(results, "host_syncs", host_syncs, jobs, data, enc, device_s)
        # both jobs with the device memory capped: their batches must shrink until they fit
        step(results, "oom_recovery", oom_recovery, os.path.join(tmp, "oom.zarr"), enc, device_s, 1.5, jobs)
        # labelled influencers: the first copy of the sample (as in pil.zarr); predict labels every copy
        step(results, "heads", heads_on, jobs, tmp, device_s, dry)
        # last: torch.compile's first calls compile (a minute or more); the figures above come first.
        # Steady-state model rates with and without it, warmed up on the same inputs first.
        n_text = 64 if dry else 8192
        step(results, "text_model", text_model, pil, device_s, False, n_text)
        if not dry:     # compiling BERT-base and Inception on a CPU takes minutes: the dry run skips them
            # the end-to-end job first (it decides the `--compile` choice for images); on the sample once
            # (pil.zarr has no image features yet): compiling is the slow part
            step(results, "images_nvjpeg_compiled", job_images, pil, enc, device_s, "nvjpeg", workers, True)
            step(results, "text_model_compiled", text_model, pil, device_s, True, n_text)
            step(results, "model_only_compiled", model_only, enc, device, 256, 20, 299, True)
        text = table(results, name)
        print("\n" + text)
        save(results)
        failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("ok") is False]
        if failed:
            print(f"\nfailed steps: {', '.join(failed)} (tracebacks in gpu-bench.json)")
            sys.exit(1)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
