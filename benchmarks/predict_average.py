"""What `--average-restarts` (the default) costs `heads predict`: one planted store, a run keeping the best
restart alone against a run averaging two, fitted the same way; best of two predicts each, one thread.

    python -m benchmarks.predict_average [--influencers 3000] [--posts 30]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--influencers", type=int, default=3000)
    ap.add_argument("--posts", type=int, default=30)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from cache.synthetic import planted_store
    from heads.predict import predict
    from heads.train import FitConfig, fit
    tmp = tempfile.mkdtemp(prefix="bench-predict-average-")
    try:
        path = os.path.join(tmp, "s.zarr")
        planted_store(path, influencers=args.influencers, posts=args.posts, seed=1, noise=2.0, label_posts=0.05)
        out = {}
        for avg in (False, True):
            run = os.path.join(tmp, f"run-{avg}")
            fit(path, run, FitConfig(max_steps=60, min_steps=20, patience=40, eval_steps=20, attention_warmup=10,
                                     normalize="feature", restarts=2, average_restarts=avg, device="cpu"),
                log=lambda *a: None)
            seconds = []
            for _ in range(2):
                t = time.perf_counter()
                r = predict(run, path, device="cpu", quiet=True, overwrite=True)
                seconds.append(time.perf_counter() - t)
            out["averaged" if avg else "alone"] = {"seconds": round(min(seconds), 2), "influencers": r["influencers"],
                                                   "posts": r["posts"]}
        print(json.dumps(out))
        print(f"heads predict, {out['alone']['influencers']:,} influencers: best restart alone "
              f"{out['alone']['seconds']} s, two restarts averaged {out['averaged']['seconds']} s "
              f"({out['averaged']['seconds'] / out['alone']['seconds']:.2f}x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
