"""Global contrastive pre-training of the encoder with a contrasting strategy (Chaitanya et al.).

The encoder ``e`` and a projector ``g1`` (pooled encoder output, dense layers of 3200 and 128
units) are trained with the global contrastive loss ``L_g`` (eqs. 1-2), cosine similarity,
``tau = 0.1``, under one of the paper's strategies (``segssl.losses.contrast_strategies``):

* ``random`` (G^R): two random transforms of each image form a positive pair; all other images
  of the batch are negatives (SimCLR). Batches: N random slices.
* ``domain_minus`` (G^D-): the image and two random transforms of it are pairwise positives;
  images of the same partition in other volumes are removed from the negatives.
* ``domain`` (G^D): images of the same partition in other volumes (and their transforms) are
  positives as well.

The domain strategies use Chaitanya's batches of m volumes x one slice per partition
(``data.partition_sampler: true``, ``data.partitions`` = S, ``data.unlabeled_batch_size`` the
batch size). The transforms are the paired transform T (gamma and a random affine map,
``augment.gamma/scale/paired_rotation/translation``). Only the encoder is in the graph and only
the encoder is carried to the next stage (``g1`` is discarded, as in the paper); the fine-tuning
that follows loads it with ``train.init_strict: false`` (the decoder starts from random weights).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from segssl.augment import PairedTransform
from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses.contrast_strategies import global_contrastive_loss
from segssl.methods.base import Clock, Method, MethodContext, StepOutput
from segssl.methods.mechanics import volume_ids
from segssl.models.heads import GlobalProjector


class Config(MethodConfig):
    """Strategy, temperature and projector ``g1`` (Chaitanya et al., sec. 3 and App. 7)."""

    name: Literal["contrast_global"] = "contrast_global"
    strategy: Literal["random", "domain_minus", "domain"] = "domain"
    temperature: float = Field(0.1, gt=0.0)
    # versions of each image: the image itself and two transforms (G^D-, G^D), or two
    # transforms (G^R); None: the paper's choice for the strategy
    include_original: bool | None = None
    proj_hidden: int = Field(3200, ge=1)  # g1: dense layers of 3200 and 128 units
    proj_dim: int = Field(128, ge=1)
    tap: str = "encoder"  # tap role of the encoder output


class ContrastGlobal(Method):
    """Encoder + ``g1`` under ``L_g`` with the configured contrasting strategy."""

    tap_fields = ("tap",)
    Config: ClassVar[type[MethodConfig]] = Config
    uses_unlabeled = True
    carry = "model:encoder"
    terms = {"global": 1.0}

    def __init__(self, model: torch.nn.Module, cfg: Config, ctx: MethodContext) -> None:
        super().__init__(model, cfg, ctx)
        ch = self.tap_channels(cfg.tap)[cfg.tap]
        self.T = PairedTransform.from_config(ctx.augment)
        self.heads["g1"] = GlobalProjector(ch, cfg.proj_hidden, cfg.proj_dim)
        original = cfg.include_original
        self.original = cfg.strategy != "random" if original is None else original

    def training_step(self, labeled: None, unlabeled: Batch, clock: Clock) -> StepOutput:
        cfg, x, gen = self.cfg, unlabeled["image"], self.ctx.generator
        views = [self.T.sample(x.shape[0], generator=gen).image(x) for _ in range(2)]
        if self.original:
            views.insert(0, x)
        feats = self.model.features(torch.cat(views), [cfg.tap])[cfg.tap]
        z = self.heads["g1"](feats)
        vol = volume_ids(unlabeled, z.device)
        loss = global_contrastive_loss(
            z, unlabeled["partition"], cfg.strategy, cfg.temperature, vol
        )
        return self.output({"global": loss})
