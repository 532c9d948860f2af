"""Why a fit ends where it does (issue 33): every validation round's validation and test probabilities,
per restart, and the test accuracy each selection rule would have given, replayed on the same trainings.

    python -m benchmarks.selection_study run STORE SEED OUT.pkl ['{"lr": 3e-4}'] ['{"noise": 8}']
    python -m benchmarks.selection_study show OUT.pkl ...
    python -m benchmarks.selection_study release OUT.pkl ...
    python -m benchmarks.selection_study mix FEATURE1.pkl FEATURE2.pkl ... NONE1.pkl NONE2.pkl ...

STORE names a benchmarks.heads_quality store, built as that benchmark builds it (store seed 0, so SEED is
the fit's seed only and a run here is the benchmark's fit of that seed; its keyword arguments overridden by the
last JSON); the first JSON overrides FitConfig. `run` trains exactly as `heads fit` does (train_restarts:
every variant, every restart) and records each round's probabilities on validation influencers, validation
posts and test influencers.

`show` replays `heads fit`'s choices on those rounds under other rules and prints each rule's test accuracy
per file, then per rule the mean and worst over the files of each store (the `fit` rule is what `heads fit`
does today and must equal the kept model's test accuracy, printed beside it). A rule is STATE/MODEL/VARIANT:
- STATE, which round of a training is kept: `acc` (heads.loop.criterion: influencer + post validation
  accuracy, ties by their log-losses), `loss` (the influencer validation log-loss alone), `loss+post` (the sum
  of the influencer and post validation log-losses), `last` (the last round), `test` (the best on test: what
  the training could have given);
  `topK` (the best K rounds by `acc`, their predictions averaged), `winK` (the K consecutive rounds whose
  averaged predictions are best by `acc`);
- MODEL: `avg` (a variant's restarts averaged, --average-restarts), `cavg` (averaged after each restart is
  temperature-scaled on validation, so that an overconfident restart does not dominate the mean), `alone` (its
  best restart by STATE);
- VARIANT, which variant (normalisation x weak-post-label weight) is kept: `acc` or `loss` as STATE, or
  `all` (every variant's kept states averaged into one model), `first` (the variant whose first restart alone
  is best by STATE's criterion, then that variant's model: is one restart enough to choose the variant?).
`release` prints, per training, the test accuracy just before the attention starts to learn
(--attention-warmup), the best and the last after it, and the step where validation peaked.
`mix` replays, per pair of files of the same store and seed, a fit whose feature-normalised variants
are the first file's and whose unnormalised ones are the second's.
Files of the same store and seed with different FitConfig overrides (e.g. two learning rates) are also
replayed together as one fit whose variants are all of theirs (`+configs`).
"""
import itertools
import json
import os
import pickle
import sys

import numpy as np


def run(name: str, seed: int, out: str, over: dict, skw: dict) -> None:
    import torch
    torch.set_num_threads(1)
    from benchmarks.heads_quality import QUICK, STORES, make_store
    from cache import schema
    from cache.store import open_store
    from heads import loop
    from heads.data import load_labelled
    from heads.infer import predict_bags, predict_posts
    from heads.reference import logistic_reference
    from heads.train import FitConfig, head_config, train_restarts
    tag = "-".join(f"{k}{v}" for k, v in skw.items())
    path = os.path.join(os.path.dirname(os.path.abspath(out)), f"{name}{tag}.zarr")
    if not os.path.exists(path):
        make_store(path, dict({**STORES, **QUICK}[name][0], **skw), seed=0)
    store = open_store(path)
    data = load_labelled(store, "both")
    seg = tuple(schema.MODALITIES.values())
    cfg = FitConfig(device="cpu", seed=seed, **over)
    head = head_config(cfg, store)
    ref = logistic_reference(data, seg, seed)
    plain = loop.evaluate

    def evaluate(model, d, device):
        row = plain(model, d, device)
        row["_pv"] = predict_bags(model, d.val.bags, d.val.masks, device)[0]
        row["_pt"] = predict_bags(model, d.test.bags, d.test.masks, device)[0]
        row["_ppv"] = predict_posts(model, d.posts_val.x, device, present=d.posts_val.present)
        return row
    loop.evaluate = evaluate
    rows = []
    try:
        model, best = train_restarts(cfg, head, data, seg, torch.device("cpu"), False, log=lambda *a: None,
                                     record=rows.append)
    finally:
        loop.evaluate = plain
    kept = float((predict_bags(model, data.test.bags, data.test.masks, "cpu")[0].argmax(1) == data.test.y).mean())
    with open(out + ".partial", "wb") as f:
        pickle.dump({"store": name, "seed": seed, "rows": rows, "yv": data.val.y, "ypv": data.posts_val.y,
                     "yt": data.test.y, "over": over, "restarts": cfg.restarts, "kept_test": kept,
                     "ref": {k: v for k, v in ref.items() if k != "test_pred"}}, f)
    os.replace(out + ".partial", out)
    show([out])


def _acc(p: np.ndarray, y: np.ndarray) -> float:
    return float((p.argmax(1) == y).mean())


def _soft(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean()) if len(y) else 0.0


class State:
    """A kept model's validation and test probabilities (one round, or the mean of several)."""

    def __init__(self, pv, ppv, pt, d):
        self.pv, self.ppv, self.pt = pv, ppv, pt
        yv, ypv = d["yv"], d["ypv"]
        self.acc = _acc(pv, yv) + (_acc(ppv, ypv) if len(ypv) else 0.0)
        self.loss = _nll(pv, yv)
        self.loss_post = self.loss + _nll(ppv, ypv)
        self.test = _acc(pt, d["yt"])

    def scaled(self, d):
        """This state temperature-scaled on validation as heads.calibrate scales a run (fit_temperature:
        influencers and posts each their own temperature, the Laplace ceiling, T = 1 where it would not help)."""
        from heads.calibrate import fit_temperature, scaled
        tv = fit_temperature(self.pv, d["yv"])
        tp = fit_temperature(self.ppv, d["ypv"]) if len(d["ypv"]) else 1.0
        return State(scaled(self.pv, tv), scaled(self.ppv, tp) if len(d["ypv"]) else self.ppv, scaled(self.pt, tv), d)

    @classmethod
    def mean(cls, states, d):
        return cls(*(np.mean([getattr(s, k) for s in states], 0) for k in ("pv", "ppv", "pt")), d)

    def key(self, how: str):
        """Larger is better under rule `how` (acc as heads.loop.criterion: rounded accuracy, then log-loss)."""
        return {"acc": (round(self.acc, 9), -self.loss_post), "loss": -self.loss, "loss+post": -self.loss_post,
                "test": self.test}[how]


def _best(items, key):
    """The first of the best (heads fit keeps the earlier on ties)."""
    best = None
    for x in items:
        if best is None or key(x) > key(best):
            best = x
    return best


def trainings(d: dict) -> dict:
    """(variant, restart) -> that training's rounds as States, variants in heads fit's order."""
    out = {}
    for r in d["rows"]:
        out.setdefault((r["instance_weight"], r["normalize"], r["restart"] % d["restarts"]), []).append(
            State(r["_pv"], r["_ppv"], r["_pt"], d))
    return out


def replay(runs: dict, d: dict, state: str, model: str, variant: str) -> float:
    variants = {}
    for (w, n, k), rounds in runs.items():
        if state == "last":
            kept = rounds[-1]
        elif state.startswith("top"):        # the best K rounds by `acc`, their predictions averaged
            kept = State.mean(sorted(rounds, key=lambda s: s.key("acc"), reverse=True)[:int(state[3:])], d)
        elif state.startswith("win"):        # the K consecutive rounds best on their mean `acc`, averaged
            width = min(int(state[3:]), len(rounds))
            windows = [State.mean(rounds[i:i + width], d) for i in range(len(rounds) - width + 1)]
            kept = _best(windows, lambda s: s.key("acc"))
        else:
            kept = _best(rounds, lambda s: s.key(state))
        variants.setdefault((w, n), []).append(kept)
    pick = state if state in ("loss", "loss+post") else "acc"
    models = []
    for kept in variants.values():
        ordered = sorted(kept, key=lambda s: s.key(pick), reverse=True)       # stable: the earlier on ties
        if model == "cavg":         # each member temperature-scaled on validation first: none dominates
            ordered = [s.scaled(d) for s in ordered]
        models.append(ordered[0] if model == "alone" else State.mean(ordered, d))
    if variant == "all":
        return State.mean(models, d).test
    if variant == "first":      # chosen by each variant's first restart alone, then that variant's model
        firsts = [kept[0] for kept in variants.values()]
        return models[firsts.index(_best(firsts, lambda s: s.key(pick)))].test
    return _best(models, lambda s: s.key(variant)).test


RULES = [f"{s}/{m}/{v}" for s, m, v in itertools.product(("acc", "loss", "loss+post", "top2", "top3",
                                                                        "top5", "win3", "last", "test"),
                                                           ("avg", "cavg", "alone"), ("acc", "loss", "all", "first"))]


def show(paths: list[str]) -> None:
    files = []
    for p in paths:
        # a pickle this script wrote itself, on this machine (never a file from someone else)
        with open(p, "rb") as f:
            files.append((p, pickle.load(f)))
    results = {}            # (store, rule) -> [test accuracy per file or per combined fit]
    for p, d in files:
        runs = trainings(d)
        fitted = replay(runs, d, "acc", "avg" if d["restarts"] > 1 else "alone", "acc")
        print(f"{p}: {d['store']} seed {d['seed']} {d['over'] or 'defaults'}: kept model test {d['kept_test']:.3f}, "
              f"replayed fit {fitted:.3f}{'' if abs(fitted - d['kept_test']) < 1e-9 else '  (DIFFERS)'}; "
              f"LR reference {d['ref']['test_acc']:.3f}")
        for rule in RULES:
            results.setdefault((d["store"], json.dumps(d["over"], sort_keys=True), rule), []).append(
                replay(runs, d, *rule.split("/")))
    groups = {}
    for p, d in files:
        groups.setdefault((d["store"], d["seed"]), []).append(d)
    for (store, seed), ds in groups.items():
        if len(ds) < 2:
            continue
        merged = {}
        for i, d in enumerate(ds):
            merged.update({((i, w), n, k): v for (w, n, k), v in trainings(d).items()})
        for rule in RULES:
            results.setdefault((store, "+configs " + " ".join(json.dumps(d["over"], sort_keys=True) for d in ds),
                                rule), []).append(replay(merged, ds[0], *rule.split("/")))
    print(f"\n{'store':<28} {'config':<36} {'rule':<22} {'mean':>6} {'worst':>6}  per file")
    for (store, over, rule), accs in results.items():
        print(f"{store:<28} {over[:36]:<36} {rule:<22} {np.mean(accs):6.3f} {min(accs):6.3f}  "
              + " ".join(f"{a:.3f}" for a in accs))


def mix(feature: list[str], none: list[str]) -> None:
    """One fit per pair (same store and seed): the `feature`-normalised variants from the first file's
    trainings, the unnormalised ones from the second's (e.g. a learning rate per normalisation)."""
    out = {}
    for pf, pn in zip(feature, none):
        with open(pf, "rb") as f:     # pickles this script wrote itself (see show)
            df = pickle.load(f)
        with open(pn, "rb") as f:
            dn = pickle.load(f)
        if (df["store"], df["seed"]) != (dn["store"], dn["seed"]):
            raise SystemExit(f"{pf} and {pn} are not the same store and seed")
        runs = {key: v for key, v in trainings(df).items() if key[1] == "feature"}
        runs.update({key: v for key, v in trainings(dn).items() if key[1] == "none"})
        for rule in ("acc/avg/acc", "acc/cavg/acc", "acc/alone/acc", "test/avg/acc"):
            out.setdefault((df["store"], rule), []).append(replay(runs, df, *rule.split("/")))
        print(f"{df['store']} seed {df['seed']}: feature variants {df['over'] or 'defaults'}, none variants "
              f"{dn['over'] or 'defaults'}: fit {out[(df['store'], 'acc/avg/acc')][-1]:.3f} (feature file alone "
              f"{df['kept_test']:.3f}, none file alone {dn['kept_test']:.3f})")
    for (store, rule), accs in out.items():
        print(f"{store:<28} {rule:<14} {np.mean(accs):6.3f} {min(accs):6.3f}  " + " ".join(f"{a:.3f}" for a in accs))


def release(paths: list[str]) -> None:
    """Per training: test accuracy at the last round before the attention is released (attention_warmup),
    the best and the last after it, and where validation (`acc`) peaked: does learning the attention help?"""
    from heads.config import FitConfig
    print(f"{'file':<34} {'variant':<12} {'pre-release':>11} {'best after':>10} {'last':>6} {'val peak step':>13}")
    for p in paths:
        with open(p, "rb") as f:      # a pickle this script wrote itself (see show)
            d = pickle.load(f)
        warm = d["over"].get("attention_warmup", FitConfig.attention_warmup)
        rows = {}
        for r in d["rows"]:
            rows.setdefault((r["instance_weight"], r["normalize"], r["restart"] % d["restarts"]), []).append(r)
        for (w, n, k), rs in rows.items():
            states = [State(r["_pv"], r["_ppv"], r["_pt"], d) for r in rs]
            pre = [s.test for r, s in zip(rs, states) if r["step"] <= warm]
            post = [s.test for r, s in zip(rs, states) if r["step"] > warm]
            peak = rs[states.index(_best(states, lambda s: s.key("acc")))]["step"]
            print(f"{os.path.basename(p):<34} {n[:4]}/w{w:g}/r{k:<3} {pre[-1] if pre else float('nan'):11.3f} "
                  f"{max(post) if post else float('nan'):10.3f} {states[-1].test:6.3f} {peak:13d}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        a = sys.argv[2:]
        run(a[0], int(a[1]), a[2], json.loads(a[3]) if len(a) > 3 else {}, json.loads(a[4]) if len(a) > 4 else {})
    elif sys.argv[1:2] == ["show"]:
        show(sys.argv[2:])
    elif sys.argv[1:2] == ["mix"]:
        a = sys.argv[2:]
        mix(a[:len(a) // 2], a[len(a) // 2:])
    elif sys.argv[1:2] == ["release"]:
        release(sys.argv[2:])
    else:
        raise SystemExit(__doc__)
