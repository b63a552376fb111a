"""Shared mechanics of the semi-supervised methods, written once and composed by methods.

* :class:`EMATeacher` - a teacher network whose weights are an exponential moving average of the
  student's (Tarvainen & Valpola 2017; BIM App. E: decay 0.99).
* :class:`RampUp` - time-varying loss weights: ``sigmoid`` ``exp(-5 (1 - t)^2)`` (Laine & Aila
  2017, mean teacher), ``linear`` ``t``, ``cosine`` ``(1 - cos(pi t)) / 2``, with ``t`` the
  fraction of the ramp done, measured in epochs as the papers do.
* :func:`mc_dropout` - Monte-Carlo dropout passes (UA-MT's uncertainty, Yu et al. 2019).
* :func:`mixup` - mixup of images and targets with ``lambda ~ Beta(alpha, alpha)`` drawn from the
  method's own generator (Zhang et al. 2018; ICT, Verma et al. 2019).
* :func:`two_stream` - the labeled and unlabeled images through one forward pass (shared
  BatchNorm statistics, as mean-teacher style methods train), split back.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from segssl.methods.base import Clock, MethodContext

__all__ = [
    "EMATeacher",
    "RampUp",
    "joint_forward",
    "mc_dropout",
    "mixup",
    "two_stream",
    "volume_ids",
]


class EMATeacher(nn.Module):
    """Teacher weights ``theta_t <- decay * theta_t + (1 - decay) * theta_s`` after every step.

    The teacher is a frozen copy of the student (a submodule of the method, so it is
    checkpointed). Its mode is this mechanic's explicit choice, ``bn``:

    * ``"train"`` (default, as Tarvainen & Valpola's code): the teacher runs in the method's
      mode, its BatchNorms use batch statistics while training and update their own running
      statistics from the teacher's forward passes; dropout is active (the teacher's noise).
    * ``"eval"``: the teacher always runs in eval mode (running statistics, no dropout). Its
      forward passes never update its running statistics, so they follow the student's: floating
      buffers are averaged with the same decay as the weights, the others (``num_batches_tracked``)
      copied.

    In ``"train"`` mode buffers are not averaged. ``teacher(x)`` runs the teacher without
    gradients. In the method's ``state_dict`` the teacher's tensors are ``<attribute>.net.*``.
    """

    def __init__(
        self, student: nn.Module, decay: float, bn: Literal["train", "eval"] = "train"
    ) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA teacher decay must be in (0, 1), got {decay}")
        if bn not in ("train", "eval"):
            raise ValueError(f"EMA teacher bn mode must be 'train' or 'eval', got {bn!r}")
        self.decay, self.bn = decay, bn
        self.net = copy.deepcopy(student)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.frozen_prefixes = ()  # the teacher's mode is chosen here, not by model.freeze

    @property
    def inner(self) -> nn.Module:
        """The teacher network itself (``predict_with`` / ``carry = "teacher"`` resolve to it, so
        its weights are named like the student's)."""
        return self.net

    def train(self, mode: bool = True) -> EMATeacher:
        self.training = mode
        self.net.train(mode and self.bn == "train")
        return self

    def decay_at(self, step: int | None) -> float:
        """The decay used after optimiser step ``step`` (counted from 1): ``min(decay,
        1 - 1 / (step + 1))``, the warm-up of Tarvainen & Valpola's reference code (the teacher
        is the plain average of the students so far until that reaches ``decay``: 0.5 after the
        first step, 0.99 after step 99). ``None``: ``decay`` (no warm-up)."""
        return self.decay if step is None else min(self.decay, 1.0 - 1.0 / (step + 1))

    @torch.no_grad()
    def update(self, student: nn.Module, step: int | None = None) -> None:
        """One EMA step over the parameters (``lerp`` towards the student by ``1 - decay``, the
        decay warmed up by optimiser ``step`` when given: :meth:`decay_at`); in ``"eval"`` mode
        over the buffers too (see the class docstring)."""
        rate = 1.0 - self.decay_at(step)
        t = [p for p in self.net.parameters()]
        s = [p.detach() for p in student.parameters()]
        torch._foreach_lerp_(t, s, rate)
        if self.bn == "eval":
            for tb, sb in zip(self.net.buffers(), student.buffers(), strict=True):
                if tb.is_floating_point():
                    tb.lerp_(sb, rate)
                else:
                    tb.copy_(sb)

    @torch.no_grad()
    def forward(self, x: Tensor, **kwargs) -> Tensor:  # noqa: ANN003 - the network's taps etc.
        return self.net(x, **kwargs)


@dataclass(frozen=True)
class RampUp:
    """A weight rising from 0 to 1 over the first ``epochs`` epochs, then 1.

    ``t = min(epochs_done / epochs, 1)`` with ``epochs_done`` from the step's :class:`Clock`
    (fractional: the ramp moves every step); ``epochs == 0`` is no ramp (always 1).
    """

    kind: Literal["sigmoid", "linear", "cosine"]
    epochs: float

    @classmethod
    def checked(cls, kind: str, epochs: float, ctx: MethodContext, key: str) -> RampUp:
        """A ramp of the run in ``ctx``; raises when it is longer than the run (config ``key``)."""
        if kind not in ("sigmoid", "linear", "cosine"):
            raise ValueError(f"{key}: unknown ramp-up {kind!r}; expected sigmoid, linear, cosine")
        if epochs < 0 or epochs > ctx.epochs:
            raise ValueError(
                f"{key}: ramp-up of {epochs} epochs does not fit the run's train.epochs="
                f"{ctx.epochs} (the weight would never reach its value)"
            )
        return cls(kind, epochs)  # type: ignore[arg-type]

    def __call__(self, clock: Clock) -> float:
        if self.epochs == 0:
            return 1.0
        t = min(clock.epochs_done / self.epochs, 1.0)
        if self.kind == "sigmoid":
            return math.exp(-5.0 * (1.0 - t) ** 2)
        if self.kind == "linear":
            return t
        return 0.5 * (1.0 - math.cos(math.pi * t))


def _dropouts(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


def mc_dropout(
    net: nn.Module,
    x: Tensor,
    passes: int,
    perturb: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``passes`` stochastic forward passes with dropout active: ``(passes, B, C, H, W)``.

    Dropout layers are switched to training mode for the passes (whatever the network's mode,
    so a teacher in eval mode still samples) and restored; everything else keeps its mode.
    ``perturb`` (e.g. input noise) is applied to ``x`` anew for every pass, so each pass sees its
    own draw. Dropout draws from the global torch RNG (checkpointed by the engine).

    Raises:
        ValueError: the network has no dropout layer with p > 0 (``model.dropout``), or
            ``passes < 1``.
    """
    drops = _dropouts(net)
    if not drops:
        raise ValueError("Monte-Carlo dropout needs dropout in the network: set model.dropout > 0")
    if passes < 1:
        raise ValueError(f"Monte-Carlo dropout needs at least 1 pass, got {passes}")
    modes = [m.training for m in drops]
    for m in drops:
        m.train(True)
    try:
        return torch.stack([net(x if perturb is None else perturb(x)) for _ in range(passes)])
    finally:
        for m, mode in zip(drops, modes, strict=True):
            m.train(mode)


def check_dropout(net: nn.Module) -> None:
    """Raise the :func:`mc_dropout` error at construction (before any training)."""
    if not _dropouts(net):
        raise ValueError("Monte-Carlo dropout needs dropout in the network: set model.dropout > 0")


def mixup(
    x: Tensor, y: Tensor, alpha: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mix a batch with a permutation of itself: ``lam * a + (1 - lam) * a[perm]`` for the images
    ``x (B, C, H, W)`` and the targets ``y`` (soft targets or one-hot, ``(B, K, H, W)``).

    ``lam ~ Beta(alpha, alpha)`` (one per batch, as ``G1 / (G1 + G2)`` of two Gamma(alpha)
    draws) and ``perm`` are drawn from ``generator`` (CPU), so the mix is reproducible and
    resumable; nothing is read back to the host (``lam`` stays a 0-dim CPU tensor).

    Returns:
        ``(mixed_x, mixed_y, lam, perm)``.
    """
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"mixup: images {tuple(x.shape)} and targets {tuple(y.shape)} differ in B")
    gammas = torch._standard_gamma(
        torch.full((2,), float(alpha), dtype=torch.float64), generator=generator
    )
    lam = (gammas[0] / gammas.sum()).to(torch.float32)
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm], lam, perm


def _cat_outputs(a: Any, b: Any) -> Any:
    """Two outputs of a network (tensors, or tuples/lists/dicts of them) joined on the batch."""
    if isinstance(a, Tensor):
        return torch.cat([a, b])
    if isinstance(a, dict):
        return {k: _cat_outputs(a[k], b[k]) for k in a}
    if isinstance(a, tuple | list):
        return type(a)(_cat_outputs(x, y) for x, y in zip(a, b, strict=True))
    raise TypeError(f"cannot join network outputs of type {type(a).__name__}")


def joint_forward(
    net: Callable[..., Any], labeled: Tensor, unlabeled: Tensor, joint: bool = True, **kwargs: Any
) -> Any:
    """``net`` on the labeled then the unlabeled images, its output as of ``net(cat([labeled,
    unlabeled]))``. ``joint``: one pass, so BatchNorm's batch statistics mix both streams (what
    the semi-supervised methods did until ``method.streams`` existed); otherwise one pass per
    stream (each normalised by its own statistics; running statistics updated twice per step)
    and the outputs joined along the batch."""
    if joint:
        return net(torch.cat([labeled, unlabeled]), **kwargs)
    return _cat_outputs(net(labeled, **kwargs), net(unlabeled, **kwargs))


def two_stream(
    net: nn.Module, labeled: Tensor, unlabeled: Tensor, joint: bool = True
) -> tuple[Tensor, Tensor]:
    """``net`` on the labeled and unlabeled images (:func:`joint_forward`);
    ``(out_labeled, out_unlabeled)``."""
    out = joint_forward(net, labeled, unlabeled, joint)
    return out[: labeled.shape[0]], out[labeled.shape[0] :]


def volume_ids(batch: dict, device: torch.device) -> Tensor | None:
    """``(B,)`` int64 index of each slice's volume (its ``scan`` id), None without ``scan``.

    The domain contrasting strategies use it so that only OTHER volumes' slices of a partition
    are positives (Chaitanya et al.), whatever sampler drew the batch.
    """
    scans = batch.get("scan")
    if scans is None:
        return None
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(s, len(index)) for s in scans], device=device)
