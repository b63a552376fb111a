"""Consistency regularisation: the Pi-model of the GMI paper (eq. 13; Bortsova et al. 2019).

``L = w_ce * CE(labeled) + w_cons * L_cons`` with ``L_cons`` the squared L2 distance between
``f(T(x))`` and ``T(f(x))`` on unlabeled images, ``T`` the run's paired transform (GMI: random
horizontal and vertical flips). It is GMI Table 1's "Ours (Consistency only)": the gmi objective
without its MI terms, so its weight defaults to the paper's lambda_3 per dataset.
``w_dice`` > 0 adds ``w_dice * Dice`` on the labeled slices, logged as ``dice`` (the papers use
CE alone).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from segssl.augment import PairedTransform
from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses import consistency_loss
from segssl.methods.base import (
    SUPERVISED_TERMS,
    Clock,
    Method,
    MethodContext,
    SemiConfig,
    StepOutput,
)
from segssl.methods.gmi import DATASET_DEFAULTS
from segssl.methods.mechanics import joint_forward


class Config(SemiConfig):
    """Weights of the supervised and the consistency terms (lambda_3 = 5 on ACDC)."""

    name: Literal["consistency"] = "consistency"
    w_cons: float = Field(5.0, ge=0.0)


class Consistency(Method):
    """Cross-entropy on labeled images plus transformation consistency on unlabeled ones."""

    Config: ClassVar[type[MethodConfig]] = Config
    uses_labeled = True
    uses_unlabeled = True
    dataset_defaults: ClassVar[dict[str, dict[str, float]]] = {
        k: {"w_cons": v["w_cons"]} for k, v in DATASET_DEFAULTS.items()
    }
    terms = {**SUPERVISED_TERMS, "cons": "w_cons"}

    def __init__(self, model: torch.nn.Module, cfg: Config, ctx: MethodContext) -> None:
        super().__init__(model, cfg, ctx)
        self.T = PairedTransform.from_config(ctx.augment)

    def training_step(self, labeled: Batch, unlabeled: Batch, clock: Clock) -> StepOutput:
        x, x_l = unlabeled["image"], labeled["image"]
        t = self.T.sample(x.shape[0], generator=self.ctx.generator)
        logits = joint_forward(self.model, x_l, torch.cat([x, t.image(x)]), self.cfg.joint)
        n, n_l = x.shape[0], x_l.shape[0]
        probs = logits[n_l:].float().softmax(1)
        mask = t.valid_mask(*x.shape[-2:], device=x.device)
        parts = self.supervised(logits[:n_l], labeled["label"])
        if "cons" in self.weights():
            parts["cons"] = consistency_loss(probs[n:], t.geometry(probs[:n]), mask)
        return self.output(parts)
