"""Supervised segmentation losses and entropy minimisation.

* :func:`cross_entropy` - pixel-wise cross-entropy of logits against integer labels (the
  fine-tuning loss of every paper).
* :func:`dice_loss` - soft Dice loss on softmax probabilities, averaged over classes.
* :func:`entropy_loss` - EntMin (BIM paper App. E): mean pixel-wise Shannon entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from segssl.losses._checks import check_clusters, check_ndim, check_positive

__all__ = ["cross_entropy", "dice_loss", "entropy_loss"]


def _check_logits_target(logits: Tensor, target: Tensor) -> int:
    check_ndim(logits, "logits", (4,), "(B, C, H, W) logits")
    c = check_clusters(logits, "logits")
    if (
        target.ndim != 3
        or target.shape[0] != logits.shape[0]
        or target.shape[1:] != logits.shape[2:]
    ):
        raise ValueError(
            f"target must be (B, H, W) matching logits (B, C, H, W), got logits "
            f"{tuple(logits.shape)} and target {tuple(target.shape)}"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    return c


def _check_label_range(target: Tensor, c: int, ignore_index: int | None = None) -> None:
    valid = target if ignore_index is None else target[target != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= c):
        raise ValueError(
            f"target labels must be in [0, {c - 1}] for C={c} classes, got values in "
            f"[{int(valid.min())}, {int(valid.max())}]"
        )


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    check_range: bool = True,
) -> Tensor:
    """Mean pixel-wise cross-entropy.

    Args:
        logits: ``(B, C, H, W)`` unnormalised scores.
        target: ``(B, H, W)`` integer labels in ``[0, C-1]`` (``ignore_index`` pixels skipped).
        weight: optional ``(C,)`` class weights.
        ignore_index: label value that does not contribute.
        check_range: check that the labels lie in ``[0, C-1]``. The check reads the labels'
            range back to the host (on a GPU a synchronisation), so a training step whose
            labels come from the data layer (mapped through its class table, in range by
            construction) passes False.

    Returns:
        Scalar tensor (nats), >= 0.

    Raises:
        ValueError: on a shape mismatch (both shapes named), C < 2, float labels, or labels
            outside ``[0, C-1]``.
    """
    c = _check_logits_target(logits, target)
    if check_range:
        _check_label_range(target, c, ignore_index)
    return F.cross_entropy(logits, target.long(), weight=weight, ignore_index=ignore_index)


def dice_loss(
    logits: Tensor,
    target: Tensor,
    eps: float = 1e-5,
    include_background: bool = True,
    check_range: bool = True,
) -> Tensor:
    """Soft Dice loss ``1 - mean_c (2 |P_c . G_c| + eps) / (|P_c| + |G_c| + eps)``.

    Sums run over the whole batch and all pixels (a batch-level Dice per class), then the
    per-class scores are averaged.

    Args:
        logits: ``(B, C, H, W)`` unnormalised scores (softmax over C is applied here).
        target: ``(B, H, W)`` integer labels in ``[0, C-1]``.
        eps: smoothing > 0; a class absent from the batch scores 1 when predicted absent and
            about 0 (gradient about ``eps / |P_c|^2``: none to speak of) when predicted present,
            so a batch without foreground adds about a constant to the loss, never NaN.
        include_background: average over class 0 too (default) or only classes 1..C-1.
        check_range: check the label range (a host read; see :func:`cross_entropy`).

    Returns:
        Scalar tensor in ``[0, 1]``.

    Raises:
        ValueError: on shape mismatch, C < 2, bad labels or ``eps <= 0``.
    """
    c = _check_logits_target(logits, target)
    check_positive(eps, "eps")
    if check_range:
        _check_label_range(target, c)
    probs = logits.float().softmax(1)
    onehot = F.one_hot(target.long(), c).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    score = (2 * inter + eps) / (denom + eps)
    if not include_background:
        score = score[1:]
    return 1.0 - score.mean()


def entropy_loss(probs: Tensor) -> Tensor:
    """Entropy minimisation: mean over pixels of ``-sum_k p_k log p_k`` (BIM App. E, EntMin).

    Args:
        probs: ``(B, K, H, W)`` or ``(B, K)`` probabilities (softmax over K); exact zeros are
            allowed (0 log 0 = 0, finite gradient).

    Returns:
        Scalar tensor in ``[0, log K]``.

    Raises:
        ValueError: on a non-2D/4D input or K < 2.
    """
    check_ndim(probs, "probs", (2, 4), "(B, K) or (B, K, H, W) probabilities")
    check_clusters(probs, "probs")
    p = probs.float()
    return -(p * torch.log(p.clamp_min(1e-10))).sum(1).mean()
