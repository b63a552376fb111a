"""Baseline: supervised training on the labeled scans only, from random weights.

The papers' lower bound ("Baseline" rows of BIM Tables 2-6): pixel-wise cross-entropy on the
labeled slices; fine-tuning stages use the same objective from pre-trained weights (``finetune``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses import cross_entropy, dice_loss
from segssl.methods.base import Method, StepOutput, parts_output


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

    def loss_parts(self) -> tuple[str, ...]:
        return tuple(k for k in ("ce", "dice") if getattr(self.cfg, f"w_{k}") > 0)

    def training_step(self, labeled: Batch | None, unlabeled: Batch | None) -> StepOutput:
        logits = self.model(labeled["image"])
        parts = {}
        if self.cfg.w_ce > 0:
            # labels from the data layer are in range (no host read of their range per step)
            parts["ce"] = cross_entropy(logits, labeled["label"], check_range=False)
        if self.cfg.w_dice > 0:
            parts["dice"] = dice_loss(logits, labeled["label"], check_range=False)
        total = sum(getattr(self.cfg, f"w_{k}") * v for k, v in parts.items())
        return parts_output(total, parts)
