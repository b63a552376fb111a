"""The small base every method builds on.

A method owns the segmentation network (``self.model``) and any extra trainable modules it needs
(``self.heads``: projectors, cluster heads). Both are submodules, so the engine optimises
``method.parameters()`` and checkpoints ``model`` and ``heads`` separately (only ``model`` is
carried to a fine-tuning stage). A method declares what data it needs through class attributes;
the engine reads those and never looks at a method's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from segssl.config import AugmentConfig, MethodConfig
from segssl.data.types import Batch

__all__ = ["Method", "MethodContext", "StepOutput"]

StepOutput = dict[str, Tensor]  # {"loss": total, "<part>": detached or not, ...}


@dataclass
class MethodContext:
    """What a method may know about its run besides its own config.

    Attributes:
        num_classes: output channels of the network (background + foreground classes).
        class_names: foreground class names of the run's target.
        device: where batches and modules live.
        augment: the run's augmentation section (paired transform T ranges).
        partitions: number of slice partitions per volume (meta-labels of L_con).
        generator: the method's own random stream (paired transforms); seeded and checkpointed
            by the engine so that runs are bit-reproducible and resumable.
    """

    num_classes: int
    class_names: tuple[str, ...]
    device: torch.device
    augment: AugmentConfig
    partitions: int
    generator: torch.Generator


class Method(nn.Module):
    """Base class: one subclass per file under ``segssl/methods/``.

    Class attributes read by the engine and the config layer:

    * ``Config``: the method's :class:`MethodConfig` subclass (paper defaults).
    * ``uses_labeled`` / ``uses_unlabeled``: which batches :meth:`training_step` receives.
    * ``init``: ``"required"`` (fine-tuning needs ``train.init_from``), ``"optional"`` or
      ``"forbidden"`` (e.g. the baseline starts from random weights by definition).
    * ``pinned``: settings of other config sections the method fixes, by dotted key (applied when
      the run config is validated, so they are visible in the resolved config and its hash).
    * ``parts``: names of the loss components :meth:`training_step` returns besides ``loss``
      (for a given config see :meth:`loss_parts`).
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    uses_labeled: ClassVar[bool] = False
    uses_unlabeled: ClassVar[bool] = False
    init: ClassVar[Literal["required", "optional", "forbidden"]] = "optional"
    pinned: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: nn.Module, cfg: MethodConfig, ctx: MethodContext) -> None:
        super().__init__()
        if not isinstance(cfg, self.Config):
            raise TypeError(f"{type(self).__name__} expects {self.Config.__name__}, got {cfg!r}")
        self.model = model
        self.cfg = cfg
        self.ctx = ctx
        self.heads = nn.ModuleDict()

    def train(self, mode: bool = True) -> Method:
        """Set training mode, except for BatchNorm layers whose parameters are all frozen
        (``model.freeze``): they stay in eval mode, so a frozen block's running statistics do not
        change either and the block computes the same function after training as before."""
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    params = list(m.parameters(recurse=False))
                    if params and not any(p.requires_grad for p in params):
                        m.eval()
        return self

    def tap_channels(self, *taps: str) -> dict[str, int]:
        """Channels of the U-Net blocks ``taps`` (the method's feature taps), checked by name.

        Raises:
            ValueError: a tap that is not a block of the model, with the known block names.
        """
        ch = self.model.feature_channels
        for tap in taps:
            if tap not in ch:
                raise ValueError(f"method tap {tap!r} is not a U-Net block; known: {list(ch)}")
        return {tap: ch[tap] for tap in taps}

    def loss_parts(self) -> tuple[str, ...]:
        """Names of the loss components this configured method reports (besides ``loss``)."""
        raise NotImplementedError

    def training_step(self, labeled: Batch | None, unlabeled: Batch | None) -> StepOutput:
        """One optimisation step's objective; ``{"loss": total, <part>: value, ...}``.

        Batches are already on ``ctx.device`` and base-augmented by the engine; a batch the
        method does not use (``uses_labeled`` / ``uses_unlabeled`` false) is ``None``.
        """
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Hook after each optimiser step (e.g. an EMA teacher update); ``step`` counts from 1."""

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Segmentation logits ``(B, C, H, W)`` used for validation and test."""
        return self.model(images)

    @torch.no_grad()
    def pictures(self, batch: Batch) -> dict[str, Any] | None:
        """Matplotlib figures describing the learned representation (clustering methods), or
        None. ``batch`` holds a few validation slices (``image`` ``(B, 1, H, W)``)."""
        return None


def parts_output(total: Tensor, parts: dict[str, Tensor]) -> StepOutput:
    """``{"loss": total, **parts}`` with parts detached (they are only logged)."""
    return {"loss": total, **{k: v.detach() for k, v in parts.items()}}
