"""report.md of a run: the paper's Table 1 / Table 2 layout (accuracy and per-class F1)."""
from __future__ import annotations

import os

from runtime.files import write_text
from runtime.reporting import INPUT_NAMES, model_name, table


def write_report(run: str, config: dict, metrics: dict) -> str:
    fit = config["fit"]
    name, inp = model_name(fit["pooling"]), INPUT_NAMES[fit["modality"]]
    parts = [f"# Run report: {name}, {inp}", "",
             f"- store: `{config['store']['url']}` ({config['store']['posts']} posts, "
             f"{config['store']['influencers']} influencers)",
             f"- git commit: `{config['git_commit']}`; best epoch {metrics['best_epoch']} "
             f"(validation accuracy {100 * metrics['val_acc']:.2f}%)",
             f"- test set: {metrics['influencer']['n']} influencers, {metrics['post']['n']} posts",
             f"- precision {config.get('precision', '?')}; best state at step {metrics.get('best_step', '?')} "
             f"(restart {metrics.get('best_restart', 0)}); validation post accuracy "
             + (f"{100 * metrics['val_post_acc']:.2f}%" if metrics.get("val_post_acc") is not None else "n/a")]
    ref = metrics.get("reference")
    rows = [(name, inp, metrics["influencer"])]
    if ref:
        rows.append((f"Reference: logistic regression on mean features (C={ref['C']})", inp, ref["influencer"]))
        parts.append(f"- reference validation accuracy {100 * ref['val_acc']:.2f}%, the head's "
                     f"{100 * metrics['val_acc']:.2f}%")
    if metrics.get("warning"):
        parts.append(f"- **warning**: {metrics['warning']}")
    if metrics.get("note"):
        parts.append(f"- note: {metrics['note']}")
    labels = config.get("labels") or {}
    if labels.get("influencers"):
        li = labels["influencers"]
        where = {"release": "drawn from the release's own categories (influencers.txt; model-assigned, not hand "
                            "labels: test accuracy here is agreement with the release)",
                 "hand": "hand labels", "hand+release": "hand labels, the rest drawn from the release's categories"}
        parts.append(f"- influencer labels: {where.get(li.get('source'), li.get('source'))}"
                     + (f" from `{li['file']}`" if li.get("file") else ""))
    parts += ["", table("Influencer classification (Table 1 layout)", rows, config["influencer_categories"]), ""]
    if config.get("post_head_trained", True):
        parts.append(table("Post classification (Table 2 layout)", [(name, inp, metrics["post"])],
                           config["post_categories"]))
    else:
        parts.append("### Post classification (Table 2 layout)\n\nNot trained: the store has no labelled train "
                     "posts (the paper's ten post categories need hand labels; labels from the release are per "
                     "influencer). `heads predict` leaves post categories empty; attention weights are still "
                     "written.\n")
    text = "\n".join(parts)
    write_text(os.path.join(run, "report.md"), text)
    return text
