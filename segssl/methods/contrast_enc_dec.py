"""Contrast (Enc+Dec): global and local contrastive pre-training (Chaitanya et al.; BIM App. E).

* Global (``w_enc``): two random transforms ``T1(x)``, ``T2(x)`` (gamma + affine) of each slice;
  the pooled ``global_tap`` (Conv5) features go through the global projector and the
  supervised-contrastive loss (eq. 10) treats slices of the same partition as positives.
* Local (``w_dec``): two intensity-only transforms (gamma) of each slice, so grid positions
  correspond; the ``dense_tap`` (Up_conv2) features go through the dense projector (20x20 grid)
  and the dense contrastive loss takes the same position as positive and far positions as
  negatives.

The paper optimises only the encoder when only the global loss is used (freeze the decoder with
``model.freeze``, see ``experiments/contrast_enc.yaml``) and everything but ``Conv_1x1`` with the
local loss (``model.freeze: [Conv_1x1]``). Registry variants: ``contrast_enc`` (``w_dec=0``, the
global term only; the decoder is not in the graph) and ``contrast_dec`` (``w_enc=0``, the local
term only).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from segssl.augment import PairedTransform
from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses.contrastive import dense_contrastive_loss, supcon_loss
from segssl.methods.base import Clock, Method, MethodContext, StepOutput
from segssl.models.heads import DenseProjector, GlobalProjector


class Config(MethodConfig):
    """Weights and projector settings of both contrastive terms."""

    name: Literal["contrast_enc_dec"] = "contrast_enc_dec"
    w_enc: float = Field(1.0, ge=0.0)
    w_dec: float = Field(1.0, ge=0.0)
    temperature_enc: float = Field(0.07, gt=0.0)  # as BIM's L_con
    temperature_dec: float = Field(0.1, gt=0.0)  # Chaitanya et al.
    grid: int = Field(20, ge=2)  # dense projector pooling (20 x 20)
    min_distance: int = Field(3, ge=1)  # grid distance from which positions are negatives
    negatives: Literal["chebyshev", "row_col"] = "chebyshev"
    proj_hidden: int = Field(256, ge=1)
    proj_dim: int = Field(128, ge=1)
    global_tap: str = "encoder"  # tap roles (Conv5, Up_conv2 in the U-Net)
    dense_tap: str = "decoder4"

    @model_validator(mode="after")
    def _some_term(self) -> Config:
        if self.w_enc == 0 and self.w_dec == 0:
            raise ValueError("both w_enc and w_dec are 0")
        return self


class ContrastEncDec(Method):
    """Global (encoder) and/or local (decoder) contrastive pre-training."""

    tap_fields = ("global_tap", "dense_tap")
    Config: ClassVar[type[MethodConfig]] = Config
    uses_unlabeled = True
    terms = {"enc": "w_enc", "dec": "w_dec"}

    def __init__(self, model: torch.nn.Module, cfg: Config, ctx: MethodContext) -> None:
        super().__init__(model, cfg, ctx)
        ch = self.tap_channels(cfg.global_tap, cfg.dense_tap)
        self.T = PairedTransform.from_config(ctx.augment)
        if cfg.w_enc > 0:
            self.heads["global"] = GlobalProjector(
                ch[cfg.global_tap], cfg.proj_hidden, cfg.proj_dim
            )
        if cfg.w_dec > 0:
            self.heads["dense"] = DenseProjector(
                ch[cfg.dense_tap], cfg.proj_hidden, cfg.proj_dim, cfg.grid
            )

    def _features(self, x: torch.Tensor, tap: str) -> torch.Tensor:
        return self.model.features(x, [tap])[tap]  # an encoder tap skips the decoder

    def training_step(self, labeled: None, unlabeled: Batch, clock: Clock) -> StepOutput:
        cfg, x, gen = self.cfg, unlabeled["image"], self.ctx.generator
        parts: dict[str, torch.Tensor] = {}
        if cfg.w_enc > 0:
            v1, v2 = (self.T.sample(x.shape[0], generator=gen).image(x) for _ in range(2))
            feats = self._features(torch.cat([v1, v2]), cfg.global_tap)
            z = self.heads["global"](feats)
            parts["enc"] = supcon_loss(z, unlabeled["partition"], cfg.temperature_enc)
        if cfg.w_dec > 0:
            i1, i2 = (self.T.sample(x.shape[0], generator=gen).intensity(x) for _ in range(2))
            f1, f2 = self.heads["dense"](self._features(torch.cat([i1, i2]), cfg.dense_tap)).chunk(
                2
            )
            parts["dec"] = dense_contrastive_loss(
                f1, f2, cfg.temperature_dec, cfg.min_distance, cfg.negatives
            )
        return self.output(parts)
