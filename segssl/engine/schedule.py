"""Optimiser and learning-rate schedule of the papers (BIM Appendix F).

The learning rate starts at ``lr``, rises linearly to ``lr * warmup_factor`` over
``warmup_epochs`` epochs, then decays along a cosine to ~0 over the remaining epochs. The
scheduler is stepped once per epoch (an epoch is ``train.iters_per_epoch`` iterations) and is
built from ``torch.optim.lr_scheduler`` pieces (``LinearLR`` then ``CosineAnnealingLR`` chained
by ``SequentialLR``), so its state is a plain dict that checkpoints with ``weights_only=True``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim import SGD, Adam, Optimizer, RAdam
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from segssl.config import OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_at"]


def build_optimizer(cfg: OptimConfig, params: Iterable[torch.nn.Parameter]) -> Optimizer:
    """RAdam, Adam or SGD over ``params``; the initial lr is the peak ``lr * warmup_factor``
    (the scheduler scales it down during warm-up)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: model.freeze froze everything")
    peak = cfg.lr * cfg.warmup_factor
    if cfg.name == "radam":
        return RAdam(params, lr=peak, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return Adam(params, lr=peak, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return SGD(params, lr=peak, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: OptimConfig, optimizer: Optimizer, epochs: int) -> LRScheduler:
    """Warm-up then cosine, stepped once per epoch (see module docstring)."""
    warm = min(cfg.warmup_epochs, epochs)
    cosine = CosineAnnealingLR(optimizer, T_max=max(epochs - warm, 1), eta_min=0.0)
    if warm == 0:
        return cosine
    linear = LinearLR(optimizer, start_factor=1.0 / cfg.warmup_factor, total_iters=warm)
    return SequentialLR(optimizer, [linear, cosine], milestones=[warm])


def lr_at(cfg: OptimConfig, epoch: int, epochs: int) -> float:
    """Closed form of the schedule: the lr used during 0-based ``epoch``."""
    warm = min(cfg.warmup_epochs, epochs)
    peak = cfg.lr * cfg.warmup_factor
    if epoch < warm:
        return cfg.lr + (peak - cfg.lr) * epoch / warm
    t = epoch - warm
    return peak * (1.0 + math.cos(math.pi * t / max(epochs - warm, 1))) / 2.0
