"""The ablations of Figure 5b as one command: modalities × (full, no attention, no fine-tuning)."""
from __future__ import annotations

import os

from heads.train import FitConfig, fit
from runtime.console import say
from runtime.files import write_json, write_text

VARIANTS = [("full model", "attention", False), ("no attention", "mean", False), ("no fine-tuning", "attention", True)]
MODALITIES = [("text", "Text"), ("image", "Image"), ("both", "Text & Image")]


def ablate(store: str, out: str, *, no_finetune_store: str | None = None, epochs: int | None = None, seed: int = 0,
           log=say) -> str:
    results: dict = {}
    for name, pooling, no_ft in VARIANTS:
        for modality, _ in MODALITIES:
            if no_ft and (not no_finetune_store or modality == "text"):
                continue   # text has no fine-tuning to remove; image runs need the second store
            run = os.path.join(out, f"{name.replace(' ', '-')}_{modality}")
            log(f"== {name}, {modality}")
            m = fit(no_finetune_store if no_ft else store, run,
                    FitConfig(modality=modality, pooling=pooling, epochs=epochs, seed=seed), log=lambda *_: None, overwrite=True)
            results[f"{name}|{modality}"] = m["influencer"]["accuracy"]
    write_json(os.path.join(out, "ablation.json"), results)
    lines = ["| Variant | " + " | ".join(label for _, label in MODALITIES) + " |", "|---|---|---|---|"]
    for name, _, no_ft in VARIANTS:
        cells = []
        for modality, _ in MODALITIES:
            acc = results.get(f"{name}|{modality}")
            if acc is None:
                cells.append("same as full" if no_ft and modality == "text" else "n/a (needs --no-finetune-store)")
            else:
                cells.append(f"{100 * acc:.2f}%")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    write_text(os.path.join(out, "ablation.md"), "# Figure 5b: influencer accuracy on the test split\n\n" + table + "\n")
    return table
