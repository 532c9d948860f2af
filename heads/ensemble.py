"""`heads fit --average-restarts`: the restarts' kept states as one model whose probabilities are their mean.

With few labelled influencers each training memorises its bags within a few hundred steps and the one
state that selection keeps is partly luck (issue 33: on the hardest benchmark store the restarts' averaged
predictions scored 0.05-0.09 above the picked one). ProfilerEnsemble answers every question the single
model does, from the same inputs:
- influencer and post probabilities: the mean of the members' (temperature-scaled as one model afterwards:
  the logits are log mean-probabilities divided by the ensemble's own temperature). Each member keeps its own
  temperature too: 1 (a plain mean), or with `--calibrate-restarts` its own fitted on validation before the
  mean is taken, so that an overconfident member does not outweigh the others;
- attention weights: the mean of the members' (still summing to one over each bag's usable posts);
- the influencer embedding h: the first member's (the best on validation); members' spaces differ, so
  their mean would mean nothing.
"""
from __future__ import annotations

import torch
from torch import nn

from heads.model import HeadConfig, InfluencerProfiler


def build_model(cfg: HeadConfig) -> nn.Module:
    """The model a run's HeadConfig describes: one InfluencerProfiler, or an ensemble of `members`."""
    return ProfilerEnsemble(cfg) if cfg.members > 1 else InfluencerProfiler(cfg)


def _log_mean_softmax(logits: list[torch.Tensor]) -> torch.Tensor:
    stacked = torch.stack([torch.log_softmax(x.float(), -1) for x in logits])
    return torch.logsumexp(stacked, 0) - torch.log(torch.tensor(float(len(logits)), device=stacked.device))


class ProfilerEnsemble(nn.Module):
    def __init__(self, cfg: HeadConfig, members: list[InfluencerProfiler] | None = None):
        super().__init__()
        self.cfg = cfg
        self.members = nn.ModuleList(members if members is not None
                                     else [InfluencerProfiler(cfg) for _ in range(cfg.members)])
        if len(self.members) != cfg.members:
            raise ValueError(f"{len(self.members)} members for a config of {cfg.members}")
        for m in self.members:
            m.temperature.fill_(1.0)        # a plain mean until heads.train scales them (--calibrate-restarts)
        self.register_buffer("temperature", torch.ones(2))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, posts: bool = True) -> dict[str, torch.Tensor]:
        outs = [m(x, mask, posts) for m in self.members]
        out = {"logits": _log_mean_softmax([o["logits"] for o in outs]) / self.temperature[0],
               "weights": torch.stack([o["weights"] for o in outs]).mean(0), "h": outs[0]["h"]}
        if posts:
            out["post_logits"] = _log_mean_softmax([o["post_logits"] for o in outs]) / self.temperature[1]
        return out

    def posts_logits(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        return _log_mean_softmax([m.posts_logits(x, present) for m in self.members]) / self.temperature[1]
