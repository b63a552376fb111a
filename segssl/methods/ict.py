"""Interpolation Consistency Training (Verma et al. 2019; BIM paper, App. E).

Two unlabeled images are mixed with ``lambda ~ Beta(alpha, alpha)`` (alpha = 0.1); the student's
prediction of the mix must match the same mix of the EMA teacher's predictions of the two images::

    L = w_ce * CE(labeled) + w_cons * ramp(t) * mean (f_s(mix(u1, u2)) - mix(f_t(u1), f_t(u2)))^2

The BIM paper grid-searches ``w_cons`` from 1e-5 to 0.1; teacher, ramp-up and evaluation network
are ``mean_teacher``'s (EMA decay 0.99). Only unlabeled images are mixed: the labeled slices keep
their hard labels: CE, and ``w_dice * Dice`` when ``w_dice`` > 0 (logged as ``dice``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses import mse_consistency
from segssl.methods.base import Clock, SemiConfig, StepOutput
from segssl.methods.mean_teacher import EMATeacherMethod
from segssl.methods.mechanics import joint_forward, mixup


class Config(SemiConfig):
    """ICT: mixing alpha 0.1, weight searched in [1e-5, 0.1], Mean Teacher's EMA."""

    name: Literal["ict"] = "ict"
    w_cons: float = Field(0.01, ge=0.0)
    alpha: float = Field(0.1, gt=0.0)
    ema_decay: float = Field(0.99, gt=0.0, lt=1.0)
    ema_warmup: bool = True  # as mean_teacher: decay min(ema_decay, 1 - 1/(step + 1))
    rampup: Literal["sigmoid", "linear", "cosine"] = "sigmoid"
    rampup_epochs: float = Field(10.0, ge=0.0)  # as mean_teacher; must fit train.epochs
    evaluate: Literal["teacher", "student"] = "teacher"  # as mean_teacher


class ICT(EMATeacherMethod):
    """Cross-entropy plus the interpolation consistency of unlabeled mixes."""

    Config: ClassVar[type[MethodConfig]] = Config

    def training_step(self, labeled: Batch, unlabeled: Batch, clock: Clock) -> StepOutput:
        x_l, x_u = labeled["image"], unlabeled["image"]
        with torch.no_grad():
            p_t = self.teacher(x_u).float().softmax(1)
        mixed, target, _, _ = mixup(x_u, p_t, self.cfg.alpha, self.ctx.generator)
        logits = joint_forward(self.model, x_l, mixed, self.cfg.joint)
        parts = self.supervised(logits[: len(x_l)], labeled["label"])
        if "cons" in self.weights():
            parts["cons"] = mse_consistency(logits[len(x_l) :].float().softmax(1), target)
        return self.output(parts, {"cons": self.ramp(clock)})
