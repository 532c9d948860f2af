"""The GPU check's table and the choices it makes among the options off by default."""
from __future__ import annotations

import time

import numpy as np

from benchmarks.gpu.common import FLOORS, RELEASE_POSTS, TAIL_FLOOR, TAIL_SHARE


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
