"""Joint one-step pre-training of the encoder and the first l decoder blocks (Chaitanya Table 9).

``L_net = L_g + lambda_l * L_l`` (``w_local`` = lambda_l; the paper tries 1, 10, 100, 1000) in
one stage instead of the stage-wise global-then-local pre-training: the global loss with ``g1``
on the encoder output (as ``contrast_global``) and the local loss with ``g2`` on decoder block
``l`` (as ``contrast_local``), the encoder trained by both. Carried: the encoder and ``d_l``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses.contrast_strategies import global_contrastive_loss
from segssl.methods.base import Clock, MethodContext, StepOutput
from segssl.methods.contrast_local import Config as LocalConfig
from segssl.methods.contrast_local import ContrastLocal
from segssl.methods.mechanics import volume_ids
from segssl.models.heads import GlobalProjector


class Config(LocalConfig):
    """Both strategies, the balancing weight and both projectors."""

    name: Literal["contrast_joint"] = "contrast_joint"  # type: ignore[assignment]
    global_strategy: Literal["random", "domain_minus", "domain"] = "domain"
    w_local: float = Field(1.0, ge=0.0)  # lambda_l
    global_hidden: int = Field(3200, ge=1)  # g1
    global_dim: int = Field(128, ge=1)


class ContrastJoint(ContrastLocal):
    """Encoder + ``g1`` under ``L_g`` and ``d_l`` + ``g2`` under ``lambda_l L_l``, one step."""

    Config: ClassVar[type[MethodConfig]] = Config
    init = "optional"
    terms = {"global": 1.0, "local": "w_local"}
    freeze_encoder = False

    @staticmethod
    def uses_local(cfg: MethodConfig) -> bool:
        """The local term is off at ``w_local: 0`` (no regions to fit)."""
        return getattr(cfg, "w_local", 1.0) > 0

    def __init__(self, model: nn.Module, cfg: Config, ctx: MethodContext) -> None:
        super().__init__(model, cfg, ctx)
        ch = self.tap_channels("encoder")["encoder"]
        self.heads["g1"] = GlobalProjector(ch, cfg.global_hidden, cfg.global_dim)

    def training_step(self, labeled: None, unlabeled: Batch, clock: Clock) -> StepOutput:
        cfg, x, part = self.cfg, unlabeled["image"], unlabeled["partition"]
        views = [x] + [self.T.sample(x.shape[0], generator=self.ctx.generator).image(x)
                       for _ in range(2)]  # fmt: skip
        if cfg.global_strategy == "random":
            views = views[1:]
        z = self.heads["g1"](self.model.features(torch.cat(views), ["encoder"])["encoder"])
        vol = volume_ids(unlabeled, x.device)
        g = global_contrastive_loss(z, part, cfg.global_strategy, cfg.temperature, vol)
        parts = {"global": g}
        if "local" in self.weights():
            parts["local"] = self.local_loss(x, part, vol)
        return self.output(parts)
