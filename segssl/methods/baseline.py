"""Baseline: supervised training on the labeled scans only, from random weights.

The papers' lower bound ("Baseline" rows of BIM Tables 2-6): pixel-wise cross-entropy on the
labeled slices. Registry variants: ``finetune`` (the same objective from ``train.init_from``, the
second stage of every pre-training method: BIM App. F) and ``full`` (every training label:
``data.labeled_scans`` pinned to 100 %, the upper bound).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses import cross_entropy, dice_loss
from segssl.methods.base import Clock, Method, StepOutput


class Config(MethodConfig):
    """Supervised objective: ``w_ce * CE + w_dice * Dice`` (the papers use CE alone)."""

    name: Literal["baseline"] = "baseline"
    w_ce: float = Field(1.0, ge=0.0)
    w_dice: float = Field(0.0, ge=0.0)


class Baseline(Method):
    """Cross-entropy (optionally + Dice) on labeled batches."""

    Config: ClassVar[type[MethodConfig]] = Config
    uses_labeled = True
    init = "forbidden"
    terms = {"ce": "w_ce", "dice": "w_dice"}

    def training_step(self, labeled: Batch, unlabeled: None, clock: Clock) -> StepOutput:
        logits, on = self.model(labeled["image"]), self.weights()
        parts = {}
        if "ce" in on:
            # labels from the data layer are in range (no host read of their range per step)
            parts["ce"] = cross_entropy(logits, labeled["label"], check_range=False)
        if "dice" in on:
            parts["dice"] = dice_loss(logits, labeled["label"], check_range=False)
        return self.output(parts)
