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

import csv
import html
import json
import math
import os
import time

import numpy as np

from cache import schema
from cache.outputs import predictions_run
from cache.store import UserError, open_store

THUMB = 160
TOP_POSTS = 3
POST_EXAMPLES = 6
CHUNK = schema.TABLE_CHUNK * 4
TIERS = [(10_000, "nano"), (100_000, "micro"), (1_000_000, "macro"), (math.inf, "mega")]

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
INPUTS = {"both": "Text & Image", "image": "Image", "text": "Text"}


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _read_json(path: str | None) -> dict | None:
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _save(fig, out: str, name: str) -> str:
    rel = f"assets/{name}.png"
    fig.savefig(os.path.join(out, rel), dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return rel


def tier(followers: int) -> str:
    if followers < 0:
        return "unknown"
    return next(name for limit, name in TIERS if followers < limit)


# ------------------------------------------------------------------ figures

def _csv_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def curves_figure(run: str, out: str) -> str | None:
    rows = _csv_rows(os.path.join(run, "history.csv"))
    if not rows:
        return None
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    for key, group in _by(rows, lambda r: (r.get("restart", "0"), r.get("normalize", ""))).items():
        step = [float(r["step"]) for r in group]
        label = f"restart {key[0]}" + (f" ({key[1]})" if key[1] else "")
        a.plot(step, [float(r["loss"]) for r in group], label=label)
        b.plot(step, [float(r["val_acc"]) for r in group], label=f"{label}: influencers")
        if any(r.get("val_post_acc") not in ("", "nan", None) for r in group):
            b.plot(step, [float(r["val_post_acc"] or "nan") for r in group], "--", label=f"{label}: posts")
    a.set(xlabel="step", ylabel="training loss", title="Training loss")
    a.set_yscale("log")
    b.set(xlabel="step", ylabel="validation accuracy", title="Validation accuracy", ylim=(0, 1.02))
    b.legend(fontsize=7)
    return _save(fig, out, "curves")


def _by(rows, key):
    out: dict = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def confusion_figure(confusion: list, categories: list[str], title: str, out: str, name: str) -> str | None:
    cm = np.array(confusion, dtype=float)
    if not cm.size or cm.sum() == 0:
        return None
    plt = _plt()
    n = len(categories)
    fig, ax = plt.subplots(figsize=(0.5 * n + 2.2, 0.45 * n + 1.6))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), categories, rotation=45, ha="right")
    ax.set_yticks(range(n), categories)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, out, name)


def fig5a(run: str, out: str) -> str | None:
    rows = _csv_rows(os.path.join(run, "posts_curve.csv"))
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot([int(r["posts"]) for r in rows], [float(r["accuracy"]) for r in rows], "o-", label="Influencer Profiler")
    ax.set(xlabel="posts per influencer", ylabel="test accuracy", title="Figure 5a: accuracy vs posts",
           ylim=(0, 1.02))
    ax.legend(fontsize=7)
    return _save(fig, out, "fig5a")


def fig5b(ablation: list | dict | None, out: str) -> tuple[str | None, list]:
    if not ablation:
        return None, []
    # ablation.json of `heads ablate`: {"VARIANT|MODALITY": accuracy}
    rows = [{"variant": k.split("|")[0], "modality": k.split("|")[1], "accuracy": v}
            for k, v in ablation.items() if "|" in k and v is not None]
    if not rows:
        return None, []
    plt = _plt()
    order = ["full model", "no attention", "no fine-tuning"]
    variants = sorted({r["variant"] for r in rows}, key=lambda v: order.index(v) if v in order else len(order))
    mods = [m for m in ("text", "image", "both") if any(r["modality"] == m for r in rows)]
    fig, ax = plt.subplots(figsize=(5.5, 3))
    width = 0.8 / len(variants)
    for k, v in enumerate(variants):
        acc = [next((r["accuracy"] for r in rows if r["modality"] == m and r["variant"] == v), np.nan) for m in mods]
        ax.bar(np.arange(len(mods)) + k * width, acc, width, label=v)
    ax.set_xticks(np.arange(len(mods)) + width * (len(variants) - 1) / 2, [INPUTS[m] for m in mods])
    ax.set(ylabel="test accuracy", ylim=(0, 1.02), title="Figure 5b: modalities, attention, fine-tuning")
    ax.legend(fontsize=7)
    return _save(fig, out, "fig5b"), rows


# ------------------------------------------------------------------ per-influencer columns

def influencer_columns(store) -> dict:
    """Followers, posts, engagement (mean likes + comments per post over followers) of every influencer,
    from a chunked pass over the posts tables."""
    m, n = store.n_influencers, store.n_posts
    inter = np.zeros(m, np.float64)
    owner_arr, likes, comments = store["posts/influencer"], store["posts/likes"], store["posts/comments"]
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        owner = owner_arr[start:stop].astype(np.int64)
        both = np.maximum(likes[start:stop], 0) + np.maximum(comments[start:stop], 0)
        inter += np.bincount(owner, weights=both.astype(np.float64), minlength=m)
    counts = np.diff(store.offsets())
    followers = store["influencers/followers"][:]
    with np.errstate(divide="ignore", invalid="ignore"):
        engagement = np.where((counts > 0) & (followers > 0), inter / np.maximum(counts, 1) / followers, np.nan)
    return {"followers": followers, "posts": counts, "engagement": engagement}


def _predictions(store, run: str) -> tuple[dict | None, str]:
    """The store's predictions/ arrays when complete, and a sentence on where they came from."""
    attrs = predictions_run(store)
    if not attrs or "predictions/influencer_label" not in store:
        return None, "no predictions in the store yet: run `heads predict RUN STORE` for the explorer and the cards"
    if not attrs.get("complete"):
        return None, "the store's predictions are incomplete (an interrupted `heads predict`): rerun it"
    note = f"predictions of run {attrs.get('run')}"
    if os.path.abspath(run) != attrs.get("run"):
        note += f" (not of this report's run, {os.path.abspath(run)})"
    return {"label": store["predictions/influencer_label"][:], "prob": store["predictions/influencer_prob"][:]}, note


def explorer_rows(store, pred: dict | None, cols: dict) -> dict:
    """The explorer's data, column-wise (compact): one entry per influencer of the store."""
    icats = store.influencer_categories
    m = store.n_influencers
    rel = (store["influencers/release_category"][:] if "influencers/release_category" in store
           else np.full(m, -1, np.int8))
    rel_names = [str(c) for c in store.attrs.get("release_categories") or []]
    label = pred["label"] if pred else np.full(m, -1, np.int8)
    prob = pred["prob"] if pred else np.full(m, np.nan, np.float32)
    split = store["influencers/split"][:]
    rel_name = [rel_names[r] if 0 <= r < len(rel_names) else "" for r in rel.tolist()]
    pred_name = [icats[c] if c >= 0 else "" for c in label.tolist()]
    agree = [(1 if p == r else 0) if p and r and r != "other" else -1 for p, r in zip(pred_name, rel_name)]
    return {
        "username": [str(u) for u in store["influencers/username"][:]],
        "category": pred_name,
        "probability": [None if math.isnan(p) else round(float(p), 3) for p in prob.tolist()],
        "followers": cols["followers"].tolist(),
        "tier": [tier(int(f)) for f in cols["followers"].tolist()],
        "posts": cols["posts"].tolist(),
        "engagement": [None if math.isnan(e) else round(float(e), 5) for e in cols["engagement"].tolist()],
        "release": rel_name,
        "agree": agree,
        "split": [schema.SPLIT_NAMES.get(int(s), "") for s in split.tolist()],
    }


# ------------------------------------------------------------------ cards

def thumbnail(root: str, rel: str, out: str, name: str) -> str | None:
    """A ~160 px JPEG of the dataset's image in DIR/assets/thumbs; None when it cannot be read."""
    from PIL import Image
    if not rel or not root:
        return None
    path = os.path.normpath(os.path.join(root, rel))
    if not path.startswith(os.path.normpath(root) + os.sep) or not os.path.isfile(path):
        return None
    dest = f"assets/thumbs/{name}.jpg"
    try:
        with Image.open(path) as im:
            im.draft("RGB", (THUMB, THUMB))
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            im.save(os.path.join(out, dest), "JPEG", quality=80)
    except Exception:      # a corrupt or hostile image gets a placeholder, never a broken report
        return None
    return dest


def _post_details(store, rows: np.ndarray) -> list[dict]:
    if not len(rows):
        return []
    rows = np.asarray(rows, np.int64)
    ids = store["posts/id"].get_orthogonal_selection((rows,))
    caps = store["posts/caption"].get_orthogonal_selection((rows,))
    imgs = store["posts/image"].get_orthogonal_selection((rows,))
    return [{"row": int(r), "id": str(i), "caption": str(c), "image": str(p)} for r, i, c, p in zip(rows, ids, caps, imgs)]


def influencer_cards(store, pred: dict, per_category: int) -> dict[str, list[dict]]:
    """Per category, the most confident influencers and their TOP_POSTS most attended posts."""
    icats = store.influencer_categories
    offsets = store.offsets()
    attention = store["predictions/attention"]
    users = store["influencers/username"]
    out = {}
    for c, name in enumerate(icats):
        idx = np.flatnonzero(pred["label"] == c)
        idx = idx[np.argsort(-pred["prob"][idx], kind="stable")][:per_category]
        cards = []
        for j in idx.tolist():
            a, b = int(offsets[j]), int(offsets[j + 1])
            w = attention[a:b].astype(np.float32)
            top = np.argsort(-np.nan_to_num(w, nan=-1.0), kind="stable")[:TOP_POSTS]
            top = top[~np.isnan(w[top])]
            posts = _post_details(store, a + top)
            for p, t in zip(posts, top):
                p["weight"] = float(w[t])
            cards.append({"row": j, "username": str(users[j]), "probability": float(pred["prob"][j]),
                          "posts": posts})
        out[name] = cards
    return out


def post_examples(store, k: int) -> dict[str, list[dict]] | None:
    """Per post category, the k posts the post head is surest of (a chunked pass over the predictions)."""
    if "predictions/post_label" not in store:
        return None
    pcats = store.post_categories
    best: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    label_arr, prob_arr = store["predictions/post_label"], store["predictions/post_prob"]
    any_label = False
    for start in range(0, store.n_posts, CHUNK):
        lab = label_arr[start:start + CHUNK]
        prob = prob_arr[start:start + CHUNK].astype(np.float32)
        for c in np.unique(lab[lab >= 0]).tolist():
            any_label = True
            idx = np.flatnonzero(lab == c)
            top = idx[np.argsort(-prob[idx], kind="stable")[:k]]
            rows, probs = best.get(c, (np.zeros(0, np.int64), np.zeros(0, np.float32)))
            rows, probs = np.concatenate([rows, start + top]), np.concatenate([probs, prob[top]])
            keep = np.argsort(-probs, kind="stable")[:k]
            best[c] = (rows[keep], probs[keep])
    if not any_label:
        return None
    out = {}
    for c, (rows, probs) in sorted(best.items()):
        posts = _post_details(store, rows)
        for p, q in zip(posts, probs):
            p["probability"] = float(q)
        out[pcats[c]] = posts
    return out


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

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b8c0d0}nav{background:#fff;border-bottom:1px solid #dde1e8;padding:8px 32px;
position:sticky;top:0;z-index:2}nav a{margin-right:18px;color:#2f5fb3;text-decoration:none;font-weight:600}
main{padding:8px 32px 40px;max-width:1320px}section{background:#fff;border:1px solid #dde1e8;border-radius:8px;
padding:14px 20px;margin:16px 0}h2{font-size:18px;margin:4px 0 10px}h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{border-bottom:1px solid #e6e9ef;padding:4px 9px;
text-align:left;white-space:nowrap}th{background:#f0f2f6}table.results td:nth-child(n+3){text-align:right}
.kv td{white-space:normal}.kv td:first-child{color:#5a6475;padding-right:18px;white-space:nowrap}
table.results td:first-child{white-space:normal;min-width:140px;max-width:280px}.figs{display:flex;flex-wrap:wrap;gap:16px}
.figs img{max-width:100%;border:1px solid #eef0f4}.warn{background:#fff4e5;border-left:4px solid #f0a020;
padding:6px 10px}.note{color:#5a6475}.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));
gap:12px}.card{border:1px solid #dde1e8;border-radius:6px;padding:8px 10px}.card h4{margin:0 0 6px;font-size:14px}
.posts{display:flex;gap:6px}.post{width:100px;font-size:11px;color:#3b4352}.post img,.ph{width:100px;height:100px;
object-fit:cover;border-radius:4px;display:block;background:#e9ecf1}.ph{display:flex;align-items:center;
justify-content:center;color:#8a93a3;font-size:11px;text-align:center}.post .cap{max-height:42px;overflow:hidden}
#ex-controls{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0}#ex-table th{cursor:pointer;user-select:none}
#ex-table td.num{text-align:right}.yes{color:#1f7a3a}.no{color:#b3261e}.pill{background:#eef2fb;border-radius:9px;
padding:1px 7px}
"""

SCRIPT = """
(function(){
var D=window.EXPLORER, n=D.username.length, cols=["username","category","probability","followers","tier","posts",
"engagement","release","agree","split"], num={probability:1,followers:1,posts:1,engagement:1,agree:1};
var state={sort:"probability",dir:-1,page:0,size:50}, order=[];
function q(id){return document.getElementById(id);}
function fmt(c,v){if(v===null||v===undefined||v==="")return"";if(c==="agree")return v<0?"":(v?'<span class="yes">yes</span>':'<span class="no">no</span>');
if(c==="followers"||c==="posts")return v<0?"":Number(v).toLocaleString();if(c==="engagement")return(100*v).toFixed(2)+"%";
if(c==="probability")return v.toFixed(3);return String(v).replace(/[&<>]/g,function(s){return{"&":"&amp;","<":"&lt;",">":"&gt;"}[s];});}
function apply(){var cat=q("ex-cat").value,tier=q("ex-tier").value,ag=q("ex-agree").value,s=q("ex-search").value.toLowerCase();
order=[];for(var i=0;i<n;i++){if(cat&&D.category[i]!==cat)continue;if(tier&&D.tier[i]!==tier)continue;
if(ag!==""&&String(D.agree[i])!==ag)continue;if(s&&D.username[i].toLowerCase().indexOf(s)<0)continue;order.push(i);}
var c=state.sort,d=state.dir,col=D[c];order.sort(function(a,b){var x=col[a],y=col[b];
if(x===null||x==="")return 1;if(y===null||y==="")return -1;return x<y?-d:x>y?d:a-b;});state.page=0;render();}
function render(){var pages=Math.max(1,Math.ceil(order.length/state.size));state.page=Math.min(state.page,pages-1);
var rows=[],s=state.page*state.size;for(var k=s;k<Math.min(s+state.size,order.length);k++){var i=order[k];
rows.push("<tr>"+cols.map(function(c){return'<td class="'+(num[c]?"num":"")+'">'+fmt(c,D[c][i])+"</td>";}).join("")+"</tr>");}
q("ex-body").innerHTML=rows.join("");q("ex-info").textContent=order.length.toLocaleString()+" of "+n.toLocaleString()+
" influencers; page "+(state.page+1)+" of "+pages;}
document.querySelectorAll("#ex-table th").forEach(function(th){th.onclick=function(){var c=th.dataset.col;
state.dir=state.sort===c?-state.dir:(num[c]?-1:1);state.sort=c;apply();};});
["ex-cat","ex-tier","ex-agree"].forEach(function(id){q(id).onchange=apply;});q("ex-search").oninput=apply;
q("ex-prev").onclick=function(){if(state.page>0){state.page--;render();}};
q("ex-next").onclick=function(){state.page++;render();};apply();})();
"""


def _post_html(p: dict, thumb: str | None, extra: str) -> str:
    img = (f'<img src="{_esc(thumb)}" alt="post {_esc(p["id"])}" loading="lazy">' if thumb
           else '<div class="ph">image unavailable</div>')
    cap = p["caption"][:90] + ("…" if len(p["caption"]) > 90 else "")
    return f'<div class="post">{img}<div>{extra}</div><div class="cap">{_esc(cap)}</div></div>'


def write_report(run: str, store_url: str, out: str, *, baselines: str | None = None, predictions: str | None = None,
                 ablate: str | None = None, cards: int = 12, dataset: str | None = None, log=print) -> dict:
    t0 = time.perf_counter()
    config = _read_json(os.path.join(run, "config.json"))
    metrics = _read_json(os.path.join(run, "metrics.json"))
    if config is None or metrics is None:
        raise UserError(f"{run}: not a finished `heads fit` run (config.json and metrics.json needed)")
    store = open_store(store_url)
    os.makedirs(os.path.join(out, "assets", "thumbs"), exist_ok=True)
    root = dataset or store.attrs.get("dataset_root") or ""
    fit = config["fit"]
    icats, pcats = config["influencer_categories"], config["post_categories"]
    inp = INPUTS[fit["modality"]]
    name = "Influencer Profiler" + ("" if fit["pooling"] == "attention" else " (mean pooling)")
    parts = []

    # --- run summary
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
    curves = curves_figure(run, out)
    parts.append(f'<section id="run"><h2>Run</h2>{warn}{summary}'
                 + (f'<h3>Training curves</h3><div class="figs"><img src="{curves}" alt="training curves"></div>'
                    if curves else "") + "</section>")

    # --- tables 1 and 2
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

    # --- figures
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

    # --- agreement with the release
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

    # --- explorer
    pred, pred_note = _predictions(store, run)
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

    # --- cards
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

    title = f"{name} — {inp}"
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
            f'<header><h1>Influencer Profiler report</h1><p>{_esc(title)} · influencer test accuracy '
            f'<b>{_pct(metrics["influencer"].get("accuracy"))}</b> on {metrics["influencer"].get("n", 0)} '
            f'influencers · written {time.strftime("%Y-%m-%d %H:%M")}</p></header>'
            '<nav><a href="#run">Run</a><a href="#tables">Tables</a><a href="#figures">Figures</a>'
            '<a href="#agreement">Agreement</a><a href="#explorer">Explorer</a><a href="#cards">Cards</a></nav>'
            f'<main>{"".join(parts)}</main><script src="assets/explorer.js"></script><script>{SCRIPT}</script>'
            "</body></html>")
    index = os.path.join(out, "index.html")
    with open(index + ".partial", "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(index + ".partial", index)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    return {"index": index, "influencers": len(ex["username"]), "thumbnails": n_thumbs, "placeholders": n_missing,
            "bytes": size, "seconds": time.perf_counter() - t0}
