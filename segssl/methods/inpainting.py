"""Inpainting pre-training (Pathak et al., 2016, context encoder; a pretext task of Chaitanya
Table 2).

Random square regions of each unlabeled image are removed; the whole U-Net, with a 1x1
reconstruction convolution on its last decoder block, restores the image, with the squared error
on the removed pixels only (the context encoder's reconstruction term; its small adversarial
term, weight 0.001 in the paper, is left out). Pathak et al. set removed pixels to zero of
zero-centred inputs, i.e. to the mean intensity; segssl's intensities lie in [0, 1], so the
removed pixels take the mean of the image's visible pixels (``fill: mean``; ``zero`` is the
darkest, background-like value). Defaults: one square of half the image side (a quarter of the
image, Pathak et al.'s region size). Carried to the fine-tuning: the encoder and the decoder;
neither the reconstruction convolution nor the segmentation layer (never trained here; the
fine-tuning initialises it with its own seed, so load with ``train.init_strict: false``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses.pretext import inpainting_mask, masked_mse, remove_regions
from segssl.methods.base import Clock, Method, MethodContext, StepOutput


class Config(MethodConfig):
    """Removed regions: ``regions`` squares of side ``size`` x the image side."""

    name: Literal["inpainting"] = "inpainting"
    size: float = Field(0.5, gt=0.0, lt=1.0)
    regions: int = Field(1, ge=1)
    fill: Literal["mean", "zero"] = "mean"  # value of the removed pixels in the input


def last_decoder_role(model: nn.Module) -> str:
    """The tap role of the model's last (full-resolution) decoder block."""
    n = sum(1 for r in model.tap_channels if r.startswith("decoder"))
    return f"decoder{n}"


class Reconstruction(Method):
    """Base of the image-restoring pretext tasks: a 1x1 reconstruction convolution on the last
    decoder block (not carried); :meth:`reconstruct` maps a corrupted image to the restored one."""

    uses_unlabeled = True

    def __init__(self, model: nn.Module, cfg: MethodConfig, ctx: MethodContext) -> None:
        super().__init__(model, cfg, ctx)
        self.role = last_decoder_role(model)
        ch = self.tap_channels(self.role)[self.role]
        self.heads["reconstruction"] = nn.Conv2d(ch, model.in_channels, 1)

    def reconstruct(self, corrupted: Tensor) -> Tensor:
        """The image restored from ``corrupted`` ``(B, C, H, W)``, at its size (a last decoder
        block below full resolution, e.g. ResNet-50's at stride 2, is up-sampled bilinearly,
        as the network's own logits are)."""
        feats = self.model.features(corrupted, [self.role])[self.role]
        out = self.heads["reconstruction"](feats)
        if out.shape[-2:] != corrupted.shape[-2:]:
            out = F.interpolate(
                out, size=corrupted.shape[-2:], mode="bilinear", align_corners=False
            )
        return out

    def carried_state(self) -> dict[str, Tensor]:
        """The model without its segmentation layer (part ``head``), which no pretext trains."""
        head = tuple(getattr(self.model, "parts", {}).get("head", ()))
        return {
            k: v
            for k, v in super().carried_state().items()
            if not any(k == p or k.startswith(p + ".") for p in head)
        }


class Inpainting(Reconstruction):
    """Reconstruct removed regions from their context."""

    Config: ClassVar[type[MethodConfig]] = Config
    terms = {"inpainting": 1.0}

    def training_step(self, labeled: None, unlabeled: Batch, clock: Clock) -> StepOutput:
        x = unlabeled["image"]
        mask = inpainting_mask(tuple(x.shape), self.cfg.size, self.cfg.regions, self.ctx.generator)
        mask = mask.to(x.device, x.dtype)
        corrupted = remove_regions(x, mask, self.cfg.fill)
        return self.output({"inpainting": masked_mse(self.reconstruct(corrupted), x, mask)})
