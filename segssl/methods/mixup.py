"""MixUp (Zhang et al. 2018) on labeled images (BIM paper, App. E, after Chaitanya et al.).

Two labeled images are interpolated with ``lambda ~ Beta(alpha, alpha)`` (alpha = 1) and the
network must predict the same interpolation of their one-hot label maps:
``L = w_ce * CE(labeled) + w_mixup * CE_soft(f(mix(x)), mix(y))``; the BIM paper grid-searches
``w_mixup`` from 1e-5 to 0.1. ``w_dice`` > 0 adds ``w_dice * Dice`` on the unmixed labeled slices
(their hard labels, as the CE term); the mixed slices keep the soft cross-entropy alone.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses import soft_cross_entropy
from segssl.methods.base import SUPERVISED_TERMS, Clock, Method, StepOutput, SupervisedConfig
from segssl.methods.mechanics import mixup


class Config(SupervisedConfig):
    """Beta(alpha, alpha) with alpha = 1; the mixup weight is searched in [1e-5, 0.1]."""

    name: Literal["mixup"] = "mixup"
    alpha: float = Field(1.0, gt=0.0)
    w_mixup: float = Field(0.01, ge=0.0)


class MixUp(Method):
    """Cross-entropy on the labeled batch and on its mixup."""

    Config: ClassVar[type[MethodConfig]] = Config
    uses_labeled = True
    init = "optional"
    terms = {**SUPERVISED_TERMS, "mixup": "w_mixup"}

    def training_step(self, labeled: Batch, unlabeled: None, clock: Clock) -> StepOutput:
        x, y = labeled["image"], labeled["label"]
        onehot = torch.zeros(x.shape[0], self.ctx.num_classes, *y.shape[1:], device=x.device)
        onehot.scatter_(1, y.unsqueeze(1), 1.0)  # (F.one_hot would read the label range back)
        mx, my, _, _ = mixup(x, onehot, self.cfg.alpha, self.ctx.generator)
        logits = self.model(torch.cat([x, mx]))  # one pass: shared BatchNorm statistics
        parts = self.supervised(logits[: len(x)], y)
        if "mixup" in self.weights():
            parts["mixup"] = soft_cross_entropy(logits[len(x) :], my)
        return self.output(parts)
