"""The run folder of `heads fit`, read back: the one reader, validated when it is opened.

A run folder is a contract between stages as the store is (heads predict, eval and report read it,
and `baselines run --compare`), and one that people share: everything in it is untrusted. Opening it
checks config.json (types, choices, the model's dimensions within bounds, category lists that match
them) and, for a finished run, metrics.json; `state_dict()` reads model.pt with torch's
`weights_only` loader (tensors and plain containers only: a pickled payload is refused, never run)
and checks every tensor's name and shape against the config before anything is built from it.
Any defect is one `UserError` naming the file.

Layout: config.json (options, model, store fingerprint; written first), history.csv (one line per
validation round), model.pt (the weights), metrics.json, report.md, test_predictions.csv; later
`heads eval` adds posts_curve.csv and `heads predict` predictions/.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

from runtime.errors import UserError
from runtime.reporting import INPUT_NAMES, model_name

MODALITIES = ("both", "image", "text")
POOLINGS = ("attention", "mean")
ATTENTIONS = ("paper", "gated")
MAX_WIDTH = 1 << 16          # input, hidden and attention widths
MAX_CATEGORIES = 1000
MAX_PARAMETERS = 1 << 28     # 1 GiB of fp32 weights: far above any head, far below what a forged config may ask
MAX_MEMBERS = 100            # states averaged by --average-restarts (FitConfig.restarts is at most 100)
MAX_JSON = 64 << 20          # bytes of config.json / metrics.json read at most


def read_json_object(path: str, required: bool = True) -> dict | None:
    """A JSON object from a file someone else may have written: bounded in size, one line naming the file
    for anything else (missing when required, too large, not JSON, too deep, not an object)."""
    if not os.path.isfile(path):
        if required:
            raise UserError(f"{path}: missing; not a `heads fit` run folder")
        return None
    if os.path.getsize(path) > MAX_JSON:
        raise UserError(f"{path}: {os.path.getsize(path):,} bytes, too large for the JSON a run or a command writes")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _int(path: str, obj: dict, key: str, lo: int, hi: int) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise UserError(f"{path}: {key} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _choice(path: str, obj: dict, key: str, allowed: tuple, default=None) -> str:
    v = obj.get(key, default)
    if v not in allowed:
        raise UserError(f"{path}: {key} must be one of {', '.join(allowed)}, got {v!r}")
    return v


def _names(path: str, obj: dict, key: str, n: int) -> list[str]:
    v = obj.get(key)
    if not isinstance(v, list) or len(v) != n or not all(isinstance(s, str) and 0 < len(s) <= 200 for s in v):
        raise UserError(f"{path}: {key} must be a list of {n} category names (the model's outputs)")
    return v


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_head(path: str, head) -> dict:
    """The model section of config.json: dimensions within bounds, before anything is allocated."""
    if not isinstance(head, dict):
        raise UserError(f"{path}: model must be an object")
    dims = {k: _int(path, head, k, 1, MAX_WIDTH) for k in ("in_dim", "hidden", "attention_dim")}
    for k in ("n_influencer", "n_post"):
        dims[k] = _int(path, head, k, 1, MAX_CATEGORIES)
    _choice(path, head, "pooling", POOLINGS)
    _choice(path, head, "attention", ATTENTIONS)
    dropout = head.get("dropout")
    if not _number(dropout) or not 0 <= dropout < 1:
        raise UserError(f"{path}: model dropout must be a number in [0, 1), got {dropout!r}")
    segments = head.get("segments", [])
    if (not isinstance(segments, (list, tuple)) or not all(isinstance(s, int) and s > 0 for s in segments)
            or (segments and sum(segments) != dims["in_dim"])):
        raise UserError(f"{path}: model segments must be positive widths summing to in_dim {dims['in_dim']}")
    members = _int(path, head, "members", 1, MAX_MEMBERS) if "members" in head else 1
    h, a = dims["hidden"], dims["attention_dim"]
    params = members * (dims["in_dim"] * h + 2 * h * a + 2 * h * h + h * (dims["n_influencer"] + dims["n_post"]))
    if params > MAX_PARAMETERS:
        raise UserError(f"{path}: the model declares {params:,} parameters; refusing to build it")
    return dict(head, segments=tuple(segments))


@dataclass(frozen=True)
class RunFolder:
    """A validated run folder. `RunFolder.open(path)` needs config.json and, unless `finished=False`,
    model.pt and metrics.json too."""
    path: str
    config: dict
    metrics: dict | None

    @classmethod
    def open(cls, path: str, finished: bool = True) -> "RunFolder":
        if not os.path.isdir(path):
            raise UserError(f"{path}: no such run folder (a `heads fit --out` folder)")
        cpath = os.path.join(path, "config.json")
        config = read_json_object(cpath)
        fit = config.get("fit")
        if not isinstance(fit, dict):
            raise UserError(f"{cpath}: fit must be an object of the run's options")
        _choice(cpath, fit, "modality", MODALITIES)
        _choice(cpath, fit, "pooling", POOLINGS)
        head = check_head(cpath, config.get("model"))
        _names(cpath, config, "influencer_categories", head["n_influencer"])
        _names(cpath, config, "post_categories", head["n_post"])
        if not isinstance(config.get("store"), dict):
            raise UserError(f"{cpath}: store must be an object (the fingerprint of the store it was fit on)")
        config = dict(config, model=head)
        metrics = None
        if finished:
            if not os.path.isfile(os.path.join(path, "model.pt")):
                raise UserError(f"{os.path.join(path, 'model.pt')}: missing; the fit did not finish")
            metrics = _check_metrics(os.path.join(path, "metrics.json"))
        return cls(os.path.abspath(path), config, metrics)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def fit(self) -> dict:
        return self.config["fit"]

    @property
    def modality(self) -> str:
        return self.fit["modality"]

    @property
    def head(self) -> dict:
        return self.config["model"]

    @property
    def influencer_categories(self) -> list[str]:
        return self.config["influencer_categories"]

    @property
    def post_categories(self) -> list[str]:
        return self.config["post_categories"]

    @property
    def post_head_trained(self) -> bool:
        return bool(self.config.get("post_head_trained", True))

    @property
    def name(self) -> str:
        """The run's model as the tables name it: "Influencer Profiler" or "... (mean pooling)"."""
        return model_name(self.fit["pooling"])

    @property
    def input_name(self) -> str:
        return INPUT_NAMES[self.modality]

    def state_dict(self, expected: dict, device: str = "cpu", optional: dict | None = None) -> dict:
        """model.pt's tensors, read with `weights_only=True`, each checked against `expected` (name ->
        shape, from the config) before it is returned. `optional`: name -> the tensor that stands in
        where model.pt lacks it (buffers added after older runs were written)."""
        import pickle

        import torch
        path = self.file("model.pt")
        try:
            ckpt = torch.load(path, map_location=device, weights_only=True)
        except pickle.UnpicklingError as e:
            raise UserError(f"{path}: refused, it holds more than tensors and plain values "
                            f"(torch's weights-only loader: {str(e).splitlines()[0][:160]})") from None
        except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
            raise UserError(f"{path}: not a readable model file ({str(e).splitlines()[0][:160]})") from None
        state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise UserError(f"{path}: no state_dict of tensors")
        for k, v in (optional or {}).items():
            if k in expected and k not in state:
                state[k] = v.to(device)
        if set(state) != set(expected):
            missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
            raise UserError(f"{path}: weights do not match config.json (missing {missing[:3]}, unexpected {extra[:3]})")
        for k, shape in expected.items():
            t = state[k]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape) or not t.is_floating_point():
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise UserError(f"{path}: {k} is {got}, config.json says {tuple(shape)}")
            if not bool(torch.isfinite(t).all()):
                raise UserError(f"{path}: {k} holds NaN or infinite weights")
        return state


def _check_metrics(path: str) -> dict:
    metrics = read_json_object(path)
    for task in ("influencer", "post"):
        m = metrics.get(task)
        if not isinstance(m, dict) or not isinstance(m.get("n", 0), int):
            raise UserError(f"{path}: {task} must be an object of test scores")
        acc = m.get("accuracy")
        if acc is not None and not (_number(acc) and (math.isnan(acc) or 0 <= acc <= 1)):
            raise UserError(f"{path}: {task} accuracy must be a number in [0, 1], got {acc!r}")
    return metrics
