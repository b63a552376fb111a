"""Adversarial training (Zhang et al. 2017; BIM paper, App. E).

A segmentation network and an image-level discriminator on its softmax maps play a min-max game:
the discriminator learns to tell predictions of labeled images ("real") from those of unlabeled
images, the segmenter learns to make them indistinguishable::

    segmenter:      w_ce * CE(labeled) + w_adv * BCE(D(f(x_u)), real)
    discriminator:  (BCE(D(f(x_l)), real) + BCE(D(f(x_u)), fake)) / 2     (its own optimiser)

The discriminator is stepped by the method after the segmenter's step, with the optimiser
settings ``optim.extra.discriminator`` (the main settings when absent); the BIM paper
grid-searches ``w_adv`` from 1e-6 to 0.1.
``w_dice`` > 0 adds ``w_dice * Dice`` on the labeled slices, logged as ``dice`` (the papers use
CE alone).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses import adversarial_loss, discriminator_loss
from segssl.methods.base import (
    SUPERVISED_TERMS,
    Clock,
    Method,
    MethodContext,
    SemiConfig,
    StepOutput,
)
from segssl.methods.mechanics import joint_forward
from segssl.models.heads import MapDiscriminator


class Config(SemiConfig):
    """Weight of the adversarial term and the discriminator's conv widths."""

    name: Literal["adversarial"] = "adversarial"
    w_adv: float = Field(1e-3, ge=0.0)
    disc_widths: tuple[int, ...] = (64, 128, 256, 512)


class Adversarial(Method):
    """Segmenter (engine's optimiser) against a discriminator (the method's own optimiser)."""

    Config: ClassVar[type[MethodConfig]] = Config
    uses_labeled = True
    uses_unlabeled = True
    terms = {**SUPERVISED_TERMS, "adv": "w_adv", "disc": None}
    optimizers = {"discriminator": ("discriminator",)}

    def __init__(self, model: torch.nn.Module, cfg: Config, ctx: MethodContext) -> None:
        super().__init__(model, cfg, ctx)
        self.discriminator = MapDiscriminator(ctx.num_classes, cfg.disc_widths)
        self._maps: tuple[torch.Tensor, torch.Tensor] | None = None

    def training_step(self, labeled: Batch, unlabeled: Batch, clock: Clock) -> StepOutput:
        x_l, x_u = labeled["image"], unlabeled["image"]
        logits = joint_forward(self.model, x_l, x_u, self.cfg.joint)
        probs = logits.float().softmax(1)
        p_l, p_u = probs[: len(x_l)], probs[len(x_l) :]
        self._maps = (p_l.detach(), p_u.detach())  # the discriminator's inputs in after_step
        parts = self.supervised(logits[: len(x_l)], labeled["label"])
        if "adv" in self.weights():
            parts["adv"] = adversarial_loss(self.discriminator(p_u))
        with torch.no_grad():
            parts["disc"] = discriminator_loss(self.discriminator(p_l), self.discriminator(p_u))
        return self.output(parts)

    def after_step(self, clock: Clock) -> dict[str, torch.Tensor]:
        """The discriminator's own step on this step's (detached) maps."""
        assert self._maps is not None, "after_step before training_step"
        p_l, p_u = self._maps
        self._maps = None
        self.discriminator.zero_grad(set_to_none=True)  # drop the segmenter loss' gradients
        loss = discriminator_loss(self.discriminator(p_l), self.discriminator(p_u))
        self.optimizer_step("discriminator", loss)
        return {"disc_step": loss.detach()}
