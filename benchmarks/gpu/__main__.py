"""`python -m benchmarks.gpu`: every step of the GPU check in order, then the table."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from benchmarks.gpu.checks import (agreement, decoded_pixels, heads_on, host_syncs, jobs_agree,
                                  oom_recovery)
from benchmarks.gpu.common import SKIP, save, step
from benchmarks.gpu.rates import (decode_rates, finetune_encoder, image_paths, job_images, job_text, model_only,
                                 nvjpeg_decode_rate, plain_images, plain_text, text_host, text_model)
from benchmarks.gpu.sample import build
from benchmarks.gpu.table import table


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
