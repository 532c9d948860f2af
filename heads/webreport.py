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

Memory: the per-influencer columns (M rows) and a chunked pass over posts/influencer, likes,
comments and the post predictions; cards read only the rows of the posts they show (plus
each shown influencer's attention weights, to find its top posts).
"""
from __future__ import annotations

import html
import json
import math
import os
import time
from dataclasses import dataclass

from cache import schema
from cache.store import open_store
from heads.cards import influencer_cards, post_examples, thumbnail
from heads.explorer import TIERS, explorer_rows, influencer_columns, store_predictions
from heads.figures import INPUTS, confusion_figure, curves_figure, fig5a, fig5b
from runtime.console import say
from runtime.errors import UserError

POST_EXAMPLES = 6
ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")

# The paper's published accuracies (its Tables 1 and 2, Figure 5b) on its own data: a reference column.
PAPER_TABLE1 = {("Tag", None): 71.10, ("Text&Social", None): 81.35, ("User", None): 84.06, ("Image", None): 90.02,
                ("GaussianNB", "Text & Image"): 93.26, ("KNeighbors", "Text & Image"): 93.87,
                ("SVC", "Text & Image"): 94.13, ("RandomForest", "Text & Image"): 94.65,
                ("Influencer Profiler", "Text & Image"): 98.32}
PAPER_TABLE2 = {("GaussianNB", "Text"): 40.70, ("GaussianNB", "Image"): 84.65, ("GaussianNB", "Text & Image"): 87.00,
                ("KNeighbors", "Text"): 38.85, ("KNeighbors", "Image"): 81.75, ("KNeighbors", "Text & Image"): 88.70,
                ("SVC", "Text"): 36.20, ("SVC", "Image"): 67.00, ("SVC", "Text & Image"): 71.50,
                ("RandomForest", "Text"): 31.80, ("RandomForest", "Image"): 78.30,
                ("RandomForest", "Text & Image"): 76.25, ("Influencer Profiler", "Text"): 60.90,
                ("Influencer Profiler", "Image"): 90.75, ("Influencer Profiler", "Text & Image"): 96.20}
PAPER_FIG5B = {("text", "full model"): 89.04, ("image", "full model"): 95.47, ("both", "full model"): 98.32,
               ("both", "no attention"): 95.18, ("both", "no fine-tuning"): 97.41}


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _read_json(path: str | None) -> dict | None:
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


# ------------------------------------------------------------------ tables

def _table(headers: list[str] | None, rows: list[list[str]], cls: str = "") -> str:
    head = ("<thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in headers) + "</tr></thead>") if headers else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


def results_table(entries: list[tuple[str, str, dict | None, float | None]], categories: list[str]) -> str:
    """entries: (model, input, metrics or None, the paper's accuracy or None)."""
    rows = []
    for model, inp, m, paper in entries:
        ok = m is not None and m.get("n", 0) > 0
        acc = f'<span class="acc">{_pct(m["accuracy"])}</span>' if ok else "n/a"
        f1 = [f"{m['f1'].get(c, float('nan')):.3f}" if ok and c in m.get("f1", {}) else "" for c in categories]
        rows.append([_esc(model), _esc(inp), acc, f"{paper:.2f}%" if paper is not None else ""] + f1)
    return _table(["Model", "Input", "Accuracy (test)", "Paper's accuracy (its data)"] +
                  [c.capitalize() for c in categories], rows, "results")


# ------------------------------------------------------------------ the page


def _post_html(p: dict, thumb: str | None, extra: str) -> str:
    img = (f'<img src="{_esc(thumb)}" alt="post {_esc(p["id"])}" loading="lazy">' if thumb
           else '<div class="ph">image unavailable</div>')
    cap = p["caption"][:90] + ("…" if len(p["caption"]) > 90 else "")
    return f'<div class="post">{img}<div>{extra}</div><div class="cap">{_esc(cap)}</div></div>'


@dataclass
class _Ctx:
    """What every section of the page reads."""
    run: str
    out: str
    store: object
    config: dict
    metrics: dict
    root: str

    @property
    def name(self) -> str:
        return "Influencer Profiler" + ("" if self.config["fit"]["pooling"] == "attention" else " (mean pooling)")

    @property
    def inp(self) -> str:
        return INPUTS[self.config["fit"]["modality"]]

    @property
    def icats(self) -> list[str]:
        return self.config["influencer_categories"]

    @property
    def pcats(self) -> list[str]:
        return self.config["post_categories"]


def _run_section(c: _Ctx):
    config, metrics, store, run, out = c.config, c.metrics, c.store, c.run, c.out
    fit, name, inp = config["fit"], c.name, c.inp
    parts = []
    enc_rows = []
    for modality in schema.MODALITIES:
        enc = store[f"features/{modality}"].attrs.get("encoder") if store.has_features(modality) else None
        if enc:
            enc_rows.append([modality, _esc(enc.get("model", "?")), _esc(enc.get("weights_sha256", ""))])
    labels = config.get("labels") or {}
    li = labels.get("influencers") or {}
    lab_text = {"release": "drawn from the release's categories (model-assigned; test accuracy is agreement with "
                           "the release)", "hand": "hand labels",
                "hand+release": "hand labels, the rest drawn from the release's categories"}.get(li.get("source"),
                                                                                                 "hand labels")
    kv = [("store", f"<code>{_esc(config['store'].get('url'))}</code> — {config['store'].get('posts', 0):,} posts, "
                    f"{config['store'].get('influencers', 0):,} influencers"),
          ("influencer labels", _esc(lab_text) + (f" (<code>{_esc(li['file'])}</code>)" if li.get("file") else "")),
          ("post head", "trained on labelled posts" if config.get("post_head_trained", True)
           else "not trained: the store has no labelled posts"),
          ("model", f"{_esc(name)}, input {_esc(inp)}, attention {_esc(fit.get('attention', 'paper'))}"),
          ("options", "<code>" + _esc(", ".join(f"{k}={v}" for k, v in fit.items())) + "</code>"),
          ("git commit", f"<code>{_esc(config.get('git_commit'))}</code>"),
          ("precision / device", f"{_esc(config.get('precision'))} / {_esc(config.get('device'))}"),
          ("selected state", f"step {metrics.get('best_step')} (epoch {metrics.get('best_epoch')}, restart "
                             f"{metrics.get('best_restart', 0)}, normalisation {metrics.get('normalize', '?')}); "
                             f"validation accuracy {_pct(metrics.get('val_acc'))}, posts "
                             f"{_pct(metrics.get('val_post_acc'))}")]
    summary = _table(None, [[k, v] for k, v in kv], "kv")
    if enc_rows:
        summary += "<h3>Encoders</h3>" + _table(["modality", "model", "fingerprint"], enc_rows)
    warn = f'<p class="warn"><b>Warning:</b> {_esc(metrics["warning"])}</p>' if metrics.get("warning") else ""
    if metrics.get("note"):
        warn += f'<p class="note">Note: {_esc(metrics["note"])}</p>'
    curves = curves_figure(run, out)
    parts.append(f'<section id="run"><h2>Run</h2>{warn}{summary}'
                 + (f'<h3>Training curves</h3><div class="figs"><img src="{curves}" alt="training curves"></div>'
                    if curves else "") + "</section>")
    return "".join(parts)


def _tables_section(c: _Ctx, baselines: str | None):
    config, metrics, name, inp, icats, pcats = c.config, c.metrics, c.name, c.inp, c.icats, c.pcats
    parts = []
    base = _read_json(os.path.join(baselines, "results.json")) if baselines else None
    ref = metrics.get("reference") or {}
    t1 = [(name, inp, metrics["influencer"], PAPER_TABLE1.get((name, inp)))]
    if ref.get("influencer"):
        t1.append((f"Reference: logistic regression on mean features (C={ref.get('C')})", inp, ref["influencer"], None))
    t2 = [(name, inp, metrics["post"] if config.get("post_head_trained", True) else None,
           PAPER_TABLE2.get((name, inp)))]
    for task, rows in (("influencer", t1), ("post", t2)):
        for r in (base or {}).get(task, []):
            if r["model"] == "Influencer Profiler":
                continue          # the run itself, as `baselines run --compare` copied it
            paper = (PAPER_TABLE1.get((r["model"], r["input"])) or PAPER_TABLE1.get((r["model"], None))
                     if task == "influencer" else PAPER_TABLE2.get((r["model"], r["input"])))
            rows.append((r["model"], r["input"], r.get("metrics"), paper))
    note = "" if base else '<p class="note">No baselines given (<code>--baselines DIR</code> of `baselines run`).</p>'
    post_note = ("" if config.get("post_head_trained", True) else
                 '<p class="note">The post head was not trained: the store has no labelled posts.</p>')
    parts.append('<section id="tables"><h2>Tables 1 and 2</h2><p class="note">Accuracy and per-class F1 on this '
                 'store\'s test split. The paper\'s column is its published figure on its own data, for reference '
                 f'only.</p>{note}<h3>Influencer classification (Table 1)</h3>{results_table(t1, icats)}'
                 f'<h3>Post classification (Table 2)</h3>{post_note}{results_table(t2, pcats)}</section>')
    return "".join(parts)


def _figures_section(c: _Ctx, ablate: str | None):
    config, metrics, run, out, icats, pcats = c.config, c.metrics, c.run, c.out, c.icats, c.pcats
    parts = []
    figs = []
    cm_i = confusion_figure(metrics["influencer"].get("confusion", []), icats, "Influencers (test)", out, "cm_infl")
    cm_p = (confusion_figure(metrics["post"].get("confusion", []), pcats, "Posts (test)", out, "cm_post")
            if config.get("post_head_trained", True) else None)
    f5a = fig5a(run, out)
    f5b, ab_rows = fig5b(_read_json(os.path.join(ablate, "ablation.json")) if ablate else None, out)
    for src, alt in ((f5a, "Figure 5a"), (f5b, "Figure 5b"), (cm_i, "confusion matrix, influencers"),
                     (cm_p, "confusion matrix, posts")):
        if src:
            figs.append(f'<img src="{src}" alt="{alt}">')
    missing = []
    if not f5a:
        missing.append("Figure 5a: run `heads eval RUN`")
    if not f5b:
        missing.append("Figure 5b: run `heads ablate` and pass `--ablate DIR`")
    paper5b = ", ".join(f"{INPUTS[m]} {v}: {p:.2f}%" for (m, v), p in PAPER_FIG5B.items())
    parts.append('<section id="figures"><h2>Figures</h2><div class="figs">' + "".join(figs) + "</div>"
                 + (f'<p class="note">Not drawn: {_esc("; ".join(missing))}.</p>' if missing else "")
                 + f'<p class="note">The paper\'s Figure 5b (its data): {_esc(paper5b)}.</p></section>')
    return "".join(parts)


def _agreement_section(c: _Ctx, predictions: str | None):
    out = c.out
    parts = []
    psum = _read_json(os.path.join(predictions, "summary.json")) if predictions else None
    agreement = (psum or {}).get("release_agreement")
    if agreement and agreement.get("n"):
        rows = [[_esc(c), f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"])]
                for c, v in agreement["per_category"].items()]
        cm_r = confusion_figure(agreement["confusion"], agreement["categories"], "Release (rows) vs run", out,
                                "cm_release")
        parts.append(f'<section id="agreement"><h2>Agreement with the release\'s categories</h2><p>'
                     f'<span class="acc">{_pct(agreement["accuracy"])}</span> of {agreement["n"]:,} influencers in no '
                     f'train or val split. This is agreement with the paper\'s model, not accuracy: accuracy is '
                     f'measured on hand-labelled test influencers.</p><div class="figs">'
                     + _table(["category", "precision", "recall", "F1", "support"], rows)
                     + (f'<img src="{cm_r}" alt="agreement confusion">' if cm_r else "") + "</div></section>")
    else:
        parts.append('<section id="agreement"><h2>Agreement with the release\'s categories</h2><p class="note">'
                     + ("Not computed: pass <code>--predictions DIR</code> of `heads predict`." if not psum else
                        "n/a: the store has no release categories outside train and val.") + "</p></section>")
    return "".join(parts)


def _explorer_section(c: _Ctx, pred: dict | None, pred_note: str):
    store, out, icats = c.store, c.out, c.icats
    parts = []
    cols = influencer_columns(store)
    ex = explorer_rows(store, pred, cols)
    with open(os.path.join(out, "assets", "explorer.js"), "w") as f:
        f.write("window.EXPLORER=" + json.dumps(ex, separators=(",", ":")) + ";\n")
    headers = [("username", "influencer"), ("category", "predicted"), ("probability", "probability"),
               ("followers", "followers"), ("tier", "tier"), ("posts", "posts"), ("engagement", "engagement"),
               ("release", "release category"), ("agree", "agrees"), ("split", "split")]
    opts = lambda vals: "".join(f'<option value="{_esc(v)}">{_esc(t)}</option>' for v, t in vals)  # noqa: E731
    parts.append(
        f'<section id="explorer"><h2>Influencer explorer</h2><p class="note">{_esc(pred_note)}. Tiers: nano &lt; 10 k '
        'followers, micro &lt; 100 k, macro &lt; 1 M, mega. Engagement: mean likes + comments per post over followers. '
        'Click a column to sort.</p><div id="ex-controls">'
        f'<select id="ex-cat">{opts([("", "every category")] + [(c, c) for c in icats])}</select>'
        f'<select id="ex-tier">{opts([("", "every tier")] + [(t, t) for _, t in TIERS] + [("unknown", "unknown")])}'
        '</select><select id="ex-agree">' + opts([("", "agreement: any"), ("1", "agrees with release"),
                                                   ("0", "disagrees with release")])
        + '</select><input id="ex-search" placeholder="search a name" size="24"><button id="ex-prev">‹ previous</button>'
        '<button id="ex-next">next ›</button><span id="ex-info" class="note"></span></div>'
        '<table id="ex-table"><thead><tr>' + "".join(f'<th data-col="{c}">{_esc(t)}</th>' for c, t in headers)
        + '</tr></thead><tbody id="ex-body"></tbody></table></section>')
    return "".join(parts), len(ex["username"])


def _cards_section(c: _Ctx, pred: dict | None, pred_note: str, cards: int):
    config, store, out = c.config, c.store, c.out
    parts = []
    root = c.root
    n_thumbs = n_missing = 0
    card_html = []
    if pred is not None:
        for cat, items in influencer_cards(store, pred, cards).items():
            if not items:
                continue
            boxes = []
            for it in items:
                posts = []
                for p in it["posts"]:
                    thumb = thumbnail(root, p["image"], out, p["id"])
                    n_thumbs += thumb is not None
                    n_missing += thumb is None
                    posts.append(_post_html(p, thumb, f'attention <b>{p["weight"]:.3f}</b>'))
                boxes.append(f'<div class="card"><h4>{_esc(it["username"])} <span class="pill">'
                             f'{it["probability"]:.3f}</span></h4><div class="posts">{"".join(posts)}</div></div>')
            card_html.append(f'<h3>{_esc(cat.capitalize())}</h3><div class="cards">{"".join(boxes)}</div>')
        examples = post_examples(store, POST_EXAMPLES) if config.get("post_head_trained", True) else None
        if examples:
            card_html.append("<h3>Figure 4 from this data: posts the post head is surest of</h3>")
            for cat, posts in examples.items():
                items = []
                for p in posts:
                    thumb = thumbnail(root, p["image"], out, p["id"])
                    n_thumbs += thumb is not None
                    n_missing += thumb is None
                    items.append(_post_html(p, thumb, f'p = <b>{p["probability"]:.3f}</b>'))
                card_html.append(f'<h4>{_esc(cat)}</h4><div class="posts">{"".join(items)}</div>')
        elif not config.get("post_head_trained", True):
            card_html.append('<p class="note">No post examples: the post head was not trained.</p>')
    else:
        card_html.append(f'<p class="note">{_esc(pred_note)}.</p>')
    if n_missing:
        card_html.insert(0, f'<p class="note">{n_missing} images could not be read from the dataset root '
                            f'<code>{_esc(root)}</code> (moved, missing or unreadable): shown as placeholders; pass '
                            f'<code>--dataset ROOT</code> if it moved.</p>')
    parts.append(f'<section id="cards"><h2>Cards: the posts that drove each decision</h2>{"".join(card_html)}'
                 "</section>")
    return "".join(parts), n_thumbs, n_missing


def write_report(run: str, store_url: str, out: str, *, baselines: str | None = None, predictions: str | None = None,
                 ablate: str | None = None, cards: int = 12, dataset: str | None = None, log=say) -> dict:
    t0 = time.perf_counter()
    config = _read_json(os.path.join(run, "config.json"))
    metrics = _read_json(os.path.join(run, "metrics.json"))
    if config is None or metrics is None:
        raise UserError(f"{run}: not a finished `heads fit` run (config.json and metrics.json needed)")
    store = open_store(store_url)
    os.makedirs(os.path.join(out, "assets", "thumbs"), exist_ok=True)
    c = _Ctx(run, out, store, config, metrics, dataset or store.attrs.get("dataset_root") or "")
    pred, pred_note = store_predictions(store, run)
    explorer, n_infl = _explorer_section(c, pred, pred_note)
    card_html, n_thumbs, n_missing = _cards_section(c, pred, pred_note, cards)
    sections = [_run_section(c), _tables_section(c, baselines), _figures_section(c, ablate),
                _agreement_section(c, predictions), explorer, card_html]
    title = f"{c.name} — {c.inp}"
    with open(os.path.join(ASSETS, "report.css")) as f:
        css = f.read()
    with open(os.path.join(ASSETS, "report.js")) as f:
        script = f.read()
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{css}</style></head><body>'
            f'<header><h1>Influencer Profiler report</h1><p>{_esc(title)} · influencer test accuracy '
            f'<b>{_pct(metrics["influencer"].get("accuracy"))}</b> on {metrics["influencer"].get("n", 0)} '
            f'influencers · written {time.strftime("%Y-%m-%d %H:%M")}</p></header>'
            '<nav><a href="#run">Run</a><a href="#tables">Tables</a><a href="#figures">Figures</a>'
            '<a href="#agreement">Agreement</a><a href="#explorer">Explorer</a><a href="#cards">Cards</a></nav>'
            f'<main>{"".join(sections)}</main><script src="assets/explorer.js"></script><script>{script}</script>'
            "</body></html>")
    index = os.path.join(out, "index.html")
    with open(index + ".partial", "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(index + ".partial", index)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    return {"index": index, "influencers": n_infl, "thumbnails": n_thumbs, "placeholders": n_missing,
            "bytes": size, "seconds": time.perf_counter() - t0}
