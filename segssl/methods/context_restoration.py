"""Context restoration pre-training (Chen et al., 2019; a pretext task of Chaitanya Table 2).

Each unlabeled image is corrupted by swapping two random disjoint patches, ``swaps``
times (its intensity distribution is unchanged, its spatial context is not); the whole U-Net,
with a 1x1 reconstruction convolution on its last decoder block, restores the original image,
with the squared error over the image. Patch side and swap count are not given by Chaitanya et
al.; the defaults (a tenth of the side, 10 swaps) follow Chen et al.'s 2D setting in scale.
Carried to the fine-tuning: the encoder and the decoder (Chen et al. initialise the whole
segmentation network from the restoration network), not the reconstruction convolution nor the
untrained segmentation layer (load with ``train.init_strict: false``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses.pretext import masked_mse, swap_patches
from segssl.methods.base import Clock, StepOutput
from segssl.methods.inpainting import Reconstruction


class Config(MethodConfig):
    """Patch side (fraction of the image side) and number of swaps T."""

    name: Literal["context_restoration"] = "context_restoration"
    size: float = Field(0.1, gt=0.0, le=0.5)
    swaps: int = Field(10, ge=1)


class ContextRestoration(Reconstruction):
    """Restore images whose patches were swapped."""

    Config: ClassVar[type[MethodConfig]] = Config
    terms = {"restoration": 1.0}

    def training_step(self, labeled: None, unlabeled: Batch, clock: Clock) -> StepOutput:
        x = unlabeled["image"]
        corrupted = swap_patches(x, self.cfg.size, self.cfg.swaps, self.ctx.generator)
        return self.output({"restoration": masked_mse(self.reconstruct(corrupted), x)})
