"""Why a fit ends where it does (issue 33): every validation round's validation and test probabilities,
per restart, and the test accuracy each selection rule would have given.

    python -m benchmarks.selection_study run STORE SEED OUT.pkl ['{"instance_loss": "on"}'] ['{"noise": 8}']
    python -m benchmarks.selection_study show OUT.pkl ...

STORE names a benchmarks.heads_quality store (its keyword arguments overridden by the last JSON); the
first JSON overrides FitConfig. `show` prints, per rule (best validation accuracy, best validation
log-loss, last round, best on test = what the model could have reached), each restart's test accuracy,
the one picked on validation and the restarts' averaged prediction.
"""
import json
import os
import pickle
import sys

import numpy as np


def run(name: str, seed: int, out: str, over: dict, skw: dict) -> None:
    import torch
    torch.set_num_threads(1)
    from benchmarks.heads_quality import STORES, make_store
    from cache import schema
    from cache.readers import feature_dim
    from cache.store import open_store
    from heads import loop
    from heads.data import load_labelled
    from heads.infer import predict_bags
    from heads.model import HeadConfig
    from heads.reference import logistic_reference
    from heads.train import FitConfig, train_restarts
    tag = "-".join(f"{k}{v}" for k, v in skw.items())
    path = os.path.join(os.path.dirname(os.path.abspath(out)), f"{name}{tag}-s{seed}.zarr")
    if not os.path.exists(path):
        make_store(path, dict(STORES[name][0], **skw), seed=seed)
    store = open_store(path)
    data = load_labelled(store, "both")
    seg = tuple(schema.MODALITIES.values())
    cfg = FitConfig(device="cpu", seed=seed, **over)
    head = HeadConfig(in_dim=feature_dim("both"), pooling=cfg.pooling, attention=cfg.attention, dropout=cfg.dropout,
                      n_influencer=len(store.influencer_categories), n_post=len(store.post_categories), segments=seg)
    ref = logistic_reference(data, seg, seed)
    plain = loop.evaluate

    def evaluate(model, d, device):
        row = plain(model, d, device)
        row["_pv"] = predict_bags(model, d.val.bags, d.val.masks, device)[0]
        row["_pt"] = predict_bags(model, d.test.bags, d.test.masks, device)[0]
        return row
    loop.evaluate = evaluate
    rows = []
    train_restarts(cfg, head, data, seg, torch.device("cpu"), False, log=lambda *a: None, record=rows.append)
    with open(out, "wb") as f:
        pickle.dump({"rows": rows, "yv": data.val.y, "yt": data.test.y, "over": over,
                     "ref": {k: v for k, v in ref.items() if k != "test_pred"}}, f)
    show(out)


def _acc(p: np.ndarray, y: np.ndarray) -> float:
    return float((p.argmax(1) == y).mean())


def show(path: str) -> None:
    # a pickle this script wrote itself, on this machine (never a file from someone else)
    with open(path, "rb") as f:
        d = pickle.load(f)
    rows, yt = d["rows"], d["yt"]
    restarts = sorted({r["restart"] for r in rows})
    key = lambda x: (round(x["val_acc"] + (0 if np.isnan(x["val_post_acc"]) else x["val_post_acc"]), 9),  # noqa
                     -x["val_loss"])
    per = {}
    for r in restarts:
        rr = [x for x in rows if x["restart"] == r]
        per[r] = {"val accuracy": max(rr, key=key), "val log-loss": min(rr, key=lambda x: x["val_loss"]),
                  "last round": rr[-1], "best on test": max(rr, key=lambda x: _acc(x["_pt"], yt))}
    ref = d["ref"]
    print(f"{path}: LR reference test {ref['test_acc']:.3f} (val {ref['val_acc']:.3f}); overrides {d['over']}")
    for rule in per[restarts[0]]:
        tests = [_acc(per[r][rule]["_pt"], yt) for r in restarts]
        pick = (min(restarts, key=lambda r: per[r][rule]["val_loss"]) if rule == "val log-loss" else
                max(restarts, key=lambda r: key(per[r][rule])))
        mean = _acc(np.mean([per[r][rule]["_pt"] for r in restarts], 0), yt)
        print(f"  {rule:<13} restarts {' '.join(f'{t:.3f}' for t in tests)}  picked {tests[restarts.index(pick)]:.3f}"
              f"  averaged {mean:.3f}")
    for r in restarts:
        print(f"  restart {r}: " + " ".join(f"{x['step']}:{x['val_acc']:.2f}/{_acc(x['_pt'], yt):.2f}"
                                          for x in rows if x["restart"] == r) + "  (step:val/test)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        a = sys.argv[2:]
        run(a[0], int(a[1]), a[2], json.loads(a[3]) if len(a) > 3 else {}, json.loads(a[4]) if len(a) > 4 else {})
    elif sys.argv[1:2] == ["show"]:
        for p in sys.argv[2:]:
            show(p)
    else:
        raise SystemExit(__doc__)
