"""Local contrastive pre-training of the first l decoder blocks (Chaitanya et al., sec. 3.3-3.4).

The second stage of the paper's stage-wise pre-training: the encoder pre-trained with the
global loss (``train.init_from``, required) is frozen, and the first ``l`` decoder blocks
``d_l`` with a shallow network ``g2`` (two 1x1 convolutions, batch norm and ReLU after the first)
are trained with the local contrastive loss ``L_l`` (eqs. 3-4) on two intensity transforms of
each image (gamma, no geometry: positions correspond). ``A`` = 13 local regions of ``K x K`` (1x1
or 3x3) per feature map; strategies ``random`` (L^R) and ``domain`` (L^D: the same region of the
images of the same partition in other volumes is a positive too; use
``data.partition_sampler``).

The encoder is frozen by the method itself (its parameters and BatchNorm statistics, like a
``model.freeze`` entry); only the decoder blocks up to ``l`` are computed. What the next stage
receives is the encoder and ``d_l``: the remaining decoder blocks of the fine-tuning start from
random weights, as in the paper (load with ``train.init_strict: false``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from segssl.augment import PairedTransform
from segssl.config import MethodConfig, ModelConfig, RunConfig
from segssl.data.types import Batch
from segssl.losses.contrast_strategies import local_contrastive_loss, region_corners
from segssl.methods.base import Clock, Method, MethodContext, StepOutput
from segssl.methods.mechanics import volume_ids
from segssl.models import apply_freeze, tap_roles, tap_shapes


class Config(MethodConfig):
    """Strategy, decoder length l, regions (A, K x K), temperature and ``g2``."""

    name: Literal["contrast_local"] = "contrast_local"
    strategy: Literal["random", "domain"] = "random"
    blocks: int = Field(3, ge=1, le=5)  # l: decoder blocks pre-trained (the paper's d_l)
    region_size: int = Field(3, ge=1)  # K: 1 (1x1) or 3 (3x3) in the paper
    regions: int = Field(13, ge=1, le=13)  # A local regions per feature map
    temperature: float = Field(0.1, gt=0.0)
    proj_hidden: int = Field(128, ge=1)  # g2: two 1x1 convolutions
    proj_dim: int = Field(128, ge=1)


def decoder_blocks(cfg: ModelConfig) -> int:
    """How many decoder blocks (``decoder<i>`` tap roles) the model of ``cfg`` has."""
    return sum(1 for r in tap_roles(cfg) if r.startswith("decoder"))


def decoder_role(model: nn.Module, blocks: int, key: str = "method.blocks") -> str:
    """The tap role of decoder block ``blocks`` (``decoder<l>``), checked against the model."""
    n = sum(1 for r in model.tap_channels if r.startswith("decoder"))
    if not 1 <= blocks <= n:
        raise ValueError(
            f"{key}={blocks}: the model has {n} decoder blocks (decoder1..decoder{n}); "
            "the paper's U-Net (model.depth: 6) has 5"
        )
    return f"decoder{blocks}"


class LocalProjector(nn.Sequential):
    """``g2``: 1x1 conv, batch norm, ReLU, 1x1 conv (no normalisation after the last)."""

    def __init__(self, cin: int, hidden: int, out: int) -> None:
        super().__init__(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out, 1),
        )


class ContrastLocal(Method):
    """``d_l`` + ``g2`` under ``L_l`` on a frozen pre-trained encoder."""

    Config: ClassVar[type[MethodConfig]] = Config
    uses_unlabeled = True
    init = "required"
    terms = {"local": 1.0}
    freeze_encoder: ClassVar[bool] = True

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """The ``A`` regions of ``K x K`` must fit (at distinct positions) the map of decoder
        block ``l`` at the training input size, before any work.

        Raises:
            ValueError: naming ``method.regions``, ``method.region_size``, ``method.blocks``, the
                map size and the key that sets the input size.
        """
        super().check_config(cfg)
        m = cfg.method
        if not cls.uses_local(m):
            return
        n = decoder_blocks(cfg.model)
        if not 1 <= m.blocks <= n:
            raise ValueError(
                f"method.blocks={m.blocks}: the model has {n} decoder blocks "
                f"(decoder1..decoder{n}); the paper's U-Net (model.depth: 6) has 5"
            )
        role = f"decoder{m.blocks}"
        h, w = tap_shapes(cfg.model, (role,), cfg.training_size())[role]
        try:
            region_corners(h, w, m.regions, m.region_size)
        except ValueError as exc:
            raise ValueError(
                f"method.regions={m.regions} (A), method.region_size={m.region_size} (K): the "
                f"feature map of decoder block method.blocks={m.blocks} (l) is {h}x{w} at the "
                f"training input {cfg.training_size_key()}; {exc}"
            ) from None

    @staticmethod
    def uses_local(cfg: MethodConfig) -> bool:
        """Whether the configured method computes the local loss."""
        return True

    def __init__(self, model: nn.Module, cfg: Config, ctx: MethodContext) -> None:
        super().__init__(model, cfg, ctx)
        self.role = decoder_role(model, cfg.blocks)
        ch = self.tap_channels(self.role)[self.role]
        if self.freeze_encoder:
            frozen = tuple(getattr(model, "frozen_prefixes", ()))
            apply_freeze(model, frozen + tuple(model.parts["encoder"]))
        self.T = PairedTransform.from_config(ctx.augment)
        self.heads["g2"] = LocalProjector(ch, cfg.proj_hidden, cfg.proj_dim)
        parts = ("encoder", *(f"decoder{i}" for i in range(1, cfg.blocks + 1)))
        self.carried = tuple(p for part in parts for p in model.parts[part])

    def carried_state(self) -> dict[str, Tensor]:
        """The encoder and the first ``l`` decoder blocks (the rest is re-initialised)."""
        return {
            k: v
            for k, v in self.model.state_dict().items()
            if any(k == p or k.startswith(p + ".") for p in self.carried)
        }

    def local_loss(self, x: Tensor, partition: Tensor, volume: Tensor | None = None) -> Tensor:
        """``L_l`` of two intensity transforms of ``x`` ``(B, 1, H, W)`` (``volume``: ids)."""
        cfg, gen = self.cfg, self.ctx.generator
        views = [self.T.sample(x.shape[0], generator=gen).intensity(x) for _ in range(2)]
        f = self.heads["g2"](self.model.features(torch.cat(views), [self.role])[self.role])
        return local_contrastive_loss(
            f, partition, cfg.strategy, cfg.regions, cfg.region_size, cfg.temperature, volume
        )

    def training_step(self, labeled: None, unlabeled: Batch, clock: Clock) -> StepOutput:
        x, vol = unlabeled["image"], volume_ids(unlabeled, unlabeled["image"].device)
        return self.output({"local": self.local_loss(x, unlabeled["partition"], vol)})
