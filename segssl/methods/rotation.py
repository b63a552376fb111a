"""Rotation prediction pre-training (Gidaris et al., 2018; a pretext task of Chaitanya Table 2).

Every unlabeled image is fed in its four rotations (0, 90, 180, 270 degrees); a linear
classifier on the pooled encoder output predicts which, with cross-entropy. The encoder is what
the task trains and what the next stage receives (the classifier is discarded; load with
``train.init_strict: false``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch.nn.functional as F
from torch import nn

from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses.pretext import rotations
from segssl.methods.base import Clock, Method, MethodContext, StepOutput


class Config(MethodConfig):
    """The encoder tap the rotation classifier reads."""

    name: Literal["rotation"] = "rotation"
    tap: str = "encoder"


class Rotation(Method):
    """4-way rotation classification of the encoder output."""

    tap_fields = ("tap",)
    Config: ClassVar[type[MethodConfig]] = Config
    uses_unlabeled = True
    carry = "model:encoder"
    terms = {"rotation": 1.0}

    def __init__(self, model: nn.Module, cfg: Config, ctx: MethodContext) -> None:
        super().__init__(model, cfg, ctx)
        ch = self.tap_channels(cfg.tap)[cfg.tap]
        self.heads["classifier"] = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, 4)
        )

    def training_step(self, labeled: None, unlabeled: Batch, clock: Clock) -> StepOutput:
        x4, k = rotations(unlabeled["image"])
        feats = self.model.features(x4, [self.cfg.tap])[self.cfg.tap]
        logits = self.heads["classifier"](feats)
        return self.output({"rotation": F.cross_entropy(logits, k)})
