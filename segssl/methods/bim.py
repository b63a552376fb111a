"""BIM: boundary-aware information maximisation pre-training (Peng et al., BIM paper eq. 11).

``L = w_con * L_con + w_mi * L_MI(alpha) + w_cc * lambda_cc * L_CC`` on unlabeled slices:

* ``L_MI`` (eqs. 3-8) between ``p_hat = g(s(T(x)))`` and ``p_tilde = g(T(s(x)))``: ``s`` is the
  U-Net up to ``dense_tap`` (``decoder4`` = Up_conv2), ``g`` the cluster heads (1x1 conv +
  K-way softmax, one loss per head, averaged), ``T`` the paired transform sampled ONCE per step
  (gamma + affine on the image, the same affine only on the features). Pixels that ``T`` moves
  in from outside the image are masked out of the joint (``mask_outside``; the paper does not
  say).
* ``L_CC`` (eq. 9): local NCC between the edge map of ``T(x)`` and the cluster-entropy map of
  ``p_hat``, per head, averaged.
* ``L_con`` (eq. 10): supervised-contrastive loss on the pooled ``global_tap`` (``encoder`` =
  Conv5) features of both views through the global projector; positives share the
  slice-partition meta-label.

Setting a weight to 0 removes the term (and its head): "only MI" is ``w_con=0, w_cc=0``, "only
CC" ``w_con=0, w_mi=0``, "MI+CC" ``w_con=0``, "Contrast(Enc)+Ours" the default. Registry
variant ``iic`` (IIC (Dec), Ji et al. 2019; BIM App. E): plain MI, ``alpha=0``, only ``w_mi``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator

from segssl.augment import PairedTransform
from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses import mi_loss
from segssl.losses.boundary import entropy_cc_loss
from segssl.losses.mi import joint_distribution
from segssl.methods.base import Clock, Method, MethodContext, StepOutput
from segssl.methods.pictures import cluster_figures
from segssl.models.heads import ClusterHeads, GlobalProjector


class Config(MethodConfig):
    """BIM hyperparameters (paper defaults: K=40, 3 heads, alpha 0.5, lambda_CC 1, tau 0.07)."""

    name: Literal["bim"] = "bim"
    k: int = Field(40, ge=2)  # clusters K
    heads: int = Field(3, ge=1)  # cluster sub-heads
    alpha: float = Field(0.5, ge=0.0, le=1.0)  # eq. 6 mixing with the diagonal pseudo-joint
    lamda: float = Field(1.0, ge=0.0)  # weight of the marginal entropies (eq. 8)
    lambda_cc: float = Field(1.0, ge=0.0)  # lambda of eq. 11
    w_con: float = Field(1.0, ge=0.0)
    w_mi: float = Field(1.0, ge=0.0)
    w_cc: float = Field(1.0, ge=0.0)
    edge: Literal["sobel", "diff"] = "sobel"
    window: int = Field(5, ge=3)
    edge_power: float = Field(0.75, gt=0.0)
    temperature: float = Field(0.07, gt=0.0)
    proj_hidden: int = Field(256, ge=1)
    proj_dim: int = Field(128, ge=1)
    dense_tap: str = "decoder4"  # tap roles of the model (Up_conv2, Conv5 in the U-Net)
    global_tap: str = "encoder"
    mask_outside: bool = True

    @field_validator("window")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"the NCC window must be odd, got {v}")
        return v

    @model_validator(mode="after")
    def _some_term(self) -> Config:
        if self.w_con == 0 and self.w_mi == 0 and self.w_cc * self.lambda_cc == 0:
            raise ValueError("all loss weights are 0 (w_con, w_mi, w_cc * lambda_cc)")
        return self


class BIM(Method):
    """Pre-training on unlabeled batches with L_con + L_MI + lambda_CC L_CC."""

    tap_fields = ("dense_tap", "global_tap")
    Config: ClassVar[type[MethodConfig]] = Config
    uses_unlabeled = True
    terms = {"con": "w_con", "mi": "w_mi", "cc": ("w_cc", "lambda_cc")}

    def __init__(self, model: torch.nn.Module, cfg: Config, ctx: MethodContext) -> None:
        super().__init__(model, cfg, ctx)
        ch = self.tap_channels(cfg.dense_tap, cfg.global_tap)
        self.T = PairedTransform.from_config(ctx.augment)
        if self._on("mi") or self._on("cc"):
            self.heads["cluster"] = ClusterHeads(ch[cfg.dense_tap], cfg.k, cfg.heads)
        if self._on("con"):
            self.heads["global"] = GlobalProjector(
                ch[cfg.global_tap], cfg.proj_hidden, cfg.proj_dim
            )

    def _on(self, part: str) -> bool:
        return part in self.weights()

    def training_step(self, labeled: None, unlabeled: Batch, clock: Clock) -> StepOutput:
        cfg, x = self.cfg, unlabeled["image"]
        state = self.T.sample(x.shape[0], generator=self.ctx.generator)
        tx = state.image(x)
        taps = [cfg.dense_tap] + ([cfg.global_tap] if self._on("con") else [])
        # the taps only: the segmentation head (and any block after the taps) is not run, its
        # logits would be thrown away
        f_tx = self.model.features(tx, taps)
        f_x = self.model.features(x, taps) if self._on("mi") or self._on("con") else None
        parts: dict[str, torch.Tensor] = {}
        # all heads at once: (B, heads, K, H, W) probabilities, one loss per head, averaged
        if self._on("cc"):  # g(s(T(x))) and its pixel entropies (psi of L_CC), one node
            p_hat, ent = self.heads["cluster"].probs_and_entropy(f_tx[cfg.dense_tap])
        elif self._on("mi"):
            p_hat = self.heads["cluster"].probs(f_tx[cfg.dense_tap])
        if self._on("mi"):
            # the joint sums a * b: a binary mask on one side suffices (applied in the softmax)
            mask = state.valid_mask(*x.shape[-2:], device=x.device) if cfg.mask_outside else None
            p_tilde = self.heads["cluster"].probs(state.geometry(f_x[cfg.dense_tap]), mask)
            parts["mi"] = mi_loss(p_hat, p_tilde, cfg.alpha, cfg.lamda).mean()  # g(T(s(x)))
        if self._on("cc"):
            parts["cc"] = entropy_cc_loss(tx, ent, cfg.window, cfg.edge, cfg.edge_power).mean()
        if self._on("con"):
            from segssl.losses.contrastive import supcon_loss

            z = self.heads["global"](torch.cat([f_x[cfg.global_tap], f_tx[cfg.global_tap]]))
            # (N,) meta-labels, shared by both views: every anchor has a positive
            parts["con"] = supcon_loss(z, unlabeled["partition"], temperature=cfg.temperature)
        return self.output(parts)

    @torch.no_grad()
    def pictures(self, batch: Batch) -> dict[str, Any] | None:
        if "cluster" not in self.heads:
            return None
        x = batch["image"]
        state = self.T.sample(x.shape[0], generator=torch.Generator().manual_seed(0))
        _, f_x = self.model(x, taps=[self.cfg.dense_tap])
        _, f_tx = self.model(state.image(x), taps=[self.cfg.dense_tap])
        p_x = self.heads["cluster"](f_x[self.cfg.dense_tap])[0]
        p_hat = self.heads["cluster"](f_tx[self.cfg.dense_tap])[0]
        p_tilde = self.heads["cluster"](state.geometry(f_x[self.cfg.dense_tap]))[0]
        mask = state.valid_mask(*x.shape[-2:], device=x.device)
        return cluster_figures(x, p_x, joint_distribution(p_hat * mask, p_tilde * mask))
