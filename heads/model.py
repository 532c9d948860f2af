"""The Influencer Profiler's trainable part (paper §3.3–3.6), on cached post features.

x = [x_image; x_text] → v = ReLU(F(x)) (256) → r = tanh(F_a(v)); α = softmax_posts(⟨r, r_c⟩)
→ h = Σ α v → ŷ = F_I(ReLU(F_h(h))) over influencer categories;
auxiliary post head y_p = F_P(ReLU(F_s(v))) over post categories.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from runtime.errors import UserError


@dataclass
class HeadConfig:
    in_dim: int = 1792            # 1024 image + 768 text; 1024 or 768 for one modality
    hidden: int = 256             # post representation v (paper §5.1)
    attention_dim: int = 256      # r = tanh(F_a(v))
    n_influencer: int = 8
    n_post: int = 10
    pooling: str = "attention"    # or "mean": the paper's no-attention ablation
    attention: str = "paper"      # "paper": ⟨tanh(F_a v), r_c⟩; "gated": Ilse et al. 2018, ⟨tanh(F_a v) ⊙ σ(F_g v), r_c⟩
    dropout: float = 0.5          # paper §5.1
    segments: tuple = ()          # widths of the modality halves in x, e.g. (1024, 768); () = one segment
    members: int = 1              # >1: a ProfilerEnsemble of that many (heads/ensemble.py, --average-restarts)

    def to_dict(self) -> dict:
        return asdict(self)


class InfluencerProfiler(nn.Module):
    def __init__(self, cfg: HeadConfig):
        super().__init__()
        if cfg.pooling not in ("attention", "mean"):
            raise UserError(f"pooling must be attention or mean, got {cfg.pooling!r}")
        if cfg.attention not in ("paper", "gated"):
            raise UserError(f"attention must be paper or gated, got {cfg.attention!r}")
        self.cfg = cfg
        self.fuse = nn.Linear(cfg.in_dim, cfg.hidden)                       # F
        self.attend = nn.Linear(cfg.hidden, cfg.attention_dim)              # F_a
        if cfg.attention == "gated":
            self.gate = nn.Linear(cfg.hidden, cfg.attention_dim)            # F_g (extension, not in the paper)
        # r_c starts at zero: attention starts as exactly mean pooling and moves away only as far as
        # the labels pull it. A random r_c (even N(0, 0.01²)) gives tanh-saturated loud posts scores
        # of ±2 over 256 dimensions, i.e. 50x weight ratios from the start (heads_quality.py).
        # F_a gets its first gradient once r_c has moved (one step).
        self.context = nn.Parameter(torch.zeros(cfg.attention_dim))         # r_c
        self.drop = nn.Dropout(cfg.dropout)
        self.infl_hidden = nn.Linear(cfg.hidden, cfg.hidden)                # F_h
        self.infl_out = nn.Linear(cfg.hidden, cfg.n_influencer)             # F_I
        self.post_hidden = nn.Linear(cfg.hidden, cfg.hidden)                # F_s
        self.post_out = nn.Linear(cfg.hidden, cfg.n_post)                   # F_P
        # Optional per-feature standardisation (`heads fit --normalize feature`, chosen by `auto`), fitted on the training
        # posts. Identity by default (the paper's model). It helps where cached features sit in a
        # narrow band around a large common offset, as an untrained encoder's do.
        self.register_buffer("in_mean", torch.zeros(cfg.in_dim))
        self.register_buffer("in_std", torch.ones(cfg.in_dim))
        # Temperature scaling (Guo et al. 2017; heads/calibrate.py), [influencer, post]: the logits are
        # divided by it, so probabilities mean what they say; argmax, hence every label, is unchanged.
        # 1 while training; fitted on validation after the state is chosen. Runs written before it: 1.
        self.register_buffer("temperature", torch.ones(2))

    def attention_parameters(self) -> list[nn.Parameter]:
        """The parameters that decide the post weights (F_a, the gate, r_c)."""
        mods = [self.attend] + ([self.gate] if self.cfg.attention == "gated" else [])
        return [self.context] + [p for m in mods for p in m.parameters()]

    def set_input_scaling(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.in_mean.copy_(mean)
        self.in_std.copy_(std.clamp_min(1e-6))

    def normalise(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """Standardise each modality half; a missing half stays zero. `present` (..., modalities) says
        which halves each post holds (the readers' masks); without it, an all-zero half is taken for
        missing (tensors built by hand, runs called the old way)."""
        if bool((self.in_mean == 0).all()) and bool((self.in_std == 1).all()):
            return x        # no scaling fitted (the paper's model): the identity, without the work
        z = (x - self.in_mean) / self.in_std
        start = 0
        for k, w in enumerate(self.cfg.segments or (self.cfg.in_dim,)):
            if present is not None:
                here = present[..., k:k + 1]
            else:
                here = (x[..., start:start + w] != 0).any(dim=-1, keepdim=True)
            z[..., start:start + w] *= here      # in place: no concatenated copy of the batch
            start += w
        return z

    def encode_posts(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        return F.relu(self.fuse(self.normalise(x, present)))

    def posts_logits(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """Post-head logits of single posts (no bag): F_P(ReLU(F_s(v))) of their features."""
        return self.post_logits(self.encode_posts(x, present))

    def post_logits(self, v: torch.Tensor) -> torch.Tensor:
        return self.post_out(self.drop(F.relu(self.post_hidden(self.drop(v))))) / self.temperature[1]

    def influencer_logits(self, h: torch.Tensor) -> torch.Tensor:
        """F_I(ReLU(F_h(h))): an influencer's pooled representation h (or one post's v) to category logits."""
        return self.infl_out(self.drop(F.relu(self.infl_hidden(h)))) / self.temperature[0]

    def pool(self, v: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights (B, P) summing to one over each bag's real posts, zero on padding; h (B, hidden).

        Softmax runs in float32; a bag with no usable post gets all-zero weights and h = 0
        (callers report such bags instead of classifying them).
        """
        if self.cfg.pooling == "attention":
            r = torch.tanh(self.attend(v))
            if self.cfg.attention == "gated":
                r = r * torch.sigmoid(self.gate(v))
            scores = (r @ self.context.to(r.dtype)).float()
        else:
            scores = torch.zeros(mask.shape, device=v.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        any_post = mask.any(dim=1, keepdim=True)
        weights = torch.softmax(scores.masked_fill(~any_post, 0.0), dim=1) * mask
        h = torch.einsum("bp,bph->bh", weights.to(v.dtype), v)
        return weights, h

    def forward(self, x: torch.Tensor, mask: torch.Tensor, posts: bool = True) -> dict[str, torch.Tensor]:
        """x (B, P, in_dim); mask (B, P) true on real, usable posts, or (B, P, modalities) saying which
        halves each post holds (a post is usable where any is); `posts=False` skips the post head."""
        present = mask if mask.dim() == 3 else None
        if present is not None:
            mask = present.any(dim=-1)
        v = self.encode_posts(x, present)
        weights, h = self.pool(self.drop(v), mask)
        logits = self.influencer_logits(h)
        out = {"logits": logits, "weights": weights, "h": h}
        if posts:
            out["post_logits"] = self.post_logits(v)
        return out


def multitask_loss(out: dict, y: torch.Tensor, post_logits: torch.Tensor | None, post_y: torch.Tensor | None,
                   aux_weight: float) -> tuple[torch.Tensor, dict]:
    """loss = CE(influencer) + λ · CE(posts), the auxiliary term over labelled posts only (paper §3.6)."""
    main = F.cross_entropy(out["logits"].float(), y)
    aux = torch.zeros((), device=main.device)
    if post_logits is not None and post_y is not None and aux_weight > 0:
        labelled = post_y >= 0
        if labelled.any():
            aux = F.cross_entropy(post_logits[labelled].float(), post_y[labelled])
    return main + aux_weight * aux, {"main": main.item(), "aux": aux.item()}
