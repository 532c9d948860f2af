"""What bf16 and the nvJPEG path's preprocessing do to image features, every row, on the CPU.

    python -m benchmarks.precision --posts 1000          # ~45 min on 2 cores, most of it emulated bf16

On a GPU `extract images` runs under bf16 autocast by default (`--precision auto`). The GPU bench
measured that on its first 256 posts only (min cosine 0.99519 to the CPU's fp32), and its nvJPEG job
came out at min cosine 0.973 to the PIL job over 72,656 rows, 208 under 0.99, both in bf16
(benchmarks/results/gpu-h200-2026-11-27-run2.*). Four shard jobs on the same release-like posts,
with the bench's own fine-tuned encoder, tell the causes apart:
- `pil/fp32` against `tv/fp32` (`--decoder nvjpeg` on the CPU: torchvision's decode_jpeg, libjpeg-turbo,
  and the same torchvision resize the GPU path runs): the two paths' preprocessing alone;
- `pil/fp32` against `pil/bf16`: bf16 alone, on every row;
- `pil/bf16` against `tv/bf16`: what the GPU bench compared, less nvJPEG's own decoder.
And what a user sees of it: a post-category classifier (sklearn's logistic regression on standardised
features) fitted on `pil/fp32`'s features of the labelled training posts labels every labelled post
from each job's features: its accuracy on the held-out (val and test) posts, and the labels that
differ from fp32's.

This CPU has no bf16 instructions: torch emulates them, with the roundings of bf16 autocast (the CPU's
autocast casts the same convolutions and matmuls as CUDA's), ~7x slower than fp32 here.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np


JOBS = (("pil", "fp32"), ("tv", "fp32"), ("pil", "bf16"), ("tv", "bf16"))
PAIRS = ((("pil", "fp32"), ("tv", "fp32"), "preprocessing alone"),
         (("pil", "fp32"), ("pil", "bf16"), "bf16 alone"),
         (("pil", "bf16"), ("tv", "bf16"), "both, as the GPU bench compared them"))


def row_cosines(a: str, b: str) -> np.ndarray:
    """Every row both stores encoded (status OK): the cosine between their image features."""
    from benchmarks.gpu import store_cosines
    return store_cosines(a, b, "image")[1]


def spread(cos: np.ndarray) -> dict:
    """The cosines' lower tail: the smallest, low quantiles, the median, rows under 0.99 and 0.999."""
    return {"rows": len(cos), "min": float(cos.min()), "q0.001": float(np.quantile(cos, 0.001)),
            "q0.01": float(np.quantile(cos, 0.01)), "median": float(np.median(cos)),
            "under_0.99": int((cos < 0.99).sum()), "under_0.999": int((cos < 0.999).sum())}


def labels_of(stores: dict) -> dict:
    """A post-category classifier (sklearn's logistic regression on standardised features) fitted on the
    fp32 PIL job's features of the labelled training posts (the store's labels and splits, `cache
    labels`), applied to every job's features of every labelled post: accuracy on the val and test
    posts, and the labels unlike the fp32 PIL job's."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from cache import schema
    from cache.store import open_store
    ref = open_store(stores[("pil", "fp32")])
    label, split = ref["posts/label"][:], ref["posts/split"][:]
    ok = label >= 0
    for s in stores.values():
        ok &= open_store(s)["features/image_status"][:] == schema.Status.OK
    rows = np.flatnonzero(ok)
    train = split[rows] == schema.SPLITS["train"]

    def feats(key):
        return open_store(stores[key])["features/image"].get_orthogonal_selection((rows,)).astype(np.float32)

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(feats(("pil", "fp32"))[train],
                                                                                   label[rows][train])
    base = clf.predict(feats(("pil", "fp32")))
    out = {"posts": len(rows), "train_posts": int(train.sum()), "held_out_posts": int((~train).sum())}
    for key in stores:
        pred = base if key == ("pil", "fp32") else clf.predict(feats(key))
        out["/".join(key)] = {"held_out_accuracy": float((pred[~train] == label[rows][~train]).mean()),
                              "labels_unlike_fp32": int((pred != base).sum())}
    return out


def compare(tmp: str, out: dict) -> dict:
    """The pairs' cosines and the classifier's labels, from the four jobs' stores in `tmp`."""
    stores = {key: os.path.join(tmp, f"{key[0]}-{key[1]}.zarr") for key in JOBS}
    out["pairs"] = {f"{'/'.join(a)} vs {'/'.join(b)}": {"what": what, **spread(row_cosines(stores[a], stores[b]))}
                    for a, b, what in PAIRS}
    out["labels"] = labels_of(stores)
    return out


def study(posts: int, tmp: str, finetune_precision: str = "fp32", dry: bool = False) -> dict:
    """The four jobs in `tmp` and their comparisons. `finetune_precision` bf16 fine-tunes the encoder as
    the GPU bench does there (`--precision auto` on CUDA); `dry` is the test's tiny run (75 px crops)."""
    from benchmarks.gpu import build, finetune_encoder
    from extract.images import run_images
    t0 = time.perf_counter()
    s = build(tmp, posts, 96 if dry else 360, min(os.cpu_count() or 1, 16), 1)
    stores = {}
    for key in JOBS:
        stores[key] = os.path.join(tmp, f"{key[0]}-{key[1]}.zarr")
        shutil.copytree(os.path.join(tmp, "jobs.zarr"), stores[key])
    enc = os.path.join(tmp, "encoder.pt")
    out: dict = {"posts": s["posts"], "image_px": 96 if dry else 360, "finetune": {**finetune_encoder(os.path.join(tmp, "pil.zarr"), enc, dry, "cpu",
                                                                       finetune_precision),
                                                   "precision": finetune_precision}, "jobs": {}}
    print(f"[{time.perf_counter() - t0:.0f} s] sample of {s['posts']} posts built, encoder fine-tuned", flush=True)
    for key in JOBS:
        r = run_images(stores[key], "0/1", encoder_path=enc, device="cpu", precision=key[1],
                       decoder="pil" if key[0] == "pil" else "nvjpeg", quiet=True)
        out["jobs"]["/".join(key)] = {"rows": r.rows, "images_per_s": round(r.rows / r.seconds, 2)}
        print(f"[{time.perf_counter() - t0:.0f} s] job {'/'.join(key)}: {r.rows} rows, {r.rows / r.seconds:.2f}/s",
              flush=True)
    with open(os.path.join(tmp, "jobs.json"), "w") as f:       # for --again
        json.dump(out, f)
    return compare(tmp, out)


def report(r: dict) -> str:
    lines = [f"image features, every row of {r['posts']} release-like {r.get('image_px', 360)} px posts (encoder fine-tuned in "
             f"{r['finetune'].get('precision', 'fp32')}, val accuracy {r['finetune']['val_accuracy']:.2f}), CPU; "
             f"bf16 emulated",
             "| pair | what | rows | min cosine | 0.1 % quantile | 1 % quantile | median | under 0.99 | under 0.999 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, p in r["pairs"].items():
        lines.append(f"| {name} | {p['what']} | {p['rows']:,} | {p['min']:.5f} | {p['q0.001']:.5f} | {p['q0.01']:.5f} | "
                     f"{p['median']:.5f} | {p['under_0.99']} | {p['under_0.999']} |")
    lab = r["labels"]
    lines.append(f"post categories, classifier fitted on pil/fp32 ({lab['train_posts']} training posts), "
                 f"{lab['posts']} labelled posts ({lab['held_out_posts']} held out): " + "; ".join(
                     f"{k} held-out accuracy {v['held_out_accuracy']:.4f}, {v['labels_unlike_fp32']} labels unlike fp32's"
                     for k, v in lab.items() if isinstance(v, dict)))
    return "\n".join(lines)


def main() -> None:
    from benchmarks._util import scratch
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=1000)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--finetune-precision", default="fp32", choices=("fp32", "bf16"),
                    help="bf16: fine-tune the encoder as the GPU bench does on a GPU (emulated here, slower)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes (75 px crops): checks the script")
    ap.add_argument("--keep", action="store_true", help="keep the stores (the folder is printed)")
    ap.add_argument("--again", metavar="DIR", help="only the comparisons, on the stores a --keep run left in DIR")
    args = ap.parse_args()
    if args.again:
        with open(os.path.join(args.again, "jobs.json")) as f:
            r = compare(args.again, json.load(f))
    else:
        with scratch("precision-", args.keep) as tmp:
            r = study(min(args.posts, 48) if args.dry_run else args.posts, tmp, args.finetune_precision, args.dry_run)
    print(report(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
