"""The GPU check's agreement checks: features against references, job against job, host waits, memory caps."""
from __future__ import annotations

import os
import time

import numpy as np


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
            job = ImageJob(load_encoder(encoder), s, data, dev, enc.precision, batch_size=256 if dev.type == "cuda" else 8,
                           workers=min(4, os.cpu_count() or 1) if dev.type == "cuda" else 0, exact=False,
                           decoder=decoder)
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
