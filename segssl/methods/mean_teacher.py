"""Mean Teacher (Tarvainen & Valpola 2017; for segmentation Perone & Cohen-Adad 2018; BIM App. E).

A teacher with the student's architecture, whose weights are an exponential moving average of
the student's (``ema_decay`` 0.99, fixed in BIM App. E), gives targets on unlabeled slices:

``L = w_ce * CE(labeled) + w_cons * r(t) * L_MT``, ``L_MT`` the squared error between the
student's and the teacher's softmax outputs (:func:`segssl.losses.mse_consistency`),

with ``r(t) = exp(-5 (1 - t)^2)`` the sigmoid ramp-up over the first ``rampup_epochs`` epochs
(Laine & Aila 2017; BIM does not state the length), ``t`` measured in epochs. BIM grid-searches
``w_cons`` from 1e-4 to 10. The teacher sees the unlabeled slice with Gaussian noise
(``teacher_noise`` std, clipped at twice the std), runs in training mode (the EMA teacher's
documented default: batch statistics, its own running statistics) and is updated after every
optimiser step. Validation and test use the network ``evaluate`` names (the teacher by default);
the student is what a later stage receives.
``w_dice`` > 0 adds ``w_dice * Dice`` on the labeled slices, logged as ``dice`` (the papers use
CE alone).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses import mse_consistency
from segssl.methods.base import (
    SUPERVISED_TERMS,
    Clock,
    Method,
    MethodContext,
    SemiConfig,
    StepOutput,
)
from segssl.methods.mechanics import EMATeacher, RampUp, two_stream


class Config(SemiConfig):
    """Mean-teacher settings (decay 0.99 as BIM App. E; ``w_cons`` searched over 1e-4 .. 10)."""

    name: Literal["mean_teacher"] = "mean_teacher"
    w_cons: float = Field(1.0, ge=0.0)
    ema_decay: float = 0.99  # checked by the EMA teacher: in (0, 1)
    # decay min(ema_decay, 1 - 1/(step + 1)) as in Tarvainen & Valpola's code: without it a
    # 0.999 teacher is still 82 % its random initialisation after 200 steps
    ema_warmup: bool = True
    rampup: Literal["sigmoid", "linear", "cosine"] = "sigmoid"
    rampup_epochs: float = Field(10.0, ge=0.0)  # must fit train.epochs
    teacher_noise: float = Field(0.1, ge=0.0)
    evaluate: Literal["teacher", "student"] = "teacher"


class EMATeacherMethod(Method):
    """The EMA-teacher family's common part (``mean_teacher``, ``ict``, ``uamt``): labeled and
    unlabeled batches, CE (+ Dice) + a ramped consistency term, an :class:`EMATeacher` of the
    student updated after every optimiser step, and the network ``evaluate`` names for validation
    and test. Its config needs ``ema_decay``, ``ema_warmup``, ``rampup``, ``rampup_epochs`` and
    ``evaluate``."""

    uses_labeled = True
    uses_unlabeled = True
    terms = {**SUPERVISED_TERMS, "cons": "w_cons"}

    def __init__(self, model: torch.nn.Module, cfg: Config, ctx: MethodContext) -> None:
        super().__init__(model, cfg, ctx)
        self.teacher = EMATeacher(model, cfg.ema_decay)
        self.ramp = RampUp.checked(cfg.rampup, cfg.rampup_epochs, ctx, "method.rampup_epochs")
        self.predict_with = "teacher" if cfg.evaluate == "teacher" else "model"

    def after_step(self, clock: Clock) -> None:
        self.teacher.update(self.model, clock.step if self.cfg.ema_warmup else None)


class MeanTeacher(EMATeacherMethod):
    """Supervised CE + ramped squared-error consistency with an EMA teacher."""

    Config: ClassVar[type[MethodConfig]] = Config

    def training_step(self, labeled: Batch, unlabeled: Batch, clock: Clock) -> StepOutput:
        x_u, sigma = unlabeled["image"], self.cfg.teacher_noise
        logits_l, logits_u = two_stream(self.model, labeled["image"], x_u, self.cfg.joint)
        noise = (torch.randn_like(x_u) * sigma).clamp(-2 * sigma, 2 * sigma)
        p_teacher = self.teacher(x_u + noise).float().softmax(1)
        parts = self.supervised(logits_l, labeled["label"])
        if "cons" in self.weights():
            parts["cons"] = mse_consistency(logits_u.float().softmax(1), p_teacher)
        return self.output(parts, scale={"cons": self.ramp(clock)})
