"""Uncertainty-aware Mean Teacher (Yu et al. 2019; BIM paper, App. E).

Mean Teacher whose consistency term keeps only the pixels where the teacher is certain: the
teacher (EMA of the student, decay ``ema_decay``) runs ``passes`` Monte-Carlo dropout passes on
the unlabeled batch (4 in the BIM paper; the model needs ``model.dropout > 0``), each pass with
its own draw of ``mean_teacher``'s input noise (Yu et al.: T passes "under random dropout and
input Gaussian noise"); their mean is the target and its pixel-wise entropy the
uncertainty. Ramp-up, noise and evaluation network are ``mean_teacher``'s ("other settings the
same as our Mean Teacher"). Pixels whose entropy is below a threshold that
rises linearly from ``threshold_start * log K`` to ``log K`` over ``threshold_epochs`` (default:
the whole run) enter ``L_MT``::

    L = w_ce * CE(labeled) + w_cons * ramp(t) * mean_{certain pixels} (p^s - p^t)^2

``w_dice`` > 0 adds ``w_dice * Dice`` on the labeled slices, logged as ``dice`` (the papers use
CE alone).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses import (
    mse_consistency,
    predictive_entropy,
    uncertainty_mask,
    uncertainty_threshold,
)
from segssl.methods.base import (
    SUPERVISED_TERMS,
    Clock,
    MethodContext,
    SemiConfig,
    StepOutput,
)
from segssl.methods.mean_teacher import EMATeacherMethod
from segssl.methods.mechanics import RampUp, check_dropout, joint_forward, mc_dropout


class Config(SemiConfig):
    """Mean Teacher's settings (BIM: decay 0.99) plus the uncertainty mask's."""

    name: Literal["uamt"] = "uamt"
    w_cons: float = Field(1.0, ge=0.0)
    ema_decay: float = Field(0.99, gt=0.0, lt=1.0)
    ema_warmup: bool = True  # as mean_teacher: decay min(ema_decay, 1 - 1/(step + 1))
    rampup: Literal["sigmoid", "linear", "cosine"] = "sigmoid"
    rampup_epochs: float = Field(10.0, ge=0.0)  # as mean_teacher; must fit train.epochs
    teacher_noise: float = Field(0.1, ge=0.0)  # as mean_teacher
    evaluate: Literal["teacher", "student"] = "teacher"  # as mean_teacher
    passes: int = Field(4, ge=1)
    threshold_start: float = Field(0.75, ge=0.0, le=1.0)  # fraction of log K at the start
    threshold_epochs: float | None = Field(None, ge=0.0)  # None: the whole run


class UAMT(EMATeacherMethod):
    """Cross-entropy plus masked consistency with an MC-dropout EMA teacher."""

    Config: ClassVar[type[MethodConfig]] = Config
    terms = {**SUPERVISED_TERMS, "cons": "w_cons", "certain": None}

    def __init__(self, model: torch.nn.Module, cfg: Config, ctx: MethodContext) -> None:
        check_dropout(model)  # before any training: MC dropout needs dropout layers
        super().__init__(model, cfg, ctx)
        span = ctx.epochs if cfg.threshold_epochs is None else cfg.threshold_epochs
        self.threshold_ramp = RampUp.checked("linear", span, ctx, "method.threshold_epochs")

    def threshold(self, clock: Clock) -> float:
        """The entropy threshold (nats) at this step."""
        k = self.ctx.num_classes
        return uncertainty_threshold(k, self.threshold_ramp(clock), self.cfg.threshold_start)

    def training_step(self, labeled: Batch, unlabeled: Batch, clock: Clock) -> StepOutput:
        x_l, x_u, sigma = labeled["image"], unlabeled["image"], self.cfg.teacher_noise
        logits = joint_forward(self.model, x_l, x_u, self.cfg.joint)
        with torch.no_grad():  # each pass its own dropout mask and its own input noise
            passes = mc_dropout(
                self.teacher.net,
                x_u,
                self.cfg.passes,
                lambda x: x + (torch.randn_like(x) * sigma).clamp(-2 * sigma, 2 * sigma),
            )
            target = passes.float().softmax(2).mean(0)
            mask = uncertainty_mask(predictive_entropy(target), self.threshold(clock))
        student = logits[len(x_l) :].float().softmax(1)
        parts = self.supervised(logits[: len(x_l)], labeled["label"])
        if "cons" in self.weights():
            parts["cons"] = mse_consistency(student, target, mask)
        parts["certain"] = mask.mean()
        return self.output(parts, {"cons": self.ramp(clock)})
