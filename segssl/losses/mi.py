"""Mutual-information losses on categorical (cluster) distributions.

* :func:`joint_distribution` - the K x K joint of two views' cluster probabilities (BIM eq. 3,
  IIC), symmetrised.
* :func:`mi_loss` - the alpha-regularised MI loss of the BIM paper (eqs. 5-8); at ``alpha=0`` and
  ``lamda=1`` it is exactly the IIC objective ``-I(X; Y)`` (eq. 4).

Both accept several cluster heads at once as ``(B, n_heads, K, H, W)`` maps and then return one
joint / one loss per head (one batched matrix product for all heads instead of a Python loop).
* :func:`local_mi_loss` - the GMI paper's local MI (eqs. 10-12): one joint per displacement
  ``(p, q)`` in a square neighbourhood, all computed at once by a convolution of the two maps.

Everything is computed in float32 with autocast disabled (the joint is tiny; its logarithm is
not fp16-safe). Logarithms are natural. Exact zeros in the probabilities are allowed: the
logarithm is taken of ``max(P, eps)``, so values and gradients stay finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from segssl.losses._checks import (
    check_clusters,
    check_ndim,
    check_non_negative,
    check_unit_interval,
    same_shape,
)

__all__ = [
    "EPS",
    "batched_mutual_information",
    "joint_distribution",
    "local_mi_joints",
    "local_mi_loss",
    "mi_loss",
    "mutual_information",
]

EPS = 1e-10
"""Floor applied inside logarithms so that exact zeros give finite values and gradients."""


def _autocast_off(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


def _check_pair(p1: Tensor, p2: Tensor) -> int:
    check_ndim(p1, "p1", (2, 4, 5), "(B, K), (B, K, H, W) or (B, n_heads, K, H, W) probabilities")
    same_shape(p1, p2, "p1", "p2")
    return check_clusters(p1, "p1", dim=2 if p1.ndim == 5 else 1)


class _PixelJoint(torch.autograd.Function):
    """``sum_n a[n] @ b[n]^T`` for ``(N, K, L)`` inputs (the batch of per-image joints).

    Autograd of ``bmm(a, b.transpose(1, 2))`` returns the gradient of ``b`` as a transposed
    ``(N, L, K)`` product that is then copied back to ``(N, K, L)``; here both gradients are
    computed directly in the ``(N, K, L)`` layout: ``da[n] = g @ b[n]``, ``db[n] = g^T @ a[n]``.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, groups: int) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.groups = groups
        out = torch.bmm(a, b.transpose(1, 2))  # (N, K, K), N = batch * groups
        return out.view(-1, groups, *out.shape[1:]).sum(0)  # (groups, K, K)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        a, b = ctx.saved_tensors
        n = a.shape[0] // ctx.groups
        g = grad.unsqueeze(0).expand(n, *grad.shape).reshape(a.shape[0], *grad.shape[1:])
        da = torch.bmm(g, b) if ctx.needs_input_grad[0] else None
        db = torch.bmm(g.transpose(1, 2), a) if ctx.needs_input_grad[1] else None
        return da, db, None


def _xlogx(x: Tensor) -> Tensor:
    """``x * log(x)`` with the convention ``0 log 0 = 0`` and a finite gradient at 0."""
    return x * torch.log(x.clamp_min(EPS))


def _entropy(p: Tensor, dims: int = 0) -> Tensor:
    """Entropy (nats) summed over the last ``dims`` axes (0: over all entries)."""
    terms = _xlogx(p)
    return -(terms.sum() if dims == 0 else terms.sum(dim=tuple(range(-dims, 0))))


def joint_distribution(p1: Tensor, p2: Tensor, symmetric: bool = True) -> Tensor:
    """Joint cluster distribution of two views (BIM eq. 3; IIC).

    ``P[j, k]`` is the mean over the batch (and pixels) of ``p1[:, j] * p2[:, k]``, i.e. the
    average outer product of the two views' cluster probabilities; it is renormalised to sum to
    exactly 1 and, by default, symmetrised as ``(P + P^T) / 2``.

    Args:
        p1: ``(B, K, H, W)`` or ``(B, K)`` cluster probabilities of view 1 (softmax over K,
            values in [0, 1]), or ``(B, n_heads, K, H, W)`` for several heads at once.
        p2: the same shape as ``p1``; probabilities of view 2, spatially aligned with ``p1``.
        symmetric: symmetrise the joint (the authors' code does; IIC does too).

    Returns:
        ``(K, K)`` float32 tensor, non-negative, summing to 1; ``(n_heads, K, K)`` (one such
        joint per head) for 5D inputs.

    Raises:
        ValueError: if the shapes differ, are not 2D/4D, or K < 2.
    """
    _check_pair(p1, p2)
    with _autocast_off(p1.device):
        a = p1.float()
        b = p2.float()
        # mean over batch and pixels of outer products; normalised to sum 1 below
        if a.ndim >= 4:  # one (K, HW) x (HW, K) product per image (and head), summed over B
            heads = a.shape[1] if a.ndim == 5 else 1
            k, hw = a.shape[-3], a.shape[-2] * a.shape[-1]
            joint = _PixelJoint.apply(a.reshape(-1, k, hw), b.reshape(-1, k, hw), heads)
            if a.ndim == 4:
                joint = joint[0]
        else:
            joint = a.t() @ b
        if symmetric:
            joint = (joint + joint.transpose(-2, -1)) / 2
        total = joint.sum(dim=(-2, -1), keepdim=True)
        return joint / total.clamp_min(EPS)


def mutual_information(joint: Tensor) -> Tensor:
    """Mutual information (nats) of a ``(K, K)`` joint distribution (BIM eqs. 1-2, GMI eq. 9).

    ``I = H(row marginal) + H(column marginal) - H(joint)``.

    Args:
        joint: ``(K, K)`` non-negative matrix summing to 1.

    Returns:
        Scalar tensor, ``0 <= I <= log K``.
    """
    if joint.ndim != 2 or joint.shape[0] != joint.shape[1]:
        raise ValueError(f"joint must be a square (K, K) matrix, got shape {tuple(joint.shape)}")
    return _entropy(joint.sum(1)) + _entropy(joint.sum(0)) - _entropy(joint)


def mi_loss(
    p1: Tensor,
    p2: Tensor,
    alpha: float = 0.0,
    lamda: float = 1.0,
) -> Tensor:
    """Alpha-regularised MI loss of the BIM paper (eqs. 5-8); IIC at ``alpha=0``.

    With ``P`` the symmetrised joint of :func:`joint_distribution` and ``I/K`` the uniform
    diagonal pseudo-joint::

        target = alpha * I/K + (1 - alpha) * P          (gradient flows through P)
        loss   = -sum(target * log P) - lamda * (H(P.sum(1)) + H(P.sum(0)))

    The first term is ``H'_alpha(P)`` of eq. 6, the second the marginal entropies of eq. 8. At
    ``alpha=0, lamda=1`` the loss equals ``-I(X; Y)`` (IIC); at ``alpha=1`` the first term is the
    cross-entropy between ``I/K`` and ``P``, minimised by the uniform diagonal joint.

    To draw the joint (Fig. 1 of the paper) call :func:`joint_distribution` on the same inputs;
    this function always returns the scalar loss only.

    Args:
        p1: ``(B, K, H, W)`` or ``(B, K)`` probabilities of view 1, ``g(s(T(x)))``; or
            ``(B, n_heads, K, H, W)`` for several cluster heads at once.
        p2: same shape, probabilities of view 2, ``g(T(s(x)))`` (aligned with ``p1``).
        alpha: mixing coefficient in [0, 1] (0.5 in the BIM paper).
        lamda: weight of the marginal entropies, >= 0 (1 in the paper and code).

    Returns:
        Scalar float32 tensor (nats); ``(n_heads,)`` (the loss of each head, equal to calling
        this function head by head) for 5D inputs. At ``alpha=0, lamda=1`` it lies in
        ``[-log K, 0]``.

    Raises:
        ValueError: on shape mismatch, K < 2, ``alpha`` outside [0, 1] or negative ``lamda``.
    """
    k = _check_pair(p1, p2)
    check_unit_interval(alpha, "alpha")
    check_non_negative(lamda, "lamda")
    with _autocast_off(p1.device):
        joint = joint_distribution(p1, p2)
        log_joint = torch.log(joint.clamp_min(EPS))
        eye = torch.eye(k, device=joint.device, dtype=joint.dtype) / k
        target = alpha * eye + (1.0 - alpha) * joint
        cross = -(target * log_joint).sum(dim=(-2, -1))
        marginals = _entropy(joint.sum(-1), dims=1) + _entropy(joint.sum(-2), dims=1)
        return cross - lamda * marginals


def local_mi_joints(p1: Tensor, p2: Tensor, padding: int = 1) -> Tensor:
    """Joints of every displacement of a square window (GMI paper, eq. 11), all at once.

    ``P_pq[j, k] ~ sum_{b,y,x} p1[b, j, y + p, x + q] * p2[b, k, y, x]`` for every
    ``|p|, |q| <= padding``, computed by ONE (grouped, one group per head) convolution of the two
    maps with zero padding ``padding`` (1: the 3x3 set, 3: the 7x7 set); positions shifted outside
    the map contribute nothing. Each joint is symmetrised and normalised to sum to 1.

    Args:
        p1: ``(B, K, H, W)`` or ``(B, n_heads, K, H, W)`` probabilities of ``h(psi(T(x)))``.
        p2: same shape, probabilities of ``h(T(psi(x)))``.
        padding: half-width of the displacement window; the window ``2 * padding + 1`` must fit
            the map (``<= min(H, W)``).

    Returns:
        ``(n_heads, D, K, K)`` float32 joints, ``D = (2 * padding + 1) ** 2`` displacements in
        row-major order of ``(p, q)`` (``n_heads = 1`` for 4D input).

    Raises:
        ValueError: on shape mismatch, K < 2 or a padding not smaller than the map.
    """
    check_ndim(p1, "p1", (4, 5), "(B, K, H, W) or (B, n_heads, K, H, W) probabilities")
    k = _check_pair(p1, p2)
    h, w = p1.shape[-2:]
    if (
        isinstance(padding, bool)
        or not isinstance(padding, int)
        or not 0 <= 2 * padding < min(h, w)
    ):
        raise ValueError(
            f"padding must be an int with 0 <= 2 * padding + 1 <= min(H, W)={min(h, w)} "
            f"(a displacement set of {2 * padding + 1}x{2 * padding + 1} does not fit a "
            f"{h}x{w} map), got {padding!r}"
        )
    with _autocast_off(p1.device):
        a = p1.float() if p1.ndim == 5 else p1.float().unsqueeze(1)  # (B, n, K, H, W)
        b = p2.float() if p2.ndim == 5 else p2.float().unsqueeze(1)
        bs, n = a.shape[:2]
        # input: K "images" with n*B channels; weight: n*K filters of B channels, n groups
        x = a.permute(2, 1, 0, 3, 4).reshape(k, n * bs, h, w)
        f = b.permute(1, 2, 0, 3, 4).reshape(n * k, bs, h, w)
        out = F.conv2d(x, f, padding=padding, groups=n)  # (K, n*K, 2p+1, 2p+1)
        joints = out.view(k, n, k, -1).permute(1, 3, 0, 2)  # (n, D, K, K)
        joints = (joints + joints.transpose(-2, -1)) / 2
        return joints / joints.sum(dim=(-2, -1), keepdim=True).clamp_min(EPS)


def batched_mutual_information(joints: Tensor) -> Tensor:
    """MI (nats) of every ``(K, K)`` joint in ``(..., K, K)``: ``H(rows) + H(cols) - H(joint)``."""
    h_rows = -_xlogx(joints.sum(-1)).sum(-1)
    h_cols = -_xlogx(joints.sum(-2)).sum(-1)
    h_joint = -_xlogx(joints).sum(dim=(-2, -1))
    return h_rows + h_cols - h_joint


def local_mi_loss(p1: Tensor, p2: Tensor, padding: int = 1) -> Tensor:
    """Local MI over a square displacement set (GMI paper, eqs. 10-12).

    The joints of all ``(2 * padding + 1)**2`` displacements (:func:`local_mi_joints`, one
    convolution) are turned into MI values; the loss is the mean of ``-I(P_pq)`` over the
    displacements and, for 5D input, over the heads (the paper averages its 5 projectors).

    Args:
        p1: ``(B, K, H, W)`` or ``(B, n_heads, K, H, W)`` probabilities of ``h(psi(T(x)))``
            (softmax over K).
        p2: same shape, probabilities of ``h(T(psi(x)))``.
        padding: half-width of the displacement window; the window ``2 * padding + 1`` must fit
            the map (``<= min(H, W)``).

    Returns:
        Scalar float32 tensor in ``[-log K, 0]``.

    Raises:
        ValueError: on shape mismatch, input that is not 4D/5D, K < 2 or an invalid ``padding``.
    """
    with _autocast_off(p1.device):
        return -batched_mutual_information(local_mi_joints(p1, p2, padding)).mean()
