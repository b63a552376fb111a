"""Optimiser and learning-rate schedule of the papers (BIM Appendix F; Chaitanya et al.).

The learning rate starts at ``lr``, rises linearly to ``lr * warmup_factor`` over
``warmup_epochs`` epochs, then (``schedule``) decays along a cosine to ~0 over the remaining
epochs (``cosine``, BIM) or stays at ``lr * warmup_factor`` (``constant``, Chaitanya et al.). The
scheduler is stepped once per epoch (an epoch is ``train.iters_per_epoch`` iterations) and is
built from ``torch.optim.lr_scheduler`` pieces (``LinearLR`` then ``CosineAnnealingLR`` or
``ConstantLR`` with factor 1, chained by ``SequentialLR``), so its state is a plain dict that
checkpoints with ``weights_only=True``.

Parameter groups (``optim.groups``: name prefix -> own lr / weight decay) scale with the same
schedule: each group warms up from its own lr to ``lr * warmup_factor``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim import SGD, Adam, Optimizer, RAdam
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    SequentialLR,
)

from segssl.config import OptimizerSettings

__all__ = ["build_optimizer", "build_scheduler", "lr_at", "param_groups"]

Named = tuple[str, torch.nn.Parameter]


def param_groups(cfg: OptimizerSettings, named: Iterable[Named], where: str = "optim") -> list:
    """Trainable ``(name, parameter)`` pairs split into torch parameter groups by ``cfg.groups``
    (the longest matching name prefix wins; unmatched parameters take the optimiser's settings).

    Raises:
        ValueError: no trainable parameter, or a group prefix that matches none (``where``
            names the config section in the message).
    """
    named = [(n, p) for n, p in named if p.requires_grad]
    if not named:
        raise ValueError("no trainable parameters: model.freeze froze everything")
    peak = cfg.warmup_factor
    buckets: dict[str, list[torch.nn.Parameter]] = {"": []}
    buckets.update({k: [] for k in cfg.groups})
    by_length = sorted(cfg.groups, key=len, reverse=True)
    for name, p in named:
        hit = next((k for k in by_length if name == k or name.startswith(k + ".")), "")
        buckets[hit].append(p)
    empty = [k for k in cfg.groups if not buckets[k]]
    if empty:
        tops = sorted({n.rsplit(".", 2)[0] for n, _ in named})[:20]
        raise ValueError(
            f"{where}.groups: {empty} match no trainable parameter; parameter names look like "
            f"{tops}"
        )
    groups = []
    for key, params in buckets.items():
        if not params:
            continue
        g = cfg.groups.get(key)
        lr = g.lr if g is not None and g.lr is not None else cfg.lr
        wd = g.weight_decay if g is not None and g.weight_decay is not None else cfg.weight_decay
        groups.append({"params": params, "lr": lr * peak, "weight_decay": wd})
    return groups


def build_optimizer(
    cfg: OptimizerSettings,
    params: Iterable[torch.nn.Parameter] | Iterable[Named],
    capturable: bool = False,
) -> Optimizer:
    """RAdam, Adam or SGD over ``params`` (or named parameters, split by ``cfg.groups``); the
    initial lr is the peak ``lr * warmup_factor`` (the scheduler scales it down in warm-up).

    ``capturable`` (CUDA float16 AMP with ``train.grad_scaler: sync_free``): Adam and RAdam keep
    their step counters on the device, so that :class:`~segssl.engine.amp.SyncFreeGradScaler`
    can undo an overflowed step without reading anything back (SGD has no counters)."""
    items = list(params)
    named = [x if isinstance(x, tuple) else (f"param{i}", x) for i, x in enumerate(items)]
    if cfg.groups and len(named) and not isinstance(items[0], tuple):
        raise ValueError("optim.groups need named parameters")
    groups = param_groups(cfg, named)
    kw = {"lr": groups[0]["lr"], "weight_decay": cfg.weight_decay}
    if cfg.name == "radam":
        return RAdam(groups, betas=cfg.betas, capturable=capturable, **kw)
    if cfg.name == "adam":
        return Adam(groups, betas=cfg.betas, capturable=capturable, **kw)
    return SGD(groups, momentum=cfg.momentum, **kw)


def build_scheduler(cfg: OptimizerSettings, optimizer: Optimizer, epochs: int) -> LRScheduler:
    """Warm-up then cosine or constant, stepped once per epoch (see module docstring)."""
    warm = min(cfg.warmup_epochs, epochs)
    after: LRScheduler
    if cfg.schedule == "constant":
        after = ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        after = CosineAnnealingLR(optimizer, T_max=max(epochs - warm, 1), eta_min=0.0)
    if warm == 0:
        return after
    linear = LinearLR(optimizer, start_factor=1.0 / cfg.warmup_factor, total_iters=warm)
    return SequentialLR(optimizer, [linear, after], milestones=[warm])


def lr_at(cfg: OptimizerSettings, epoch: int, epochs: int) -> float:
    """Closed form of the schedule: the lr used during 0-based ``epoch``."""
    warm = min(cfg.warmup_epochs, epochs)
    peak = cfg.lr * cfg.warmup_factor
    if epoch < warm:
        return cfg.lr + (peak - cfg.lr) * epoch / warm
    if cfg.schedule == "constant":
        return peak
    t = epoch - warm
    return peak * (1.0 + math.cos(math.pi * t / max(epochs - warm, 1))) / 2.0
