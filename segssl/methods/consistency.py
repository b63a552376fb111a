"""Consistency regularisation: the Pi-model of the GMI paper (eq. 13; Bortsova et al. 2019).

``L = w_ce * CE(labeled) + w_cons * L_cons`` with ``L_cons`` the squared L2 distance between
``f(T(x))`` and ``T(f(x))`` on unlabeled images, ``T`` the run's paired transform (GMI: random
horizontal and vertical flips). It is GMI Table 1's "Ours (Consistency only)": the gmi objective
without its MI terms, so its weight defaults to the paper's lambda_3 per dataset.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from segssl.augment import PairedTransform
from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses import consistency_loss, cross_entropy
from segssl.methods.base import Clock, Method, MethodContext, StepOutput
from segssl.methods.gmi import DATASET_DEFAULTS


class Config(MethodConfig):
    """Weights of the supervised and the consistency terms (lambda_3 = 5 on ACDC)."""

    name: Literal["consistency"] = "consistency"
    w_ce: float = Field(1.0, ge=0.0)
    w_cons: float = Field(5.0, ge=0.0)


class Consistency(Method):
    """Cross-entropy on labeled images plus transformation consistency on unlabeled ones."""

    Config: ClassVar[type[MethodConfig]] = Config
    uses_labeled = True
    uses_unlabeled = True
    dataset_defaults: ClassVar[dict[str, dict[str, float]]] = {
        k: {"w_cons": v["w_cons"]} for k, v in DATASET_DEFAULTS.items()
    }
    terms = {"ce": "w_ce", "cons": "w_cons"}

    def __init__(self, model: torch.nn.Module, cfg: Config, ctx: MethodContext) -> None:
        super().__init__(model, cfg, ctx)
        self.T = PairedTransform.from_config(ctx.augment)

    def training_step(self, labeled: Batch, unlabeled: Batch, clock: Clock) -> StepOutput:
        x, x_l = unlabeled["image"], labeled["image"]
        t = self.T.sample(x.shape[0], generator=self.ctx.generator)
        logits = self.model(torch.cat([x_l, x, t.image(x)]))
        n, n_l = x.shape[0], x_l.shape[0]
        probs = logits[n_l:].float().softmax(1)
        mask = t.valid_mask(*x.shape[-2:], device=x.device)
        parts = {
            "ce": cross_entropy(logits[:n_l], labeled["label"], check_range=False),
            "cons": consistency_loss(probs[n:], t.geometry(probs[:n]), mask),
        }
        return self.output({k: v for k, v in parts.items() if k in self.loss_parts()})
