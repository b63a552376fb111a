"""IMSAT (Dec): dense information maximising self-augmented training (Hu et al. 2017; BIM App. E).

Cluster heads on the decoder's dense features (``dense_tap``, K=40 as BIM) are trained to maximise
``I(X; p(X))`` over all pixels while the prediction on ``T(x)`` follows the transformed prediction
on ``x`` (SAT): ``p_aug = g(s(T(x)))``, ``p_ref = T(g(s(x)))`` with one paired-transform state per
step; the loss is :func:`segssl.losses.imsat.imsat_loss`, averaged over heads. Out-of-image pixels
of ``p_ref`` take the border value so it stays a distribution.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from segssl.augment import PairedTransform
from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses.imsat import imsat_objective, imsat_terms
from segssl.methods.base import Clock, Method, MethodContext, StepOutput
from segssl.methods.pictures import cluster_figures
from segssl.models.heads import ClusterHeads


class Config(MethodConfig):
    """IMSAT hyperparameters (K and heads as BIM's protocol; mu 4 as IMSAT)."""

    name: Literal["imsat"] = "imsat"
    k: int = Field(40, ge=2)
    heads: int = Field(3, ge=1)
    lamda: float = Field(0.1, ge=0.0)  # weight of the MI term against SAT
    mu: float = Field(4.0, ge=0.0)  # weight of the conditional entropy inside the MI term
    sat_weight: float = Field(1.0, ge=0.0)
    dense_tap: str = "decoder4"  # tap role (Up_conv2 in the U-Net)


class IMSAT(Method):
    """Dense IMSAT pre-training on unlabeled batches."""

    tap_fields = ("dense_tap",)
    Config: ClassVar[type[MethodConfig]] = Config
    uses_unlabeled = True
    # the IMSAT objective is the total; its components are logged only
    terms = {"imsat": 1.0, "sat": None, "marginal_entropy": None, "conditional_entropy": None}

    def __init__(self, model: torch.nn.Module, cfg: Config, ctx: MethodContext) -> None:
        super().__init__(model, cfg, ctx)
        ch = self.tap_channels(cfg.dense_tap)
        self.T = PairedTransform.from_config(ctx.augment)
        self.heads["cluster"] = ClusterHeads(ch[cfg.dense_tap], cfg.k, cfg.heads)

    def training_step(self, labeled: None, unlabeled: Batch, clock: Clock) -> StepOutput:
        cfg, x = self.cfg, unlabeled["image"]
        state = self.T.sample(x.shape[0], generator=self.ctx.generator)
        _, f_tx = self.model(state.image(x), taps=[cfg.dense_tap])
        _, f_x = self.model(x, taps=[cfg.dense_tap])
        p_aug = self.heads["cluster"](f_tx[cfg.dense_tap])
        p_ref = [
            state.geometry(p, padding_mode="border")
            for p in self.heads["cluster"](f_x[cfg.dense_tap])
        ]
        # each head's terms once: the loss is formed from them and they are logged as well
        terms = [imsat_terms(a, r) for a, r in zip(p_aug, p_ref, strict=True)]
        total = torch.stack([imsat_objective(t, cfg.lamda, cfg.mu, cfg.sat_weight) for t in terms])
        parts = {k: torch.stack([t[k].detach() for t in terms]).mean() for k in terms[0]}
        parts["imsat"] = total.mean()
        return self.output(parts)

    @torch.no_grad()
    def pictures(self, batch: Batch) -> dict[str, Any] | None:
        x = batch["image"]
        _, f_x = self.model(x, taps=[self.cfg.dense_tap])
        return cluster_figures(x, self.heads["cluster"](f_x[self.cfg.dense_tap])[0], None)
