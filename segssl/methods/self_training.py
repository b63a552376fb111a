"""Self-training (Bai et al., 2017; Chaitanya Table 2 "Self-train [6]", IDEAL Table 2).

A parent stage's checkpoint (``train.init_from``, required: a network fine-tuned on the labeled
volumes) becomes a frozen teacher that labels the unlabeled images (its arg-max prediction,
optionally only where its confidence reaches ``threshold``); the student starts from the same
weights and is retrained on the labeled images (cross-entropy with the ground truth) plus the
pseudo-labeled ones (cross-entropy with the pseudo-labels, weight ``w_pseudo``); ``w_dice`` > 0
adds a Dice term on the labeled images (logged as ``dice``; the papers use CE alone). Bai et al.
alternate labelling and retraining: ``teacher_update_epochs`` > 0 copies the student into the
teacher every that many epochs (0: the teacher stays the parent's network). The teacher is part
of the method's state (checkpointed, resumed); the student is predicted with and carried.
"""

from __future__ import annotations

import copy
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.methods.base import (
    SUPERVISED_TERMS,
    Clock,
    Method,
    MethodContext,
    SemiConfig,
    StepOutput,
)
from segssl.methods.mechanics import two_stream


class Config(SemiConfig):
    """Weights of the two cross-entropies, pseudo-label confidence, teacher refresh."""

    name: Literal["self_training"] = "self_training"
    w_pseudo: float = Field(1.0, ge=0.0)
    threshold: float = Field(0.0, ge=0.0, lt=1.0)  # min teacher probability of a pseudo-label
    teacher_update_epochs: int = Field(0, ge=0)


class SelfTraining(Method):
    """Student on labeled + teacher-labeled images."""

    Config: ClassVar[type[MethodConfig]] = Config
    uses_labeled = True
    uses_unlabeled = True
    init = "required"
    terms = {**SUPERVISED_TERMS, "pseudo": "w_pseudo"}

    def __init__(self, model: nn.Module, cfg: Config, ctx: MethodContext) -> None:
        super().__init__(model, cfg, ctx)
        if cfg.teacher_update_epochs > ctx.epochs:
            raise ValueError(
                f"method.teacher_update_epochs={cfg.teacher_update_epochs} is longer than the "
                f"run (train.epochs={ctx.epochs})"
            )
        self.teacher = copy.deepcopy(model).requires_grad_(False)

    def train(self, mode: bool = True) -> SelfTraining:
        """The teacher always predicts in eval mode (its BatchNorm statistics never change)."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def pseudo_labels(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher arg-max ``(B, H, W)``; ``-100`` (ignored) below the confidence threshold."""
        prob = self.teacher(x).float().softmax(1)
        conf, label = prob.max(1)
        return torch.where(conf >= self.cfg.threshold, label, torch.full_like(label, -100))

    def training_step(self, labeled: Batch, unlabeled: Batch, clock: Clock) -> StepOutput:
        k = self.cfg.teacher_update_epochs
        if k and clock.step > 1 and (clock.step - 1) % (k * clock.iters_per_epoch) == 0:
            self.teacher.load_state_dict(self.model.state_dict())
        xl, xu = labeled["image"], unlabeled["image"]
        target = self.pseudo_labels(xu)
        ll, lu = two_stream(self.model, xl, xu, self.cfg.joint)
        parts = self.supervised(ll, labeled["label"])
        if "pseudo" in self.weights():
            parts["pseudo"] = F.cross_entropy(lu, target, ignore_index=-100)
        return self.output(parts)
