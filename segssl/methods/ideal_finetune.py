"""IDEAL's bidirectional cross-consistency fine-tuning (Basak et al., sec. 2.3, eq. 3).

One shared encoder and two decoders of different design (``model.decoders``: transposed
convolutions in one, bilinear up-sampling in the other; the model is pinned to IDEAL's
ResNet-50 U-Net with both). Labeled images: cross-entropy of both decoders with the ground
truth (``w_dice`` > 0 adds both decoders' Dice, logged as ``dice``; the paper uses CE alone).
Unlabeled images: each decoder's prediction is thresholded to a one-hot pseudo-label
(its arg-max) that supervises the OTHER decoder, ``CE(p1, y2) + CE(p2, y1)``, so both decoders
learn from the unlabeled loss. Prediction averages the two decoders' probabilities
(``predict: mean``) or uses the first decoder (``first``). The encoder usually comes from
``ideal_pretrain`` (``train.init_from`` with ``train.init_strict: false``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.methods.base import Clock, Method, MethodContext, StepOutput, StreamsConfig
from segssl.methods.mechanics import joint_forward


class Config(StreamsConfig):
    """Weights of the supervised and the cross-consistency terms; how to predict."""

    name: Literal["ideal_finetune"] = "ideal_finetune"
    w_sup: float = Field(1.0, ge=0.0)
    w_cross: float = Field(1.0, ge=0.0)
    predict: Literal["mean", "first"] = "mean"


class IdealFinetune(Method):
    """Two decoders on one encoder, each trained on the other's one-hot predictions."""

    Config: ClassVar[type[MethodConfig]] = Config
    uses_labeled = True
    uses_unlabeled = True
    pinned = {"model.name": "resnet50_unet", "model.decoders": ["transpose", "bilinear"]}
    terms = {"sup": "w_sup", "dice": "w_dice", "cross": "w_cross"}

    def __init__(self, model: nn.Module, cfg: Config, ctx: MethodContext) -> None:
        super().__init__(model, cfg, ctx)
        if len(getattr(model, "decoders", ())) < 2:
            raise ValueError(
                f"ideal_finetune needs a model with two decoders (model.decoders), got "
                f"{type(model).__name__}"
            )

    def both(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits of decoder 0 and decoder 1 on the shared encoder features of ``x``."""
        feats = self.model.encode(x)
        size = (x.shape[2], x.shape[3])
        return self.model.decode(feats, size, 0), self.model.decode(feats, size, 1)

    def training_step(self, labeled: Batch, unlabeled: Batch, clock: Clock) -> StepOutput:
        nl = labeled["image"].shape[0]
        p1, p2 = joint_forward(self.both, labeled["image"], unlabeled["image"], self.cfg.joint)
        y = labeled["label"]
        first, second = (self.supervised(p[:nl], y, ce="sup") for p in (p1, p2))
        parts = {k: first[k] + second[k] for k in first}  # both decoders' supervised terms
        if "cross" in self.weights():
            u1, u2 = p1[nl:], p2[nl:]
            y1, y2 = u1.detach().argmax(1), u2.detach().argmax(1)
            parts["cross"] = F.cross_entropy(u1, y2) + F.cross_entropy(u2, y1)
        return self.output(parts)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Log of the mean of both decoders' probabilities (or decoder 0's logits)."""
        if self.cfg.predict == "first":
            return self.model(images)
        p1, p2 = self.both(images)
        return torch.log((p1.float().softmax(1) + p2.float().softmax(1)) / 2 + 1e-12)
