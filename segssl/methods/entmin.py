"""Entropy minimisation (EntMin; Vu et al. 2019, a semi-supervised baseline of BIM App. E).

``L = w_ce * CE(labeled) + w_ent * L_ent`` with the mean pixel-wise entropy of the unlabeled
predictions, ``L_ent = -1/(|D_u| |Omega|) sum_x sum_i sum_c p_ic(x) log p_ic(x)`` (nats): pushing
the network to confident predictions on unlabeled slices moves the decision boundary away from
dense regions. The BIM paper searches ``w_ent`` from 1e-4 to 1 and trains from random weights in
the semi-supervised setting (with the fine-tuning schedule). Labeled and unlabeled slices go
through the network in one pass (shared BatchNorm statistics).
``w_dice`` > 0 adds ``w_dice * Dice`` on the labeled slices, logged as ``dice`` (the papers use
CE alone).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses import predictive_entropy
from segssl.methods.base import (
    SUPERVISED_TERMS,
    Clock,
    Method,
    SemiConfig,
    StepOutput,
)
from segssl.methods.mechanics import two_stream


class Config(SemiConfig):
    """EntMin weights (``w_ent`` is the paper's grid-searched coefficient, 1e-4 .. 1)."""

    name: Literal["entmin"] = "entmin"
    w_ent: float = Field(0.1, ge=0.0)


class EntMin(Method):
    """Cross-entropy on labeled slices + entropy of the unlabeled predictions."""

    Config: ClassVar[type[MethodConfig]] = Config
    uses_labeled = True
    uses_unlabeled = True
    terms = {**SUPERVISED_TERMS, "ent": "w_ent"}

    def training_step(self, labeled: Batch, unlabeled: Batch, clock: Clock) -> StepOutput:
        logits_l, logits_u = two_stream(
            self.model, labeled["image"], unlabeled["image"], self.cfg.joint
        )
        parts = self.supervised(logits_l, labeled["label"])
        if "ent" in self.weights():
            parts["ent"] = predictive_entropy(logits_u.float().softmax(1)).mean()
        return self.output(parts)
