"""Benchmark of `heads fit` and `heads predict` on planted stores of the paper's labelled size.

    python -m benchmarks.heads [--influencers 1600] [--posts 300] [--epochs 3] [--predict-factor 10]

fit: a store of 1,600 influencers × 300 posts (1792-d float16, the paper's labelled set),
seconds per epoch and peak memory. predict: influencers/s and peak memory on a store of
1× and `--predict-factor`× as many influencers (fewer posts each, to keep disk use sane), so
the two peaks show whether memory grows with the number of influencers. Plain reference
for predict: the same model applied one influencer at a time (no batching).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from benchmarks._util import in_subprocess


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--influencers", type=int, default=1600)
    ap.add_argument("--posts", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--predict-factor", type=int, default=10)
    ap.add_argument("--predict-posts", type=int, default=30)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-heads-")
    try:
        fit_store = os.path.join(tmp, "fit.zarr")
        t = time.perf_counter()
        in_subprocess(f"""
            from cache.synthetic import planted_store
            planted_store({fit_store!r}, {args.influencers}, {args.posts}, seed=0, block=16384, noise=3.0, on_topic=0.2,
                          label_posts=10000 / ({args.influencers} * {args.posts}))
            result = {{}}
        """)
        print(f"fit store: {args.influencers} influencers × {args.posts} posts written in {time.perf_counter() - t:.0f}s")
        run = os.path.join(tmp, "run")
        fit = in_subprocess(f"""
            from heads.train import FitConfig, fit
            import csv
            m = fit({fit_store!r}, {run!r}, FitConfig(epochs={args.epochs}), log=lambda *a: None)
            rows = list(csv.DictReader(open({os.path.join(run, 'history.csv')!r})))
            result = {{"epoch_s": [float(r["seconds"]) for r in rows], "total_s": m["seconds"],
                       "acc": m["influencer"]["accuracy"]}}
        """)
        print(f"fit: {args.epochs} epochs, seconds per epoch {', '.join(f'{s:.1f}' for s in fit['epoch_s'])} "
              f"(floor 15 s); whole fit incl. loading {fit['total_s']:.0f}s; peak RSS {fit['peak_rss_mib']:.0f} MiB "
              f"(features of the labelled bags: {args.influencers * args.posts * 1792 * 2 / 2**20:.0f} MiB float16); "
              f"test accuracy {100 * fit['acc']:.1f}%")
        rows = []
        for factor in (1, args.predict_factor):
            n_inf = args.influencers * factor
            path = os.path.join(tmp, f"pred{factor}.zarr")
            in_subprocess(f"""
                from cache.synthetic import planted_store
                planted_store({path!r}, {n_inf}, {args.predict_posts}, seed=1, block=16384, label_posts=0.0,
                              labelled_influencers=0)
                result = {{}}
            """)
            r = in_subprocess(f"""
                from heads.predict import predict
                r = predict({run!r}, {path!r}, {os.path.join(tmp, 'out')!r}, quiet=True)
                result = {{"seconds": r["seconds"], "influencers": r["influencers"], "posts": r["posts"]}}
            """)
            rows.append(r)
            shutil.rmtree(path, ignore_errors=True)
        ref = in_subprocess(f"""
            import time, numpy as np, torch
            from cache.synthetic import planted_store
            from cache.readers import post_features
            from cache.store import open_store
            from heads.infer import load_run
            planted_store({os.path.join(tmp, 'ref.zarr')!r}, {args.influencers}, {args.predict_posts}, seed=1,
                          block=16384, label_posts=0.0, labelled_influencers=0)
            model, _ = load_run({run!r})
            s = open_store({os.path.join(tmp, 'ref.zarr')!r})
            off = s.offsets()
            t = time.perf_counter()
            with torch.no_grad():
                for j in range(s.n_influencers):
                    x, present = post_features(s, slice(int(off[j]), int(off[j + 1])))
                    model(torch.from_numpy(x.astype(np.float32))[None], torch.from_numpy(present)[None])
            result = {{"seconds": time.perf_counter() - t, "influencers": s.n_influencers}}
        """)
        print(f"{'predict run':<48} {'influencers':>11} {'posts':>9} {'s':>7} {'infl/s':>8} {'peak MiB':>9}")
        print(f"{'plain: one influencer at a time':<48} {ref['influencers']:>11} {'':>9} {ref['seconds']:>7.1f} "
              f"{ref['influencers'] / ref['seconds']:>8.0f} {ref['peak_rss_mib']:>9.0f}")
        for r in rows:
            print(f"{'heads predict (store + CSVs)':<48} {r['influencers']:>11} {r['posts']:>9} {r['seconds']:>7.1f} "
                  f"{r['influencers'] / r['seconds']:>8.0f} {r['peak_rss_mib']:>9.0f}")
        print(f"predict peak memory: {rows[0]['peak_rss_mib']:.0f} MiB at {rows[0]['influencers']} influencers, "
              f"{rows[1]['peak_rss_mib']:.0f} MiB at {rows[1]['influencers']}; speed vs plain "
              f"{rows[0]['influencers'] / rows[0]['seconds'] / (ref['influencers'] / ref['seconds']):.1f}x "
              f"(predict also writes the store arrays and both CSVs)")
        print(f"extrapolated: 33,935 influencers at {rows[1]['influencers'] / rows[1]['seconds']:.0f} infl/s with "
              f"{args.predict_posts} posts each; with 300 posts each about "
              f"{33935 / (rows[1]['posts'] / rows[1]['seconds'] / 300) / 60:.0f} min")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
