"""Losses of the global/local MI method (Peng, Pedersoli, Desrosiers; the GMI paper).

* :func:`global_mi_loss` - eqs. 7-9: ``-I(P)`` of the K x K joint of two views' cluster
  probabilities of the pooled encoder output, averaged over the projector heads.
* :func:`segssl.losses.mi.local_mi_loss` - eqs. 10-12 (all displacements at once); it lives with
  the other MI losses and accepts several heads as ``(B, n_heads, K, H, W)``.
* :func:`consistency_loss` - eq. 13: squared L2 distance between ``f(T(x))`` and ``T(f(x))``.

All are computed in float32 with autocast disabled; logarithms are natural.
"""

from __future__ import annotations

import torch
from torch import Tensor

from segssl.losses._checks import check_clusters, check_ndim, same_shape
from segssl.losses.mi import batched_mutual_information

__all__ = ["consistency_loss", "global_joints", "global_mi_loss"]


def global_joints(p1: Tensor, p2: Tensor) -> Tensor:
    """Per-head joint of eq. 8: mean over the batch of ``p1[b] p2[b]^T``, symmetrised.

    Args:
        p1: ``(B, K)`` or ``(B, n_heads, K)`` cluster probabilities of ``g(phi_enc(x))``
            (softmax over K).
        p2: same shape, probabilities of ``g(phi_enc(T(x)))``.

    Returns:
        ``(n_heads, K, K)`` float32 joints (``n_heads = 1`` for 2D input), each non-negative,
        symmetric and summing to 1.

    Raises:
        ValueError: on shape mismatch, input that is not 2D/3D, or K < 2.
    """
    check_ndim(p1, "p1", (2, 3), "(B, K) or (B, n_heads, K) probabilities")
    same_shape(p1, p2, "p1", "p2")
    check_clusters(p1, "p1", dim=p1.ndim - 1)
    with torch.autocast(device_type=p1.device.type, enabled=False):
        a = p1.float() if p1.ndim == 3 else p1.float().unsqueeze(1)
        b = p2.float() if p2.ndim == 3 else p2.float().unsqueeze(1)
        joints = torch.einsum("bnj,bnk->njk", a, b)
        joints = (joints + joints.transpose(-2, -1)) / 2
        return joints / joints.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-10)


def global_mi_loss(p1: Tensor, p2: Tensor) -> Tensor:
    """Global MI loss (GMI eq. 9): the mean over heads of ``-I(P)``.

    Args:
        p1: ``(B, K)`` or ``(B, n_heads, K)`` probabilities of the original images' pooled
            encoder embeddings through the linear projector(s) ``g``.
        p2: same shape, of the transformed images ``T(x)``.

    Returns:
        Scalar float32 tensor in ``[-log K, 0]``.

    Raises:
        ValueError: see :func:`global_joints`.
    """
    with torch.autocast(device_type=p1.device.type, enabled=False):
        return -batched_mutual_information(global_joints(p1, p2)).mean()


def consistency_loss(pred_t: Tensor, t_pred: Tensor, mask: Tensor | None = None) -> Tensor:
    """Transformation consistency (GMI eq. 13; the Pi-model of Bortsova et al.).

    ``mean over (b, i, j) of || f_ij(T(x)) - T(f(x))_ij ||_2^2``: the squared L2 norm over the
    class axis, averaged over the batch and the pixels (the pixels of ``mask`` only, when given:
    e.g. where a warped map has content).

    Args:
        pred_t: ``(B, C, H, W)`` probabilities ``f(T(x))`` (softmax over C).
        t_pred: same shape, ``T(f(x))`` (the prediction of ``x`` put through the same T).
        mask: optional ``(B, 1, H, W)`` weights in [0, 1] of the pixels that count.

    Returns:
        Scalar float32 tensor, ``>= 0`` (at most 2 for probabilities).

    Raises:
        ValueError: on shape mismatch or a mask that is not ``(B, 1, H, W)``.
    """
    check_ndim(pred_t, "pred_t", (4,), "(B, C, H, W) probabilities")
    same_shape(pred_t, t_pred, "pred_t", "t_pred")
    with torch.autocast(device_type=pred_t.device.type, enabled=False):
        sq = (pred_t.float() - t_pred.float()).pow(2).sum(1, keepdim=True)  # (B, 1, H, W)
        if mask is None:
            return sq.mean()
        want = (pred_t.shape[0], 1, *pred_t.shape[2:])
        if tuple(mask.shape) != want:
            raise ValueError(
                f"mask must have shape {want} for predictions {tuple(pred_t.shape)}, "
                f"got {tuple(mask.shape)}"
            )
        m = mask.float()
        return (sq * m).sum() / m.sum().clamp_min(1.0)
