"""Losses of the semi-supervised baselines (BIM paper, Appendix E; GMI paper, Sec. 4.2).

* :func:`mse_consistency` - ``L_MT``: mean squared difference between student and teacher
  probabilities (Mean Teacher, ICT), optionally over a pixel mask (UA-MT).
* :func:`predictive_entropy` / :func:`uncertainty_threshold` / :func:`uncertainty_mask` - UA-MT
  (Yu et al. 2019): pixel-wise entropy of the mean of the teacher's Monte-Carlo dropout passes;
  pixels whose entropy is below a threshold ramped from ``3/4 log K`` to ``log K`` are kept.
* :func:`soft_cross_entropy` - cross-entropy against soft targets (mixup of one-hot labels).
* :func:`discriminator_loss` / :func:`adversarial_loss` - the min-max game of adversarial
  training (Zhang et al. 2017): binary cross-entropy on the discriminator's logits.

Computed in float32 with autocast disabled; logarithms are natural.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from segssl.losses._checks import check_clusters, check_ndim, check_unit_interval, same_shape

__all__ = [
    "adversarial_loss",
    "discriminator_loss",
    "mse_consistency",
    "predictive_entropy",
    "soft_cross_entropy",
    "uncertainty_mask",
    "uncertainty_threshold",
]


def _off(x: Tensor) -> torch.autocast:
    return torch.autocast(device_type=x.device.type, enabled=False)


def _check_mask(mask: Tensor, probs: Tensor) -> None:
    want = (probs.shape[0], 1, *probs.shape[2:])
    if tuple(mask.shape) != want:
        raise ValueError(
            f"mask must have shape {want} for probabilities {tuple(probs.shape)}, "
            f"got {tuple(mask.shape)}"
        )


def mse_consistency(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """``L_MT`` (BIM App. E): mean over batch, classes and pixels of ``(p^s - p^t)^2``.

    Args:
        student: ``(B, C, H, W)`` student probabilities (softmax over C).
        teacher: same shape, the teacher's (a target: detach it before calling).
        mask: optional ``(B, 1, H, W)`` 0/1 mask; the mean is then over the kept pixels only
            (0 when no pixel is kept).

    Returns:
        Scalar float32 tensor, ``>= 0``.

    Raises:
        ValueError: on shape mismatch or a mask of the wrong shape.
    """
    check_ndim(student, "student", (4,), "(B, C, H, W) probabilities")
    same_shape(student, teacher, "student", "teacher")
    with _off(student):
        sq = (student.float() - teacher.float()).pow(2)
        if mask is None:
            return sq.mean()
        _check_mask(mask, student)
        m = mask.float()
        return (sq * m).sum() / (m.sum() * student.shape[1]).clamp_min(1.0)


def predictive_entropy(probs: Tensor) -> Tensor:
    """Pixel-wise entropy (nats) of ``(B, C, H, W)`` probabilities, ``(B, 1, H, W)``."""
    check_ndim(probs, "probs", (4,), "(B, C, H, W) probabilities")
    with _off(probs):
        p = probs.float()
        return -(p * torch.log(p.clamp_min(1e-10))).sum(1, keepdim=True)


def uncertainty_threshold(num_classes: int, ramp: float, start: float = 0.75) -> float:
    """UA-MT's threshold: ``(start + (1 - start) * ramp) * log K``.

    Args:
        num_classes: K, the number of output classes (>= 2).
        ramp: progress of the linear ramp in [0, 1] (0 at the start of training).
        start: fraction of ``log K`` at ramp 0 (3/4 in the BIM paper).

    Returns:
        The threshold in nats, from ``start * log K`` to ``log K``.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    check_unit_interval(ramp, "ramp")
    check_unit_interval(start, "start")
    return (start + (1.0 - start) * float(ramp)) * math.log(num_classes)


def uncertainty_mask(entropy: Tensor, threshold: float) -> Tensor:
    """``(B, 1, H, W)`` float mask: 1 where ``entropy < threshold`` (certain pixels)."""
    check_ndim(entropy, "entropy", (4,), "(B, 1, H, W) entropies")
    return (entropy < threshold).to(torch.float32)


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean pixel-wise cross-entropy of ``(B, C, H, W)`` logits against soft targets.

    Args:
        logits: ``(B, C, H, W)`` scores.
        target: same shape, target distributions over C (e.g. mixed one-hot labels).

    Returns:
        Scalar float32 tensor (nats).
    """
    check_ndim(logits, "logits", (4,), "(B, C, H, W) logits")
    check_clusters(logits, "logits")
    same_shape(logits, target, "logits", "target")
    with _off(logits):
        return -(target.float() * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's objective: labeled predictions are "real" (1), unlabeled "fake" (0).

    Args:
        real_logits: ``(N, ...)`` discriminator scores of labeled images' predictions.
        fake_logits: ``(M, ...)`` scores of unlabeled images' predictions (detached from the
            segmenter, so that only the discriminator learns from this loss).

    Returns:
        Scalar: the mean of the two binary cross-entropies.
    """
    with _off(real_logits):
        real = F.binary_cross_entropy_with_logits(
            real_logits.float(), torch.ones_like(real_logits, dtype=torch.float32)
        )
        fake = F.binary_cross_entropy_with_logits(
            fake_logits.float(), torch.zeros_like(fake_logits, dtype=torch.float32)
        )
        return (real + fake) / 2


def adversarial_loss(fake_logits: Tensor) -> Tensor:
    """The segmenter's objective: make unlabeled predictions look "real" to the discriminator."""
    with _off(fake_logits):
        return F.binary_cross_entropy_with_logits(
            fake_logits.float(), torch.ones_like(fake_logits, dtype=torch.float32)
        )
