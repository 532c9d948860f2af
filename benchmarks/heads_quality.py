"""Does `heads fit` learn what the features hold? Planted stores of several difficulties, several seeds.

    python -m benchmarks.heads_quality [--stores small,real,...] [--seeds 3] [--precisions fp32,bf16]
                                       [--poolings attention,mean] [--set KEY=VALUE ...] [--workers 2] [--device cpu]
                                       [--quick]

Each store plants a prototype per post category; a post is its category's prototype plus
noise, and loud `other`/`product` posts (4x the noise) pollute an influencer's mean, so
pooling has something to find. The stores vary what a user meets: few labelled influencers
(40 to 1,600), bag size, on-topic share, a large common offset with a weak signal (as real
encoders' features have), missing images and captions, influencers with only 3-8 posts.

For every store the table gives mean and worst test influencer accuracy over the seeds (and
`alone`: the kept variant's best restart by itself, as `--no-average-restarts` keeps it; per seed the
normalisation and weak-post-label weight kept, e.g. `f3` = feature scaling with `--instance-weight 3`),
per pooling and precision, beside the logistic-regression reference (on mean features,
fitted by every `heads fit`) and the best model baseline (SVC, KNN, GaussianNB,
RandomForest on mean features, chosen on validation as `baselines run` does); `ECE` is test ECE
before>after temperature scaling and `noise` the 90th percentile of the test ECE a perfectly calibrated
head would show with the same confidences on as many test influencers (heads.calibrate.ece_if_calibrated:
below it, an ECE is not evidence of miscalibration). `--set`
overrides FitConfig fields (e.g. `--set max_steps=500 --set attention=gated`) to compare
variants; the defaults in heads/train.py are the ones this script justified (README).
`--quick` runs tiny stores and few steps: a smoke test of the script (tests run it).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np


# name: (planted_store keyword arguments, what it stands for)
STORES = {
    "small": (dict(influencers=104, posts=30, on_topic=0.55, noise=5.0, label_posts=0.05),
              "64/16/24 influencers x 30 posts, loud distractors"),
    "real": (dict(influencers=280, posts=30, on_topic=0.4, noise=2.0, offset=5.0, scale=0.3, missing=(0.2, 0.1),
                  label_posts=0.05, short_share=1 / 3),
             "168/56/56, common offset 5, signal x0.3, 20 % images / 10 % captions missing, 1/3 with 3-8 posts"),
    "bag10": (dict(influencers=400, posts=10, on_topic=0.4, noise=3.0, label_posts=0.05),
              "10 posts per influencer (Figure 5a's low end)"),
    "n40": (dict(influencers=40, posts=30, on_topic=0.5, noise=3.0, label_posts=0.05), "40 labelled influencers"),
    "n1600": (dict(influencers=1600, posts=20, on_topic=0.3, noise=3.0, label_posts=0.02),
              "1,600 labelled influencers (the paper's size) x 20 posts, 30 % on topic"),
    "minority": (dict(influencers=240, posts=40, on_topic=0.2, noise=3.0, label_posts=0.2),
                 "144/48/48 x 40 posts, only 20 % on topic: attention has something to find"),
    "clean": (dict(influencers=240, posts=40, on_topic=0.5, noise=1.0, label_posts=0.2), "easy: clean features"),
}
# Few labels (issue 33): influencer labels only, no labelled posts, as `cache labels --from-release` gives
# (the release's category of N influencers per category, the rest of the store unlabelled), and small
# hand-labelled sets with and without labelled posts; on moderate ("mid") and real-looking ("hard") features.
MID = dict(posts=30, on_topic=0.4, noise=3.0)
HARD = dict(posts=30, on_topic=0.4, noise=2.0, offset=5.0, scale=0.3, missing=(0.2, 0.1), short_share=1 / 3)
for _n in (10, 25, 50, 200):
    for _fam, _kw in (("mid", MID), ("hard", HARD)):
        STORES[f"rel{_n}-{_fam}"] = (dict(_kw, influencers=16 * _n, label_posts=0.0, release_per_category=_n),
                                     f"release labels, {_n} per category, no post labels, {_fam} features")
# the real-looking family issue 33 reported: a weak signal, loud distractors with 6x the noise, 35-75 % of each
# influencer's posts on topic, a large common offset, missing halves, a third of influencers with 3-8 posts
LOOK = dict(posts=30, on_topic=(0.35, 0.75), noise=2.0, loud=6.0, offset=5.0, scale=0.3, missing=(0.2, 0.1),
            short_share=1 / 3)
STORES["look"] = (dict(LOOK, influencers=280, label_posts=0.05),
                  "168/56/56, real-looking: signal x0.3, loud posts 6x noise, 35-75 % on topic, offset 5, missing, ragged")
# the same at 4x the noise: the regime issue 33 measured on its real-looking family (default 0.65, reference 0.45),
# which the planted `look` store at noise 2 is too easy to show (default 1.000)
STORES["look-hard"] = (dict(LOOK, influencers=280, label_posts=0.05, noise=8.0),
                       "168/56/56, real-looking as `look`, noise 8: issue 33's regime")
STORES["rel50-look"] = (dict(LOOK, influencers=800, label_posts=0.0, release_per_category=50),
                        "release labels, 50 per category, no post labels, real-looking features")
# the case issue 33 reported: 15 release-labelled influencers per category (96/24/40), the easy planted features
STORES["rel15-easy"] = (dict(influencers=240, posts=30, on_topic=0.3, noise=1.0, label_posts=0.0,
                             release_per_category=15),
                        "release labels, 15 per category (96/24/40), no post labels, easy features")
for _n in (40, 200):
    for _posts in (0.0, 0.05):
        STORES[f"hand{_n}{'-posts' if _posts else ''}"] = (
            dict(HARD, influencers=_n, label_posts=_posts),
            f"{_n} hand-labelled influencers, {'5 % of posts labelled' if _posts else 'no post labels'}, hard features")
# A sweep of feature families: signal strength (scale), loud-post noise, on-topic share, missing halves and
# ragged bags, with and without a common offset; 168/56/56 influencers with 5 % of posts labelled.
for _scale in (0.3, 1.0):
    for _noise in (2.0, 4.0):
        for _on in (0.35, 0.6):
            for _offset, _missing, _short in ((0.0, (0.0, 0.0), 0.0), (5.0, (0.2, 0.1), 1 / 3)):
                STORES[f"fam-s{_scale}-n{_noise}-o{_on}-{'off' if _offset else 'flat'}"] = (
                    dict(influencers=280, posts=30, scale=_scale, noise=_noise, on_topic=_on, offset=_offset,
                         missing=_missing, short_share=_short, label_posts=0.05),
                    f"signal x{_scale}, noise {_noise}, {int(_on * 100)} % on topic, "
                    + ("offset 5, 20 %/10 % missing, 1/3 with 3-8 posts" if _offset else "no offset, nothing missing"))
# ECE with enough test rows to measure it (issue 33's floor of 0.10 on stores with >= 50 validation influencers):
# the hardest 280-influencer stores (168/56 train/val, as the stores they copy) with 1,000 more test influencers,
# no post label among them; a calibrated head's test ECE on 56 rows is itself ~0.09-0.13 (the `noise` column)
for _name in ("look-hard", "fam-s0.3-n4.0-o0.35-off", "fam-s1.0-n4.0-o0.35-off"):
    STORES[f"ece-{_name}"] = (dict(STORES[_name][0], extra_test=1000),
                              f"{_name} with 1,000 more test influencers (168/56/1,056): ECE measurable")
GROUPS = {"default": "small,real,minority,bag10,n40,n1600",
          "few": ",".join(k for k in STORES if k.startswith(("rel", "hand"))),
          "families": ",".join(k for k in STORES if k.startswith("fam-"))}
CRIPPLED = {"max_steps": 5, "min_steps": 0, "restarts": 1, "average_restarts": False}
QUICK = {"tiny": (dict(influencers=48, posts=8, on_topic=0.6, noise=1.0, label_posts=0.2), "smoke test")}


def make_store(path: str, kw: dict, seed: int) -> None:
    from cache.synthetic import planted_store
    kw = dict(kw)
    short = kw.pop("short_share", 0.0)
    rng = np.random.default_rng(1000 + seed)
    posts = kw.pop("posts")
    counts = np.full(kw["influencers"], posts, np.int64)
    if short:
        pick = rng.random(len(counts)) < short
        counts[pick] = rng.integers(3, 9, int(pick.sum()))
    release = kw.pop("release_per_category", None)
    extra = kw.pop("extra_test", 0)
    if extra:
        counts = np.concatenate([counts, np.full(extra, posts, np.int64)])
        if short:       # the extra influencers as ragged as the others
            pick = rng.random(extra) < short
            counts[-extra:][pick] = rng.integers(3, 9, int(pick.sum()))
        kw["influencers"] += extra
    planted_store(path, post_counts=counts, seed=seed, **kw)
    if extra:
        # train and validation as the store without them (60/20/20 of the first ones); the extra influencers
        # are test only, with no post label, so that only the test ECE's sampling noise changes
        from cache import schema
        from cache.labels import assign_splits
        from cache.store import open_store
        store = open_store(path, "r+")
        label = store["influencers/label"][:]
        n_cat = len(schema.INFLUENCER_CATEGORIES)
        # as many of each category as the store without them holds, split as it is split
        base = np.sort(np.concatenate([np.flatnonzero(label == c)[:(len(counts) - extra) // n_cat] for c in range(n_cat)]))
        split = np.full(len(counts), schema.SPLITS["test"], np.int8)
        split[base] = assign_splits(label[base], np.zeros(len(base), np.int8), seed)
        store["influencers/split"][:] = split
        in_base = np.zeros(len(counts), bool)
        in_base[base] = True
        extra_post = np.repeat(~in_base, counts)
        post_label, post_split = store["posts/label"][:], store["posts/split"][:]
        post_label[extra_post], post_split[extra_post] = -1, 0
        store["posts/label"][:], store["posts/split"][:] = post_label, post_split
    if release:
        # labels drawn exactly as `cache labels --from-release` draws them: N per category split 80:20
        # train:val, a test set from the rest; the planted store's release column is the truth
        from cache.labels import ReleaseDraw, apply_labels
        from cache.store import open_store
        apply_labels(open_store(path, "r+"), None, None, seed, release=ReleaseDraw(release, 0.2, max(40, 2 * release)))


def baselines_on_means(path: str) -> dict:
    """The best model baseline on mean features (selected on validation), as `baselines run` picks."""
    from baselines.models import MODEL_NAMES, candidates, select_and_fit
    from cache import schema
    from cache.store import open_store
    from heads.data import bag_means, load_labelled
    store = open_store(path)
    data = load_labelled(store, "both")
    seg = tuple(schema.MODALITIES.values())
    x = {s: bag_means(getattr(data, s).bags, seg, getattr(data, s).masks) for s in ("train", "val", "test")}
    best = None
    for name in MODEL_NAMES:
        clf, _, val = select_and_fit(candidates(name, 0), x["train"], data.train.y, x["val"], data.val.y)
        test = float((clf.predict(x["test"]) == data.test.y).mean())
        if best is None or val > best[1]:
            best = (MODEL_NAMES[name], val, test)
    return {"best_baseline": best[0], "baseline_test": best[2]}


def one_fit(job: tuple) -> dict:
    path, out, pooling, precision, seed, overrides = job
    import torch
    torch.set_num_threads(1)
    from heads.train import FitConfig, fit
    cfg = FitConfig(pooling=pooling, precision=precision, seed=seed, **{"device": "cpu", **overrides})
    t = time.perf_counter()
    m = fit(path, out, cfg, log=lambda *a: None)
    alone = None
    if cfg.members > 1:         # averaged: the kept variant's best restart alone is what --no-average-restarts keeps
        from cache.store import open_store
        from heads.data import load_labelled
        from heads.infer import load_run, predict_bags
        model, _ = load_run(out)
        test = load_labelled(open_store(path), "both").test
        alone = float((predict_bags(model.members[0], test.bags, test.masks, "cpu")[0].argmax(1) == test.y).mean())
    shutil.rmtree(out, ignore_errors=True)
    from heads.calibrate import ece_if_calibrated
    cal = m["calibration"]["influencer"]
    # the test ECE a perfectly calibrated head would show on this many rows (each bin's rows at its mean confidence)
    noise = ece_if_calibrated(np.repeat([b["confidence"] for b in cal["reliability_after"]],
                                        [b["n"] for b in cal["reliability_after"]]))
    return {"alone": alone, "pooling": pooling, "precision": precision, "seed": seed, "test": m["influencer"]["accuracy"],
            "post": m["post"]["accuracy"], "reference": m["reference"]["test_acc"], "step": m["best_step"],
            "normalize": m["normalize"], "instance_weight": m["instance_weight"], "val": m["val_acc"], "reference_val": m["reference"]["val_acc"],
            "ece_before": cal["test"]["ece_before"], "ece_after": cal["test"]["ece_after"],
            **{f"{k}_{w}": cal["test"][f"{k}_{w}"] for k in ("brier", "log_loss") for w in ("before", "after")},
            "temperature": cal["temperature"],
            "ece_if_calibrated": noise[0], "ece_if_calibrated_p90": noise[1],
            "warning": "warning" in m, "seconds": time.perf_counter() - t}


def parse_set(items: list[str]) -> dict:
    from heads.train import FitConfig
    fields = FitConfig.__dataclass_fields__
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--set {item}: FitConfig has no field {key!r}")
        try:
            out[key] = json.loads(value)        # numbers, true/false, null
        except ValueError:
            out[key] = value                    # a word: "gated", "feature"
    return out


def seed_list(text: str) -> list[int]:
    """`--seeds 3` is seeds 0, 1, 2; `--seeds 1,2` is those two (a list has a comma, or one seed and a comma)."""
    try:
        if "," in text:
            return [int(x) for x in text.split(",") if x.strip()]
        return list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a count nor a list of seeds like 1,2") from None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stores", default="default",
                    help=f"store names, or a group: {', '.join(f'{k} ({len(v.split(chr(44)))})' for k, v in GROUPS.items())}")
    ap.add_argument("--seeds", type=seed_list, default="3",
                    help="a count N (seeds 0..N-1) or a list of seeds, e.g. 1,2 (to add seeds to an earlier run)")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--poolings", default="attention,mean")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="where the fits run (cuda: bf16 at the hardware's own speed)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write every result here")
    args = ap.parse_args()
    catalogue = QUICK if args.quick else STORES
    names = list(QUICK) if args.quick else [n for g in args.stores.split(",") for n in GROUPS.get(g, g).split(",")]
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise SystemExit(f"--stores: unknown {', '.join(unknown)}; known: {', '.join(catalogue)}")
    overrides = {"device": args.device, **parse_set(args.set)}
    if args.quick:
        overrides = {"max_steps": 40, "min_steps": 10, "patience": 20, "eval_steps": 10, **overrides}
    tmp = tempfile.mkdtemp(prefix="bench-quality-")
    results, summary = {}, {}
    shown = {k: v for k, v in overrides.items() if k != "device"}
    print(f"heads fit quality on {args.device}: seeds {','.join(map(str, args.seeds))}; overrides {shown or 'none (the defaults)'}")
    try:
        for name in names:
            kw, what = catalogue[name]
            path = os.path.join(tmp, f"{name}.zarr")
            make_store(path, kw, seed=0)
            base = baselines_on_means(path)
            jobs = [(path, os.path.join(tmp, f"{name}-{p}-{pr}-{s}"), p, pr, s, overrides)
                    for p in args.poolings.split(",") for pr in args.precisions.split(",") for s in args.seeds]
            # the reference verdict's own check: a crippled head (5 steps) beside the same store must warn
            jobs.append((path, os.path.join(tmp, f"{name}-crippled"), args.poolings.split(",")[0],
                         args.precisions.split(",")[0], 0, {**overrides, **CRIPPLED}))
            import multiprocessing
            with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(one_fit, job) for job in jobs]
                index = {f: i for i, f in enumerate(futures)}
                for done, f in enumerate(as_completed(futures), 1):
                    r = f.result()
                    # a plain line per finished fit: a run cut short still says what it measured
                    print(f"  [{name} {done}/{len(jobs)}] {r['pooling']} {r['precision']} seed {r['seed']}"
                          f"{' (crippled)' if index[f] == len(jobs) - 1 else ''}: test {r['test']:.3f}, "
                          f"reference {r['reference']:.3f}, {r['seconds']:.0f} s", flush=True)
                rows = [f.result() for f in futures]
            crippled = rows.pop()
            results[name] = {"what": what, **base, "runs": rows, "crippled": crippled}
            print(f"\n{name}: {what}", flush=True)
            print(f"  {'pooling':<10} {'precision':<9} {'mean':>6} {'worst':>6} {'alone':>6} {'post':>6} {'LR ref':>7} "
                  f"{base['best_baseline'][:12]:>12} {'warned':>6} {'ECE':>11} {'noise':>5} {'s/fit':>6}  per seed (variant kept)")
            for p in args.poolings.split(","):
                for pr in args.precisions.split(","):
                    rs = [r for r in rows if r["pooling"] == p and r["precision"] == pr]
                    acc = np.array([r["test"] for r in rs])
                    alone = [r["alone"] for r in rs if r["alone"] is not None]
                    print(f"  {p:<10} {pr:<9} {acc.mean():6.3f} {acc.min():6.3f} "
                          f"{np.mean(alone) if alone else float('nan'):6.3f} "
                          f"{np.mean([r['post'] for r in rs]):6.3f} {rs[0]['reference']:7.3f} "
                          f"{base['baseline_test']:12.3f} {sum(r['warning'] for r in rs):>6} "
                          f"{np.mean([r['ece_before'] for r in rs]):5.3f}>{np.mean([r['ece_after'] for r in rs]):5.3f} "
                          f"{np.mean([r['ece_if_calibrated_p90'] for r in rs]):5.3f} "
                          f"{np.mean([r['seconds'] for r in rs]):6.1f}  " +
                          " ".join(f"{r['test']:.3f}({r['normalize'][0]}{r['instance_weight']:g}"
                                   + (f", alone {r['alone']:.3f})" if r["alone"] is not None else ")") for r in rs),
                          flush=True)
            print(f"  crippled head (max_steps 5): test {crippled['test']:.3f}, "
                  f"{'warned' if crippled['warning'] else 'NOT WARNED'}; sound runs (test >= reference) that warned: "
                  f"{sum(r['warning'] for r in rows if r['test'] >= r['reference'])}", flush=True)
            first = [r for r in rows if r["pooling"] == rows[0]["pooling"] and r["precision"] == rows[0]["precision"]]
            summary[name] = (float(np.mean([r["test"] for r in first])), min(r["test"] for r in first),
                             first[0]["reference"])
            shutil.rmtree(path, ignore_errors=True)
            if args.json:           # after every store: a run cut short keeps the stores it finished
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=2)
        if len(summary) > 1:
            worst = min(summary, key=lambda k: summary[k][0])
            gap = min(summary, key=lambda k: summary[k][0] - summary[k][2])
            print(f"\nworst store by mean test accuracy: {worst} ({summary[worst][0]:.3f}, worst seed "
                  f"{summary[worst][1]:.3f}, reference {summary[worst][2]:.3f}); furthest below or nearest its "
                  f"reference: {gap} ({summary[gap][0] - summary[gap][2]:+.3f})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
