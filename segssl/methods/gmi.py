"""GMI: semi-supervised segmentation with global and local MI regularisation (Peng, Pedersoli,
Desrosiers; seed 001), eq. 3::

    L = w_ce * L_spv + lambda_1 * L_MI^global + lambda_2 * L_MI^local + lambda_3 * L_cons

* ``L_spv`` (eq. 4): cross-entropy on the labeled batch (``w_dice`` > 0 adds a Dice term, logged
  as ``dice``; the paper uses CE alone).
* ``L_MI^global`` (eqs. 7-9): ``-I`` between the cluster assignments of ``x`` and ``T(x)`` of the
  max-pooled ``global_taps`` features (the encoder output, the paper's Conv5) through ``heads``
  linear projectors to ``k_enc`` clusters, averaged over heads and taps.
* ``L_MI^local`` (eqs. 10-12): for every ``local_taps`` role (``decoder1..4`` = the paper's
  Upconv5..Upconv2) with its displacement half-width (1: 3x3, 3: 7x7, 0: 1x1), ``-I`` of the joint
  of ``h(psi(T(x)))`` and ``h(T(psi(x)))`` for every displacement (one convolution), ``h`` being
  ``heads`` 1x1-conv projectors to ``k_dec`` clusters; averaged over displacements, heads, taps.
* ``L_cons`` (eq. 13): squared L2 between ``f(T(x))`` and ``T(f(x))``.

``T`` is the run's paired transform (``augment``; the paper's T is random horizontal and
vertical flips). Labeled, unlabeled and transformed images go through the network in one pass.
``teacher: true`` is the paper's "enhanced" variant (Fig. 4): the ``x`` side of every MI pair
comes from an EMA teacher (decay ``ema_decay``). The ``gmi_pretrain`` variant (Fig. 7's
Pretrain-Finetune) drops ``L_spv`` and trains on unlabeled images only.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from segssl.augment import PairedTransform
from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.losses import consistency_loss, global_mi_loss, local_mi_loss
from segssl.methods.base import (
    SUPERVISED_TERMS,
    Clock,
    Method,
    MethodContext,
    SemiConfig,
    StepOutput,
)
from segssl.methods.mechanics import EMATeacher, joint_forward
from segssl.models.heads import ClusterHeads, PooledClusterHeads


class Config(SemiConfig):
    """GMI paper defaults (ACDC/MMWHS weights; see ``dataset_defaults`` for the others)."""

    name: Literal["gmi"] = "gmi"
    w_global: float = Field(0.1, ge=0.0)  # lambda_1
    w_local: float = Field(0.1, ge=0.0)  # lambda_2
    w_cons: float = Field(5.0, ge=0.0)  # lambda_3
    global_taps: tuple[str, ...] = ("encoder",)  # Conv5
    local_taps: dict[str, int] = {"decoder3": 1, "decoder4": 3}  # Upconv3 3x3, Upconv2 7x7
    k_enc: int = Field(10, ge=2)
    k_dec: int = Field(10, ge=2)
    heads: int = Field(5, ge=1)
    teacher: bool = False  # "enhanced" (Fig. 4): MI between EMA teacher and student
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0)
    ema_warmup: bool = True  # as mean_teacher: decay min(ema_decay, 1 - 1/(step + 1))

    @field_validator("local_taps")
    @classmethod
    def _pads(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {k: p for k, p in v.items() if p < 0}
        if bad:
            raise ValueError(f"displacement half-widths must be >= 0 (0: 1x1, 1: 3x3), got {bad}")
        return v

    @property
    def global_on(self) -> float:
        """1 when a global tap is chosen (the term exists), else 0."""
        return 1.0 if self.global_taps else 0.0

    @property
    def local_on(self) -> float:
        """1 when a local tap is chosen, else 0."""
        return 1.0 if self.local_taps else 0.0


# the paper's lambda_1..3 per dataset (Sec. 4.2); keys missing from a run's method section
DATASET_DEFAULTS = {
    "acdc": {"w_global": 0.1, "w_local": 0.1, "w_cons": 5.0},
    "mmwhs-ct": {"w_global": 0.1, "w_local": 0.1, "w_cons": 5.0},
    "mmwhs-mr": {"w_global": 0.1, "w_local": 0.1, "w_cons": 5.0},
    "promise12": {"w_global": 0.05, "w_local": 0.05, "w_cons": 10.0},
    "msd-prostate": {"w_global": 0.05, "w_local": 0.05, "w_cons": 10.0},
    "msd-spleen": {"w_global": 0.05, "w_local": 0.05, "w_cons": 5.0},
}


class GMI(Method):
    """Supervised CE plus global MI, local MI and transformation consistency on unlabeled data."""

    tap_fields = ("global_taps", "local_taps")
    Config: ClassVar[type[MethodConfig]] = Config
    uses_labeled = True
    uses_unlabeled = True
    dataset_defaults: ClassVar[dict[str, dict[str, float]]] = DATASET_DEFAULTS
    terms = {
        **SUPERVISED_TERMS,
        "global_mi": ("w_global", "global_on"),
        "local_mi": ("w_local", "local_on"),
        "cons": "w_cons",
    }

    def __init__(self, model: nn.Module, cfg: Config, ctx: MethodContext) -> None:
        super().__init__(model, cfg, ctx)
        ch = self.tap_channels(*cfg.global_taps, *cfg.local_taps)
        self.heads["global"] = nn.ModuleDict(
            {r: PooledClusterHeads(ch[r], cfg.k_enc, cfg.heads) for r in cfg.global_taps}
        )
        self.heads["local"] = nn.ModuleDict(
            {r: ClusterHeads(ch[r], cfg.k_dec, cfg.heads) for r in cfg.local_taps}
        )
        self.T = PairedTransform.from_config(ctx.augment)
        self.roles = tuple(dict.fromkeys((*cfg.global_taps, *cfg.local_taps)))
        if cfg.teacher:
            self.teacher = EMATeacher(model, cfg.ema_decay)
        self._check_windows()

    def _check_windows(self) -> None:
        """A displacement window must fit its tap's map at the training input size (before
        training): the random crop, or the preprocessed slice when ``augment.crop`` is 0."""
        crop = self.ctx.augment.crop
        size = (crop, crop) if crop else self.ctx.image_size
        if not self.cfg.local_taps or not size:
            return
        where = f"augment.crop={crop}" if crop else f"data.preprocess.size={list(size)}"
        conv = next(m for m in self.model.modules() if isinstance(m, nn.Conv2d))
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            _, feats = self.model(torch.zeros(1, conv.in_channels, *size), taps=self.roles)
        self.model.train(was)
        for role, pad in self.cfg.local_taps.items():
            h, w = feats[role].shape[-2:]
            if 2 * pad + 1 > min(h, w):
                raise ValueError(
                    f"method.local_taps.{role}: a {2 * pad + 1}x{2 * pad + 1} displacement set "
                    f"does not fit the {h}x{w} map of {role} at {where}"
                )

    def training_step(self, labeled: Batch | None, unlabeled: Batch, clock: Clock) -> StepOutput:
        cfg, x = self.cfg, unlabeled["image"]
        t = self.T.sample(x.shape[0], generator=self.ctx.generator)
        x_u = torch.cat([x, t.image(x)])
        if labeled is None:
            logits, feats = self.model(x_u, taps=self.roles)
        else:
            logits, feats = joint_forward(
                self.model, labeled["image"], x_u, cfg.joint, taps=self.roles
            )
        n, n_l = x.shape[0], logits.shape[0] - 2 * x.shape[0]
        f_x = {r: f[n_l : n_l + n] for r, f in feats.items()}
        f_tx = {r: f[n_l + n :] for r, f in feats.items()}
        if cfg.teacher:  # enhanced: the x side of the MI pairs from the EMA teacher
            f_x = self.teacher(x, taps=self.roles)[1]
        parts: dict[str, Tensor] = {}
        if labeled is not None:
            parts.update(self.supervised(logits[:n_l], labeled["label"]))
        if cfg.global_taps:
            g = self.heads["global"]
            parts["global_mi"] = torch.stack(
                [global_mi_loss(g[r](f_x[r]), g[r](f_tx[r])) for r in cfg.global_taps]
            ).mean()
        if cfg.local_taps:
            h = self.heads["local"]
            parts["local_mi"] = torch.stack(
                [
                    local_mi_loss(h[r].probs(f_tx[r]), h[r].probs(t.geometry(f_x[r])), pad)
                    for r, pad in cfg.local_taps.items()
                ]
            ).mean()
        if cfg.w_cons > 0:
            probs = logits[n_l:].float().softmax(1)
            mask = t.valid_mask(*x.shape[-2:], device=x.device)
            parts["cons"] = consistency_loss(probs[n:], t.geometry(probs[:n]), mask)
        return self.output(parts)

    def after_step(self, clock: Clock) -> None:
        if self.cfg.teacher:
            self.teacher.update(self.model, clock.step if self.cfg.ema_warmup else None)
