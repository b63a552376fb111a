"""The method contract: the small base every method builds on (see CONTRIBUTING.md).

A method is an ``nn.Module`` that owns everything it trains or keeps (``model``, ``heads``, EMA
teachers, discriminators, queues, counters as buffers): the engine checkpoints the whole
``state_dict()`` and every optimiser. It declares, as class attributes, the batches it uses, its
loss terms and their weights (once), the network ``predict`` uses (``predict_with``, which
best-epoch selection saves and restores), what a later stage receives (``carry``) and any
optimiser it steps itself (``optimizers``). The engine never looks at a method's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from segssl.config import AugmentConfig, MethodConfig, RunConfig
from segssl.data.types import Batch
from segssl.losses import cross_entropy, dice_loss

__all__ = [
    "SUPERVISED_TERMS",
    "Clock",
    "DiceConfig",
    "Method",
    "MethodContext",
    "SemiConfig",
    "StepOutput",
    "StreamsConfig",
    "SupervisedConfig",
]

StepOutput = dict[str, Tensor]  # {"loss": total, "<part>": detached, ...}
Weight = str | tuple[str, ...] | float | None  # config field(s) multiplied, a number, logged only


class DiceConfig(MethodConfig):
    """Config base of a method with a supervised term on labeled slices: ``w_dice`` adds
    ``w_dice * Dice`` (:func:`segssl.losses.dice_loss`) to it, logged as ``dice``
    (:meth:`Method.supervised`). The papers use cross-entropy alone: 0 by default.

    ``dice_background``: the Dice averages over every class, background included (default), or
    over the foreground classes only (false). With the background in the mean, predicting all
    background already scores about 0.5 on a two-class problem, which weakens the pull towards
    a small structure; false is refused while ``w_dice`` is 0 (it would change nothing). On the
    64 px spleen phantoms with 2 labeled scans (smoke recipe, seeds 0-2) best val Dice
    0.56/0.74/0.68 against 0.00/0.00/0.57 with the background (full supervision: 0.65/0.68/0.00
    against 0.62/0.76/0.00): the smoke profiles' choice on CT (experiments/sweeps/README.md).

    ``w_dice`` and ``dice_background`` came after the trial keys of these methods were
    published, so at their defaults they are key-neutral (``Section.key_neutral_defaults``); a
    config that already published ``w_dice`` (the baseline's) keeps it keyed.
    """

    w_dice: float = Field(0.0, ge=0.0)
    dice_background: bool = True

    key_neutral_defaults: ClassVar[frozenset[str]] = frozenset({"w_dice", "dice_background"})

    @model_validator(mode="after")
    def _dice_background_needs_dice(self) -> DiceConfig:
        if not self.dice_background and self.w_dice == 0:
            raise ValueError(
                "method.dice_background: false only changes the Dice term, which is off "
                "(method.w_dice 0): set method.w_dice > 0 or drop method.dice_background"
            )
        return self


class SupervisedConfig(DiceConfig):
    """Config base of a method whose supervised term is ``w_ce * CE + w_dice * Dice``."""

    w_ce: float = Field(1.0, ge=0.0)


class StreamsConfig(DiceConfig):
    """Config base of a method that trains on labeled and unlabeled batches at once.

    ``streams``: ``joint`` puts both through the network as one batch, so BatchNorm's batch
    statistics mix them (what these methods always did); ``separate`` gives each stream its own
    pass and statistics. On the 64 px smoke phantoms (Prostate, 1 labeled scan, 2 seeds) entmin
    at w_ent = 0, a purely supervised objective, reached val Dice 0.49/0.47 with joint batches
    against 0.85/0.77 for the labeled-only baseline, and 0.87/0.88 with separate passes (ACDC:
    experiments/sweeps/README.md). Added after trial keys were published: key-neutral at its
    default.
    """

    streams: Literal["joint", "separate"] = "joint"

    key_neutral_defaults: ClassVar[frozenset[str]] = DiceConfig.key_neutral_defaults | {"streams"}

    @property
    def joint(self) -> bool:
        """Whether the labeled and unlabeled images share one forward pass."""
        return self.streams == "joint"


class SemiConfig(SupervisedConfig, StreamsConfig):
    """:class:`StreamsConfig` with the ``w_ce * CE + w_dice * Dice`` supervised term."""


# the supervised terms of a SupervisedConfig method, first in its ``terms``
SUPERVISED_TERMS: dict[str, str] = {"ce": "w_ce", "dice": "w_dice"}


@dataclass(frozen=True)
class Clock:
    """Where a training step is: ``step`` counts optimiser steps from 1 (this one included),
    ``epoch`` from 0; the same values on the first step after a resume as without one."""

    step: int
    epoch: int
    iters_per_epoch: int
    total_steps: int

    @property
    def epochs_done(self) -> float:
        """Epochs completed before this step (fractional): ramp-ups in the papers' terms."""
        return (self.step - 1) / self.iters_per_epoch

    @property
    def progress(self) -> float:
        """Fraction of the run completed before this step, in [0, 1)."""
        return (self.step - 1) / self.total_steps


@dataclass
class MethodContext:
    """What a method may know about its run besides its own config.

    Attributes:
        num_classes: output channels of the network; class_names: foreground class names.
        device: where batches and modules live; augment: the run's augmentation section.
        partitions: slice partitions per volume (meta-labels of L_con).
        generator: the method's own random stream, seeded and checkpointed by the engine.
        epochs, iters_per_epoch: the run's length (mechanics check their own lengths against it).
        image_size: ``(H, W)`` of the preprocessed slices (``data.preprocess.size``): the training
            input size when ``augment.crop`` is 0; None when unknown.
    """

    num_classes: int
    class_names: tuple[str, ...]
    device: torch.device
    augment: AugmentConfig
    partitions: int
    generator: torch.Generator
    epochs: int
    iters_per_epoch: int
    image_size: tuple[int, int] | None = None


class Method(nn.Module):
    """Base class: one subclass per file under ``segssl/methods/``.

    Class attributes: ``Config`` (paper defaults); ``uses_labeled`` / ``uses_unlabeled``;
    ``init`` (``required`` / ``optional`` / ``forbidden`` ``train.init_from``); ``pinned``
    (dotted settings of other sections the method fixes); ``terms`` (loss term -> weight: a
    config field name, a tuple of names multiplied, a number, or None for logged-only parts; a
    term whose weight is 0 is off); ``predict_with`` and ``carry`` (an owned network, ``"model"``
    or e.g. ``"teacher"``, optionally ``":<part>"`` of it such as ``"model:encoder"``);
    ``optimizers`` (name -> owned submodule prefixes that the method steps itself with
    :meth:`optimizer_step`; all other trainable parameters belong to the engine's optimiser).
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    uses_labeled: ClassVar[bool] = False
    uses_unlabeled: ClassVar[bool] = False
    init: ClassVar[Literal["required", "optional", "forbidden"]] = "optional"
    pinned: ClassVar[dict[str, Any]] = {}
    terms: ClassVar[dict[str, Weight]] = {}
    predict_with: ClassVar[str] = "model"
    carry: ClassVar[str] = "model"
    optimizers: ClassVar[dict[str, tuple[str, ...]]] = {}
    tap_fields: ClassVar[tuple[str, ...]] = ()  # config fields naming tap roles (checked early)

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Checks of the whole run config that only this method needs (run while the config is
        validated, so a sweep's plan refuses the trial before any work). The default checks
        that every role named by the ``tap_fields`` config fields (a role, a list of roles or a
        mapping keyed by role) is a tap role of the configured model.

        Raises:
            ValueError: naming the keys involved.
        """
        cls._check_supervised(cfg)
        if not cls.tap_fields:
            return
        from segssl.models import tap_roles  # the model registry sits below the methods

        roles = tap_roles(cfg.model)
        for name in cls.tap_fields:
            value = getattr(cfg.method, name)
            wanted = [value] if isinstance(value, str) else list(value)
            bad = [r for r in wanted if r not in roles]
            if bad:
                raise ValueError(
                    f"method.{name}: {', '.join(map(repr, bad))} is not a tap role of model "
                    f"{cfg.model.name!r}; valid roles: {list(roles)}"
                )

    @classmethod
    def _check_supervised(cls, cfg: RunConfig) -> None:
        """A supervised weight > 0 needs labeled batches (e.g. ``gmi_pretrain`` has none)."""
        if cls.uses_labeled:
            return
        for key in ("w_ce", "w_dice"):
            if getattr(cfg.method, key, 0.0) > 0:
                raise ValueError(
                    f"method.{key}: {cfg.method.name} trains without labeled slices (its "
                    f"supervised term has nothing to supervise): method.{key} must be 0"
                )

    def __init__(self, model: nn.Module, cfg: MethodConfig, ctx: MethodContext) -> None:
        super().__init__()
        if not isinstance(cfg, self.Config):
            raise TypeError(f"{type(self).__name__} expects {self.Config.__name__}, got {cfg!r}")
        self.model, self.cfg, self.ctx = model, cfg, ctx
        self.heads = nn.ModuleDict()
        self._stepper: Callable[[str, Tensor], None] | None = None

    # ----------------------------------------------------------------- loss terms
    def weights(self) -> dict[str, float]:
        """Weight of every active term (declared in ``terms``, weight > 0), in order."""
        out = {}
        for term, w in self.terms.items():
            if w is None:
                continue
            names = (w,) if isinstance(w, str) else w if isinstance(w, tuple) else ()
            value = float(w) if isinstance(w, int | float) else 1.0
            for name in names:
                value *= float(getattr(self.cfg, name))
            if value > 0:
                out[term] = value
        return out

    def supervised(self, logits: Tensor, labels: Tensor, ce: str = "ce") -> dict[str, Tensor]:
        """The active supervised terms on labeled ``logits`` ``(B, C, H, W)`` and integer
        ``labels`` ``(B, H, W)``: cross-entropy under the term ``ce`` and soft Dice under
        ``dice`` (each only when its weight is > 0; the Dice over the foreground classes only
        when ``dice_background`` is false; see :class:`DiceConfig`). Labels come from the data
        layer (in range by construction: no host read of their range)."""
        on, parts = self.weights(), {}
        if ce in on:
            parts[ce] = cross_entropy(logits, labels, check_range=False)
        if "dice" in on:
            parts["dice"] = dice_loss(
                logits, labels, include_background=self.cfg.dice_background, check_range=False
            )
        return parts

    def loss_parts(self) -> tuple[str, ...]:
        """Names of the parts this configured method logs besides ``loss``."""
        return tuple(self.weights()) + tuple(t for t, w in self.terms.items() if w is None)

    def output(self, parts: dict[str, Tensor], scale: dict[str, Any] | None = None) -> StepOutput:
        """``{"loss": sum(weight * scale * part), **parts detached}``; ``scale`` holds
        time-varying factors (ramp-ups) by term name. The parts must be exactly :meth:`loss_parts`;
        every ``scale`` key must be a weighted term of ``terms`` (one switched off included).

        Raises:
            KeyError: the parts differ from :meth:`loss_parts`, or a ``scale`` key names no
                weighted term.
        """
        if set(parts) != set(self.loss_parts()):
            raise KeyError(f"parts {sorted(parts)} differ from loss_parts {self.loss_parts()}")
        scale = scale or {}
        weighted = [t for t, w in self.terms.items() if w is not None]
        stray = sorted(set(scale) - set(weighted))
        if stray:  # a misspelt ramp-up key would leave its term at full weight
            raise KeyError(f"scale {stray} names no weighted term; weighted terms {weighted}")
        total = sum(w * scale.get(k, 1.0) * parts[k] for k, w in self.weights().items())
        return {"loss": total, **{k: v.detach() for k, v in parts.items()}}

    # ----------------------------------------------------------------- networks
    def network(self, target: str) -> tuple[nn.Module, tuple[str, ...]]:
        """``(module, parameter prefixes)`` of ``"<network>[:<part>]"``; prefixes empty: all.

        Raises:
            ValueError: the method owns no such network, or the network has no such part.
        """
        name, _, part = target.partition(":")
        nets = {n: getattr(m, "inner", m) for n, m in self.named_children()}  # EMA: the network
        owned = [n for n, m in nets.items() if hasattr(m, "tap_channels")]
        if name not in owned:
            raise ValueError(
                f"{type(self).__name__}: {target!r} is not a network this method owns; "
                f"owned networks: {owned}"
            )
        net = nets[name]
        if not part:
            return net, ()
        if part not in net.parts:
            raise ValueError(f"{target!r}: no part {part!r}; parts: {list(net.parts)}")
        return net, tuple(net.parts[part])

    def validate(self) -> None:
        """Check the declarations against what was built (engine: before any work)."""
        self.weights()  # every weight names a config field
        self.network(self.predict_with)
        net, _ = self.network(self.carry)
        if net.state_dict().keys() != self.model.state_dict().keys():
            raise ValueError(f"carry {self.carry!r}: not the architecture of the model")
        for prefixes in self.optimizers.values():
            for p in prefixes:
                self.get_submodule(p)  # AttributeError names the missing one

    def carried_state(self) -> dict[str, Tensor]:
        """What a later stage receives (``carry``), named like the model's own tensors."""
        net, prefixes = self.network(self.carry)
        state = net.state_dict()
        return {
            k: v
            for k, v in state.items()
            if not prefixes or any(k == p or k.startswith(p + ".") for p in prefixes)
        }

    def tap_channels(self, *roles: str) -> dict[str, int]:
        """Channels of the model's tap ``roles``, validated for its architecture."""
        ch = self.model.tap_channels
        for role in roles:
            if role not in ch:
                raise ValueError(
                    f"method tap {role!r} is not a tap role of model "
                    f"{type(self.model).__name__}; valid roles: {list(ch)}"
                )
        return {r: ch[r] for r in roles}

    # ----------------------------------------------------------------- training
    def train(self, mode: bool = True) -> Method:
        """Set training mode; BatchNorms of ``model.freeze`` blocks stay in eval (their running
        statistics do not change). Other modules choose their own mode (see an EMA teacher)."""
        super().train(mode)
        frozen = getattr(self.model, "frozen_prefixes", ())
        if mode and frozen:
            for name, m in self.model.named_modules():
                under = any(name == p or name.startswith(p + ".") for p in frozen)
                if under and isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def training_step(
        self, labeled: Batch | None, unlabeled: Batch | None, clock: Clock
    ) -> StepOutput:
        """One step's objective, ``self.output(parts)``. Batches are on ``ctx.device`` and
        base-augmented; a batch the method does not use is None."""
        raise NotImplementedError

    def after_step(self, clock: Clock) -> dict[str, Tensor] | None:
        """After the engine's optimiser step: EMA updates, a discriminator's own step
        (:meth:`optimizer_step`); may return extra detached values to log."""
        return None

    def optimizer_step(self, name: str, loss: Tensor) -> None:
        """Backward ``loss`` and step the owned optimiser ``name`` (the engine applies AMP's
        GradScaler, gradient clipping and the LR schedule); at most once per training step."""
        if self._stepper is None:
            raise RuntimeError("optimizer_step is only available inside the engine")
        self._stepper(name, loss)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Segmentation logits ``(B, C, H, W)`` of the ``predict_with`` network."""
        net = self.network(self.predict_with)[0]
        return net(images)

    @torch.no_grad()
    def pictures(self, batch: Batch) -> dict[str, Any] | None:
        """Figures of the learned representation (clustering methods), or None."""
        return None
