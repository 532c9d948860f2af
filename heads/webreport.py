"""`heads report RUN STORE --out DIR`: one self-contained HTML report of a run, for people.

DIR/index.html plus DIR/assets/ (figures drawn with matplotlib, thumbnails made from the
dataset's own images, the explorer's data as a script file, since browsers refuse to fetch
JSON from file:// pages). Nothing is loaded from the network. What it shows:

- the run: store, labels and where they came from, encoders, options, git commit, best step,
  training curves (history.csv);
- Tables 1 and 2 of the paper's layout: the head, the logistic-regression reference, every
  baseline of `--baselines DIR`, and the paper's published accuracies (its data, not ours);
- Figure 5a (posts_curve.csv of `heads eval`), Figure 5b (`--ablate DIR`), confusion matrices;
- agreement with the release's categories (`--predictions DIR`'s summary.json);
- an explorer of every influencer (the store's predictions/ arrays: category, probability,
  followers, tier, engagement, release category), filtered, sorted, searched and paged by a
  small inline script;
- cards: per category the most confident influencers and the posts they attended to most,
  and per post category the posts the post head is surest of (the paper's Figure 4).

Every value from a run folder, a store or a dataset reaches the page through the Jinja2 template
assets/report.html.j2 with autoescape on: nothing is pasted into HTML by hand. The run folder is read
through its one validated reader (cache.runs.RunFolder); the other JSON inputs (summary.json,
results.json, ablation.json) are read tolerantly: a value of the wrong type shows as text or "n/a".
Thumbnails are named by store row, never by a post id, and every file is written inside OUT.

Memory: the per-influencer columns (M rows) and a chunked pass over posts/influencer, likes,
comments and the post predictions; cards read only the rows of the posts they show (plus
each shown influencer's attention weights, to find its top posts).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

from cache import schema
from cache.runs import RunFolder, read_json_object
from cache.store import open_store
from heads.cards import influencer_cards, post_examples, thumbnail
from heads.discover import lookalikes
from heads.explorer import TIERS, explorer_rows, influencer_columns, store_predictions
from heads.figures import INPUTS, confusion_figure, curves_figure, fig5a, fig5b, reliability_figure
from runtime.console import say
from runtime.errors import UserError
from runtime.files import inside, outside_inputs, write_text
from runtime.reporting import MODEL_NAME

POST_EXAMPLES = 6
ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")

# The paper's published accuracies (its Tables 1 and 2, Figure 5b) on its own data: a reference column.
PAPER_TABLE1 = {("Tag", None): 71.10, ("Text&Social", None): 81.35, ("User", None): 84.06, ("Image", None): 90.02,
                ("GaussianNB", "Text & Image"): 93.26, ("KNeighbors", "Text & Image"): 93.87,
                ("SVC", "Text & Image"): 94.13, ("RandomForest", "Text & Image"): 94.65,
                (MODEL_NAME, "Text & Image"): 98.32}
PAPER_TABLE2 = {("GaussianNB", "Text"): 40.70, ("GaussianNB", "Image"): 84.65, ("GaussianNB", "Text & Image"): 87.00,
                ("KNeighbors", "Text"): 38.85, ("KNeighbors", "Image"): 81.75, ("KNeighbors", "Text & Image"): 88.70,
                ("SVC", "Text"): 36.20, ("SVC", "Image"): 67.00, ("SVC", "Text & Image"): 71.50,
                ("RandomForest", "Text"): 31.80, ("RandomForest", "Image"): 78.30,
                ("RandomForest", "Text & Image"): 76.25, (MODEL_NAME, "Text"): 60.90,
                (MODEL_NAME, "Image"): 90.75, (MODEL_NAME, "Text & Image"): 96.20}
PAPER_FIG5B = {("text", "full model"): 89.04, ("image", "full model"): 95.47, ("both", "full model"): 98.32,
               ("both", "no attention"): 95.18, ("both", "no fine-tuning"): 97.41}


def _real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _weak(w) -> str:
    """The kept variant's weak post labels (`--instance-loss`), for runs that record it."""
    return "" if not _real(w) else ", no weak post labels" if w == 0 else f", weak post labels x{w:g}"


def _pct(x) -> str:
    return f"{100 * x:.2f}%" if _real(x) else "n/a"


def _fixed(x, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if _real(x) else "n/a" if x is None else str(x)


def _count(x) -> str:
    return f"{x:,}" if _real(x) else str(x)


def _read_json(path: str | None) -> dict | None:
    """An input file from another command (summary.json, results.json, ablation.json): an object, or None."""
    return read_json_object(path, required=False) if path else None


def _figure(draw, *args):
    """A figure from a file's numbers, or None where they are not numbers (a tampered input draws nothing)."""
    try:
        return draw(*args)
    except UserError:
        raise                  # a full disk or a refused path is the user's to know, not a missing figure
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None


def _dict(x) -> dict:
    return x if isinstance(x, dict) else {}


# ------------------------------------------------------------------ tables

def results_table(entries: list[tuple[str, str, dict | None, float | None]], categories: list[str]) -> dict:
    """entries: (model, input, metrics or None, the paper's accuracy or None)."""
    rows = []
    for model, inp, m, paper in entries:
        m = _dict(m)
        ok = _real(m.get("n")) and m["n"] > 0
        f1 = _dict(m.get("f1"))
        rows.append({"model": str(model), "input": str(inp), "accuracy": _pct(m.get("accuracy")) if ok else None,
                     "paper": f"{paper:.2f}%" if paper is not None else "",
                     "f1": [_fixed(f1[c]) if ok and c in f1 else "" for c in categories]})
    return {"headers": ["Model", "Input", "Accuracy (test)", "Paper's accuracy (its data)"] +
            [c.capitalize() for c in categories], "rows": rows}


# ------------------------------------------------------------------ the page


def _post(p: dict, thumb: str | None, label: str, value: str) -> dict:
    cap = p["caption"][:90] + ("…" if len(p["caption"]) > 90 else "")
    return {"thumb": thumb, "id": p["id"], "label": label, "value": value, "caption": cap}


@dataclass
class _Ctx:
    """What every section of the page reads."""
    run: RunFolder
    out: str
    store: object
    root: str

    @property
    def config(self) -> dict:
        return self.run.config

    @property
    def metrics(self) -> dict:
        return self.run.metrics

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def inp(self) -> str:
        return self.run.input_name

    @property
    def icats(self) -> list[str]:
        return self.run.influencer_categories

    @property
    def pcats(self) -> list[str]:
        return self.run.post_categories

    def thumb(self, p: dict) -> str | None:
        """A thumbnail named by the post's store row (never by its id, which is data)."""
        return thumbnail(self.root, p["image"], self.out, f"r{int(p['row'])}")


def _run_section(c: _Ctx) -> dict:
    config, metrics, store = c.config, c.metrics, c.store
    fit = config["fit"]
    encoders = []
    for modality in schema.MODALITIES:
        enc = store[f"features/{modality}"].attrs.get("encoder") if store.has_features(modality) else None
        if isinstance(enc, dict):
            encoders.append([modality, str(enc.get("model", "?")), str(enc.get("weights_sha256", ""))])
    li = _dict(_dict(config.get("labels")).get("influencers"))
    lab_text = {"release": "drawn from the release's categories (model-assigned; test accuracy is agreement with "
                           "the release)", "hand": "hand labels",
                "hand+release": "hand labels, the rest drawn from the release's categories"}.get(li.get("source"),
                                                                                                 "hand labels")
    st = config["store"]
    text = lambda s: ("text", str(s))  # noqa: E731
    code = lambda s: ("code", str(s))  # noqa: E731
    kv = [("store", [code(st.get("url")), text(f" — {_count(st.get('posts', 0))} posts, "
                                              f"{_count(st.get('influencers', 0))} influencers")]),
          ("influencer labels", [text(lab_text)] + ([text(" ("), code(li["file"]), text(")")] if li.get("file") else [])),
          ("post head", [text("trained on labelled posts" if c.run.post_head_trained
                              else "not trained: the store has no labelled posts")]),
          ("model", [text(f"{c.name}, input {c.inp}, attention {fit.get('attention', 'paper')}")]),
          ("options", [code(", ".join(f"{k}={v}" for k, v in fit.items()))]),
          ("git commit", [code(config.get("git_commit"))]),
          ("precision / device", [text(f"{config.get('precision')} / {config.get('device')}")]),
          ("selected state", [text(f"step {metrics.get('best_step')} (epoch {metrics.get('best_epoch')}, restart "
                                   f"{metrics.get('best_restart', 0)}, normalisation {metrics.get('normalize', '?')}"
                                   f"{_weak(metrics.get('instance_weight'))}); "
                                   f"validation accuracy {_pct(metrics.get('val_acc'))}, posts "
                                   f"{_pct(metrics.get('val_post_acc'))}")])]
    cal = _dict(_dict(metrics.get("calibration")).get("influencer"))
    if cal:
        test = _dict(cal.get("test"))
        kv.append(("calibration", [text(f"temperature {_fixed(cal.get('temperature'))} fitted on validation; test "
                                        f"influencers ECE {_fixed(test.get('ece_before'))} → "
                                        f"{_fixed(test.get('ece_after'))}, Brier {_fixed(test.get('brier_before'))} → "
                                        f"{_fixed(test.get('brier_after'))} (probabilities shown are calibrated)")]))
    return {"warning": metrics.get("warning"), "note": metrics.get("note"), "kv": kv, "encoders": encoders,
            "curves": _figure(curves_figure, c.run.path, c.out)}


def _tables_section(c: _Ctx, baselines: str | None) -> dict:
    metrics, name, inp = c.metrics, c.name, c.inp
    base = _read_json(os.path.join(baselines, "results.json")) if baselines else None
    ref = _dict(metrics.get("reference"))
    t1 = [(name, inp, metrics["influencer"], PAPER_TABLE1.get((name, inp)))]
    if ref.get("influencer"):
        t1.append((f"Reference: logistic regression on mean features (C={ref.get('C')})", inp, ref["influencer"], None))
    t2 = [(name, inp, metrics["post"] if c.run.post_head_trained else None, PAPER_TABLE2.get((name, inp)))]
    for task, rows in (("influencer", t1), ("post", t2)):
        for r in (base or {}).get(task, []) if isinstance((base or {}).get(task, []), list) else []:
            r = _dict(r)
            if r.get("model") == MODEL_NAME:
                continue          # the run itself, as `baselines run --compare` copied it
            key = (r.get("model"), r.get("input"))
            paper = (PAPER_TABLE1.get(key) or PAPER_TABLE1.get((r.get("model"), None)) if task == "influencer"
                     else PAPER_TABLE2.get(key))
            rows.append((r.get("model"), r.get("input"), r.get("metrics"), paper))
    return {"baselines": bool(base), "post_head_trained": c.run.post_head_trained,
            "t1": results_table(t1, c.icats), "t2": results_table(t2, c.pcats)}


def _figures_section(c: _Ctx, ablate: str | None) -> dict:
    metrics, out = c.metrics, c.out
    cm_i = _figure(confusion_figure, metrics["influencer"].get("confusion", []), c.icats, "Influencers (test)", out,
                   "cm_infl")
    cm_p = (_figure(confusion_figure, metrics["post"].get("confusion", []), c.pcats, "Posts (test)", out, "cm_post")
            if c.run.post_head_trained else None)
    f5a = _figure(fig5a, c.run.path, out)
    f5b = _figure(fig5b, _read_json(os.path.join(ablate, "ablation.json")) if ablate else None, out)
    f5b = f5b[0] if f5b else None
    rel = _figure(reliability_figure, metrics.get("calibration"), out)
    images = [(src, alt) for src, alt in ((f5a, "Figure 5a"), (f5b, "Figure 5b"), (cm_i, "confusion matrix, influencers"),
                                          (cm_p, "confusion matrix, posts"), (rel, "reliability diagram")) if src]
    missing = []
    if not f5a:
        missing.append("Figure 5a: run `heads eval RUN`")
    if not f5b:
        missing.append("Figure 5b: run `heads ablate` and pass `--ablate DIR`")
    paper5b = ", ".join(f"{INPUTS[m]} {v}: {p:.2f}%" for (m, v), p in PAPER_FIG5B.items())
    return {"images": images, "missing": "; ".join(missing), "paper5b": paper5b}


def _agreement_section(c: _Ctx, predictions: str | None) -> dict:
    psum = _read_json(os.path.join(predictions, "summary.json")) if predictions else None
    agreement = _dict((psum or {}).get("release_agreement"))
    per = _dict(agreement.get("per_category"))
    if not agreement.get("n") or not per:
        return {"rows": None, "given": psum is not None}
    rows = [[str(k), _fixed(_dict(v).get("precision")), _fixed(_dict(v).get("recall")), _fixed(_dict(v).get("f1")),
             str(_dict(v).get("support"))] for k, v in per.items()]
    cats = agreement.get("categories")
    fig = (_figure(confusion_figure, agreement.get("confusion"), cats, "Release (rows) vs run", c.out, "cm_release")
           if isinstance(cats, list) else None)
    return {"rows": rows, "given": True, "accuracy": _pct(agreement.get("accuracy")), "n": _count(agreement["n"]),
            "figure": fig}


def _explorer_section(c: _Ctx, pred: dict | None, pred_note: str) -> tuple[dict, int]:
    cols = influencer_columns(c.store)
    similar = lookalikes(pred["embedding"], 10) if pred and pred.get("embedding") is not None else None
    ex = explorer_rows(c.store, pred, cols, similar)
    # a script file (browsers refuse to fetch JSON from file:// pages); "</" escaped so no text ends a script
    write_text(inside(os.path.join(c.out, "assets", "explorer.js"), c.out),
               "window.EXPLORER=" + json.dumps(ex, separators=(",", ":")).replace("</", "<\\/") + ";\n")
    headers = [("username", "influencer"), ("category", "predicted"), ("probability", "probability"),
               ("followers", "followers"), ("tier", "tier"), ("posts", "posts"), ("engagement", "engagement"),
               ("sponsored", "sponsored"), ("release", "release category"), ("agree", "agrees"), ("split", "split"),
               ("similar", "lookalikes")]
    return {"note": pred_note, "categories": c.icats, "tiers": [t for _, t in TIERS] + ["unknown"],
            "headers": headers}, len(ex["username"])


def _cards_section(c: _Ctx, pred: dict | None, pred_note: str, cards: int) -> tuple[dict, int, int]:
    n_thumbs = n_missing = 0
    out = {"root": c.root, "categories": [], "examples": [], "note": None, "no_post_head": False}

    def shown(p, label, value):
        nonlocal n_thumbs, n_missing
        thumb = c.thumb(p)
        n_thumbs += thumb is not None
        n_missing += thumb is None
        return _post(p, thumb, label, value)
    if pred is None:
        out["note"] = pred_note
    else:
        for cat, items in influencer_cards(c.store, pred, cards).items():
            if items:
                out["categories"].append((cat.capitalize(), [
                    {"username": it["username"], "probability": f"{it['probability']:.3f}",
                     "posts": [shown(p, "attention", f"{p['weight']:.3f}") for p in it["posts"]]} for it in items]))
        examples = post_examples(c.store, POST_EXAMPLES) if c.run.post_head_trained else None
        if examples:
            out["examples"] = [(cat, [shown(p, "p =", f"{p['probability']:.3f}") for p in posts])
                               for cat, posts in examples.items()]
        out["no_post_head"] = not c.run.post_head_trained
    out["missing"] = n_missing
    return out, n_thumbs, n_missing


def _template():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
    env = Environment(loader=FileSystemLoader(ASSETS), autoescape=select_autoescape(["j2", "html"],
                      default_for_string=True, default=True), undefined=StrictUndefined, trim_blocks=False)
    return env.get_template("report.html.j2")


def write_report(run: str, store_url: str, out: str, *, baselines: str | None = None, predictions: str | None = None,
                 ablate: str | None = None, cards: int = 12, dataset: str | None = None, log=say) -> dict:
    t0 = time.perf_counter()
    if cards < 0:
        raise UserError(f"--cards must be 0 or more, got {cards}")
    folder = RunFolder.open(run)
    outside_inputs(out, {"store": store_url})
    outside_inputs(out, {"run folder": run})
    store = open_store(store_url)
    os.makedirs(os.path.join(out, "assets", "thumbs"), exist_ok=True)
    c = _Ctx(folder, out, store, dataset or store.attrs.get("dataset_root") or "")
    pred, pred_note = store_predictions(store, run)
    explorer, n_infl = _explorer_section(c, pred, pred_note)
    card_data, n_thumbs, n_missing = _cards_section(c, pred, pred_note, cards)
    with open(os.path.join(ASSETS, "report.css"), encoding="utf-8") as f:
        css = f.read()
    with open(os.path.join(ASSETS, "report.js"), encoding="utf-8") as f:
        script = f.read()
    page = _template().render(
        title=f"{c.name} — {c.inp}", accuracy=_pct(folder.metrics["influencer"].get("accuracy")),
        n_test=folder.metrics["influencer"].get("n", 0), written=time.strftime("%Y-%m-%d %H:%M"),
        run=_run_section(c), tables=_tables_section(c, baselines), figures=_figures_section(c, ablate),
        agreement=_agreement_section(c, predictions), explorer=explorer, cards=card_data, css=css, script=script)
    index = os.path.join(out, "index.html")
    write_text(inside(index, out), page)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    return {"index": index, "influencers": n_infl, "thumbnails": n_thumbs, "placeholders": n_missing,
            "bytes": size, "seconds": time.perf_counter() - t0}
