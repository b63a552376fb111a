"""IDEAL's dense local contrastive pre-training of the encoder (Basak et al., sec. 2.2, eq. 2).

The encoder's output goes through a 1x1-convolution projection head (no pooling, no MLP: one
dense embedding per location). Two views of each image: a key view with an intensity transform
only (gamma) and a query view with gamma and a random affine map (the paired transform T). The
correspondence of every query location to a key location is known from the affine map
(``segssl.augment.dense_correspondence``); the positive of a query is its corresponding key, the
negatives are the other keys of the batch (other locations and other images; or only other
images with ``negatives: other_images``), per-location InfoNCE averaged over the query locations
that have a correspondent. Only the encoder is carried (the head is discarded).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from segssl.augment import PairedTransform, affine_theta, dense_correspondence
from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses.contrast_strategies import dense_infonce_loss
from segssl.methods.base import Clock, Method, MethodContext, StepOutput


class Config(MethodConfig):
    """Projection width, temperature (not stated by IDEAL; Chaitanya's 0.1), negatives."""

    name: Literal["ideal_pretrain"] = "ideal_pretrain"
    proj_dim: int = Field(128, ge=1)
    temperature: float = Field(0.1, gt=0.0)
    negatives: Literal["all", "other_images"] = "all"
    tap: str = "encoder"


class IdealPretrain(Method):
    """Encoder + 1x1-conv head under the dense InfoNCE of known correspondences."""

    tap_fields = ("tap",)
    Config: ClassVar[type[MethodConfig]] = Config
    uses_unlabeled = True
    carry = "model:encoder"
    terms = {"dense": 1.0}

    def __init__(self, model: nn.Module, cfg: Config, ctx: MethodContext) -> None:
        super().__init__(model, cfg, ctx)
        ch = self.tap_channels(cfg.tap)[cfg.tap]
        self.T = PairedTransform.from_config(ctx.augment)
        self.heads["projection"] = nn.Conv2d(ch, cfg.proj_dim, 1)

    def training_step(self, labeled: None, unlabeled: Batch, clock: Clock) -> StepOutput:
        cfg, x, gen = self.cfg, unlabeled["image"], self.ctx.generator
        b = x.shape[0]
        key = self.T.sample(b, generator=gen).intensity(x)
        tq = self.T.sample(b, generator=gen)
        f = self.model.features(torch.cat([tq.image(x), key]), [cfg.tap])[cfg.tap]
        q, k = self.heads["projection"](f).chunk(2)
        h, w = q.shape[2], q.shape[3]
        identity = torch.eye(2, 3, dtype=torch.float64).expand(b, 2, 3)
        theta = affine_theta(tq.scale, tq.angle, tq.shift, tq.flip, h, w, tq.vflip)  # CPU
        match, valid = dense_correspondence(theta, identity, h, w)
        loss = dense_infonce_loss(
            q, k, match.to(x.device), valid.to(x.device), cfg.temperature, cfg.negatives
        )
        return self.output({"dense": loss})
