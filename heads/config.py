"""`heads fit`'s options (FitConfig): light to import (no torch), so the command line builds its options from
it without loading the model's libraries."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from runtime.choices import Attention, HeadPrecision, InstanceLoss, Modality, Normalize, Pooling
from runtime.options import check_options, option


@dataclass
class FitConfig:
    """`heads fit`'s options: each field's default, help and bounds (runtime.options) are the command line's
    and the estimator's too; checked on creation (and again by `fit`)."""
    modality: Modality = option("both", "which features the head reads")
    pooling: Pooling = option("attention", "mean is the no-attention ablation")
    attention: Attention = option("paper", "paper (<tanh(F_a v), r_c>), or gated (Ilse et al. 2018; an extension)")
    aux_weight: float = option(1.0, "λ of the auxiliary post loss (0 turns it off)", low=0.0, high=1e6)
    # weak post labels (issue 33): weight 3 lifted the hardest real-looking store from 0.69 to 0.82 but dropped
    # the store where only 20 % of posts are on topic from 1.00 to 0.84 (every off-topic post carries a wrong
    # label there), and validation told the two apart on every seed: so auto trains both and keeps the better
    # on validation; docs/benchmarks.md, "few labels"
    instance_loss: InstanceLoss = option("auto", "weak post labels (single training posts labelled with their "
                                         "influencer's category) as an extra loss: on, off, or auto (both "
                                         "trained, the better on validation kept)")
    instance_weight: float = option(3.0, "weight of the weak-post-label loss when it is on (0 turns it off)",
                                    low=0.0, high=1e6)
    epochs: int | None = option(None, "train exactly this many epochs (no early stopping); default: the step "
                                "budget with early stopping on validation", low=1, high=10**6)
    max_steps: int = option(2000, "step budget (independent of the number of labels)", low=1, high=10**8)
    min_steps: int = option(300, "never stop before this many steps", low=0, high=10**8)
    patience: int = option(400, "stop after this many steps without a better validation score", low=1, high=10**8)
    eval_steps: int = option(25, "validate at least this many steps apart (whole epochs)", low=1, high=10**6)
    batch_size: int = option(32, "bags per step", low=1, high=1 << 16)
    aux_batch: int = option(256, "labelled posts per step of the auxiliary loss", low=1, high=1 << 20)
    lr: float = option(1e-3, "Adam learning rate (paper §5.1)", low=0.0, high=10.0, low_allowed=False)
    # issue 33: on feature-normalised inputs the fusion layer memorises the ~100 training bags within a few
    # hundred steps at --lr; 1 trains every variant at --lr (docs/benchmarks.md, "selection study")
    feature_lr: float = option(1.0, "learning rate of the feature-normalised variants (--normalize feature or "
                               "auto), relative to --lr; their attention's stays --attention-lr x --lr",
                               low=0.0, high=10.0, low_allowed=False)
    warmup_steps: int = option(50, "steps of linear learning-rate warm-up", low=0, high=10**8)
    weight_decay: float = option(0.0, "Adam weight decay (L2)", low=0.0, high=10.0)
    attention_lr: float = option(0.1, "learning rate of the attention's parameters, relative to --lr",
                                 low=0.0, high=1e3, low_allowed=False)
    attention_warmup: int = option(300, "steps with the attention held uniform (mean pooling) before it learns",
                                   low=0, high=10**8)
    dropout: float = option(0.5, "dropout on the post representations (paper §5.1)", low=0.0, high=0.999)
    normalize: Normalize = option("auto", "input scaling fitted on the train posts, missing halves kept out: "
                                  "feature (each feature's mean and std), none, or auto (both, the better on "
                                  "validation)")
    restarts: int = option(2, "independent initialisations per normalisation (the normalisation of the best on "
                           "validation is kept)", low=1, high=100)
    average_restarts: bool = option(True, "keep every restart of the kept normalisation and average their "
                                    "probabilities (an ensemble in one model.pt); --no-average-restarts keeps the "
                                    "best one alone")
    # issue 33: an overconfident restart dominates a plain mean of probabilities (on ece-look-hard at lr 3e-4 a
    # 0.68 state averaged with a 0.83 one gave 0.73); scaled first, each counts by how sure it has earned to be
    calibrate_restarts: bool = option(False, "with --average-restarts, temperature-scale each restart on "
                                      "validation before averaging, so that an overconfident one does not "
                                      "dominate the mean")
    # fp32 by default: bf16 is a speed trick, and a default only once shown to keep accuracy on every
    # store (benchmarks/heads_quality.py --precisions fp32,bf16); the head is small, so fp32 costs little.
    precision: HeadPrecision = option("fp32", "fp32 (the default: bf16 is not yet shown to keep accuracy on "
                                      "every store), bf16, or auto (bf16 autocast where the hardware has it)")
    seed: int = option(0, "seed of the initialisation, the batches and the dropout")
    device: str = option("auto", "auto, cpu or cuda")

    def __post_init__(self):
        check_options(self)

    @property
    def members(self) -> int:
        """How many trained states the kept model holds (HeadConfig.members)."""
        return self.restarts if self.average_restarts and self.restarts > 1 else 1

    def variant(self, instance_weight: float, normalize: str) -> "FitConfig":
        """The options one variant (weak-post-label weight x normalisation) trains with: `instance_weight`,
        and `feature_lr` on feature-normalised inputs with the attention's own rate unchanged."""
        over = {"instance_weight": instance_weight}
        if normalize == "feature" and self.feature_lr != 1.0:
            over.update(lr=self.lr * self.feature_lr, attention_lr=self.attention_lr / self.feature_lr)
        return dataclasses.replace(self, **over)

    @property
    def instance_weights(self) -> tuple[float, ...]:
        """The weak-post-label weights trained (each with every normalisation and restart), off first so that
        a tie on validation keeps the model without weak labels."""
        if self.instance_loss == "off" or self.instance_weight == 0:
            return (0.0,)
        return (self.instance_weight,) if self.instance_loss == "on" else (0.0, self.instance_weight)
