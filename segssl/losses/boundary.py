"""Boundary-aware alignment loss L_CC of the BIM paper (eq. 9).

Regions of high cluster entropy (the boundaries between clusters) are pulled towards the image
edges by maximising their local normalised cross-correlation (NCC)::

    phi = edge_map(image)            (Sobel magnitude, or forward differences as in the code)
    psi = entropy_map(probs)         (pixel-wise entropy of the cluster probabilities)
    cc  = local_ncc(phi, psi, window)  = cross^2 / (var_phi * var_psi)   per pixel
    L_CC = -mean(cc)                 in [-1, 0]

Both maps are min-max normalised per slice; the edge map is then raised to ``power`` (0.75 in the
authors' ACDC code). Window statistics are box sums (a zero-padded box convolution, computed
separably by shifted adds), the registration-style NCC the paper cites. Everything runs in float32
with autocast off.

Several cluster heads can be scored at once: ``cc_loss`` accepts ``(B, n_heads, K, H, W)``
probabilities and returns one loss per head; the edge map and its window statistics are then
computed once and correlated with every head's entropy map in one batched call.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from segssl.losses._checks import check_clusters, check_ndim, check_positive

__all__ = [
    "box_sum",
    "cc_loss",
    "edge_map",
    "entropy_cc_loss",
    "entropy_map",
    "local_ncc",
    "minmax_normalise",
]

EdgeOperator = Literal["sobel", "diff"]
_NORM_EPS = 1e-6
_NCC_EPS = 1e-5


def minmax_normalise(x: Tensor, eps: float = _NORM_EPS) -> Tensor:
    """Min-max normalise each slice of a ``(B, C, H, W)`` map to [0, 1] (a flat slice -> 0)."""
    dims = tuple(range(1, x.ndim))
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    return (x - lo) / (hi - lo + eps)


def edge_map(image: Tensor, edge: EdgeOperator = "sobel", power: float = 0.75) -> Tensor:
    """Edge response of an image batch, min-max normalised per slice, raised to ``power``.

    * ``"sobel"``: gradient magnitude ``sqrt(gx^2 + gy^2)`` of the 3x3 Sobel filters (replicate
      padding), as the paper states;
    * ``"diff"``: ``|I(x+1, y) - I(x, y)| + |I(x, y+1) - I(x, y)|`` (forward differences, zero at
      the last row/column), as in the authors' code.

    Multi-channel images use the mean edge response over channels.

    Args:
        image: ``(B, C, H, W)`` float images.
        edge: ``"sobel"`` or ``"diff"``.
        power: exponent > 0 applied after normalisation (1 keeps the normalised map).

    Returns:
        ``(B, 1, H, W)`` float32 map in [0, 1].

    Raises:
        ValueError: on a non-4D image, an unknown operator or ``power <= 0``.
    """
    check_ndim(image, "image", (4,), "(B, C, H, W) images")
    check_positive(power, "power")
    x = image.float()
    if edge == "sobel":
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
        kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
        c = x.shape[1]
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        grads = F.conv2d(padded.reshape(-1, 1, *padded.shape[2:]), kernels)  # (B*C, 2, H, W)
        mag = torch.sqrt((grads**2).sum(1) + 1e-12).reshape(x.shape[0], c, *x.shape[2:])
    elif edge == "diff":
        dx = torch.zeros_like(x)
        dy = torch.zeros_like(x)
        dx[..., :, :-1] = (x[..., :, 1:] - x[..., :, :-1]).abs()
        dy[..., :-1, :] = (x[..., 1:, :] - x[..., :-1, :]).abs()
        mag = dx + dy
    else:
        raise ValueError(f"edge must be 'sobel' or 'diff', got {edge!r}")
    mag = mag.mean(1, keepdim=True)
    return minmax_normalise(mag).clamp_min(0.0) ** power


class _PixelEntropy(torch.autograd.Function):
    """``-sum_k p_k log max(p_k, 1e-10)`` over ``dim`` (kept), with a one-pass backward.

    The gradient ``-(log max(p, 1e-10) + 1)`` is formed from the logarithm saved in the forward
    pass (autograd of the elementwise formula would redo clamp, log and two products). Below the
    floor it differs from autograd of the clamped formula by the ``+1`` term only, which the
    softmax backward then multiplies by ``p < 1e-10``.
    """

    @staticmethod
    def forward(ctx, p: Tensor, dim: int) -> Tensor:
        log_p = p.clamp_min(1e-10).log_()
        ctx.save_for_backward(log_p)
        return -torch.linalg.vecdot(p, log_p, dim=dim).unsqueeze(dim)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (log_p,) = ctx.saved_tensors
        return torch.addcmul(-grad, -grad, log_p), None


def entropy_map(probs: Tensor, normalise: bool = True) -> Tensor:
    """Pixel-wise entropy ``-sum_k p_k log p_k`` of cluster probabilities.

    Args:
        probs: ``(B, K, H, W)`` probabilities (softmax over K); exact zeros are allowed. Or
            ``(B, n_heads, K, H, W)``: every head at once.
        normalise: min-max normalise each slice (each image and head) to [0, 1] (as L_CC uses
            it).

    Returns:
        ``(B, 1, H, W)`` float32 map (``(B, n_heads, H, W)`` for 5D input), in [0, 1] if
        ``normalise`` else in [0, log K].
    """
    check_ndim(probs, "probs", (4, 5), "(B, K, H, W) or (B, n_heads, K, H, W) probabilities")
    kdim = probs.ndim - 3
    check_clusters(probs, "probs", dim=kdim)
    ent = _PixelEntropy.apply(probs.float(), kdim)
    if probs.ndim == 5:
        ent = ent.squeeze(2)  # (B, n_heads, H, W): one slice per image and head
        if normalise:
            flat = ent.reshape(-1, 1, *ent.shape[-2:])
            ent = minmax_normalise(flat).view(ent.shape)
        return ent
    return minmax_normalise(ent) if normalise else ent


def _check_window(window: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 3 or window % 2 == 0:
        raise ValueError(f"window must be an odd int >= 3, got {window!r}")


def _box_1d(x: Tensor, window: int, dim: int) -> Tensor:
    """Zero-padded sums of ``window`` neighbours along ``dim`` (-1 or -2): shifted adds."""
    r, length = window // 2, x.shape[dim]
    padded = F.pad(x, (r, r) if dim == -1 else (0, 0, r, r))
    out = padded.narrow(dim, 0, length).clone()
    for k in range(1, window):
        out += padded.narrow(dim, k, length)
    return out


class _BoxSum(torch.autograd.Function):
    """Zero-padded ``window x window`` box sums of every channel (same size as the input).

    Computed separably as ``2 * (window - 1)`` shifted whole-tensor adds: on CPU several times
    faster than ``avg_pool2d`` (whose stride-1 kernel loops over the window per output pixel)
    and than a ones-kernel ``conv2d``. The box filter is symmetric with zero padding, so it is
    its own adjoint: the backward is the box sum of the incoming gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor, window: int) -> Tensor:
        ctx.window = window
        return _box_1d(_box_1d(x, window, -1), window, -2)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        w = ctx.window
        return _box_1d(_box_1d(grad, w, -1), w, -2), None


def box_sum(x: Tensor, window: int) -> Tensor:
    """Sums over the zero-padded ``window x window`` neighbourhood of every pixel of a
    ``(B, C, H, W)`` map (``window`` odd); equals ``window**2 * avg_pool2d(x, window, stride=1,
    padding=window // 2, count_include_pad=True)``."""
    return _BoxSum.apply(x, window)


def local_ncc(a: Tensor, b: Tensor, window: int = 5) -> Tensor:
    """Squared local normalised cross-correlation of two single-channel maps (BIM eq. 9).

    For every pixel ``i`` with window ``N(i)`` (``window x window``, zero padding at the border)::

        cc(i) = (sum (a - mean_a)(b - mean_b))^2 / (sum (a - mean_a)^2 * sum (b - mean_b)^2)

    computed from box sums (a zero-padded box filter, :func:`box_sum`). A window with no
    variance in either map gives 0.

    ``b`` may have ``C > 1`` channels: each channel is then correlated with the single channel of
    ``a`` (whose window statistics are computed once), exactly as ``C`` separate calls would.

    Args:
        a: ``(B, 1, H, W)`` map.
        b: ``(B, 1, H, W)`` map, or ``(B, C, H, W)`` maps each compared with ``a``.
        window: odd window side >= 3.

    Returns:
        ``(B, C, H, W)`` float32 map in [0, 1] (``C = 1`` for single-channel ``b``).

    Raises:
        ValueError: if ``a`` is not single-channel 4D or ``b`` differs from it in batch or
            spatial size, or on a bad window.
    """
    check_ndim(a, "a", (4,), "(B, 1, H, W)")
    if (
        a.shape[1] != 1
        or b.ndim != 4
        or b.shape[0] != a.shape[0]
        or b.shape[2:] != a.shape[2:]
        or b.shape[1] < 1
    ):
        raise ValueError(
            f"a must be (B, 1, H, W) and b (B, 1, H, W) or (B, C, H, W) with the same B, H, W, "
            f"got a {tuple(a.shape)} and b {tuple(b.shape)}"
        )
    _check_window(window)
    with torch.autocast(device_type=a.device.type, enabled=False):
        a = a.float()
        b = b.float()
        c = b.shape[1]
        n = float(window * window)
        stacked = torch.cat([a, a * a, b, b * b, a * b], dim=1)  # (B, 2 + 3C, H, W)
        sums = box_sum(stacked, window)
        s_a, s_aa = sums[:, :1], sums[:, 1:2]  # broadcast over the C channels of b
        s_b, s_bb, s_ab = sums[:, 2:].split(c, dim=1)
        mean_a, mean_b = s_a / n, s_b / n
        cross = s_ab - mean_b * s_a - mean_a * s_b + mean_a * mean_b * n
        var_a = (s_aa - 2 * mean_a * s_a + mean_a * mean_a * n).clamp_min(0.0)
        var_b = (s_bb - 2 * mean_b * s_b + mean_b * mean_b * n).clamp_min(0.0)
        return cross * cross / (var_a * var_b + _NCC_EPS)


def cc_loss(
    image: Tensor,
    probs: Tensor,
    window: int = 5,
    edge: EdgeOperator = "sobel",
    power: float = 0.75,
) -> Tensor:
    """Boundary-aware cross-correlation loss L_CC (BIM eq. 9): ``-mean(local_ncc(phi, psi))``.

    Args:
        image: ``(B, C, H, W)`` input images (the ones the cluster probabilities were computed
            from), any intensity range.
        probs: ``(B, K, H, W)`` cluster probabilities (softmax over K) at the image resolution,
            or ``(B, n_heads, K, H, W)`` for several heads (the edge map is computed once).
        window: odd side of the local window (5 in the paper's code).
        edge: ``"sobel"`` (the paper, default) or ``"diff"`` (the authors' code).
        power: exponent of the normalised edge map (0.75 in the authors' ACDC code).

    Returns:
        Scalar float32 tensor in [-1, 0]; -1 when the entropy map is locally perfectly
        correlated with the edge map everywhere. ``(n_heads,)`` (each head's loss, equal to
        calling this function head by head) for 5D ``probs``.

    Raises:
        ValueError: on mismatched batch or spatial sizes (both shapes named), K < 2, a bad
            window, operator or power.
    """
    check_ndim(image, "image", (4,), "(B, C, H, W) images")
    check_ndim(probs, "probs", (4, 5), "(B, K, H, W) or (B, n_heads, K, H, W) probabilities")
    _check_image_and_maps(image, probs, "probs")
    check_clusters(probs, "probs", dim=probs.ndim - 3)
    _check_window(window)
    with torch.autocast(device_type=probs.device.type, enabled=False):
        ent = entropy_map(probs, normalise=False)  # (B, 1, H, W), or (B, n_heads, H, W)
        out = entropy_cc_loss(image, ent, window, edge, power)
        return out if probs.ndim == 5 else out[0]


def entropy_cc_loss(
    image: Tensor,
    entropy: Tensor,
    window: int = 5,
    edge: EdgeOperator = "sobel",
    power: float = 0.75,
) -> Tensor:
    """L_CC of every entropy map: :func:`cc_loss` when the pixel entropies are already computed
    (e.g. with the softmax, :meth:`~segssl.models.heads.ClusterHeads.probs_and_entropy`).

    Args:
        image: ``(B, C, H, W)`` input images.
        entropy: ``(B, n, H, W)`` raw (not normalised) pixel entropies of ``n`` heads (``n = 1``
            for one map); each map is min-max normalised per image here, as in :func:`cc_loss`.
        window: odd side of the local window.
        edge: ``"sobel"`` or ``"diff"``.
        power: exponent of the normalised edge map.

    Returns:
        ``(n,)`` float32 losses in [-1, 0], one per entropy channel.

    Raises:
        ValueError: on mismatched batch or spatial sizes, a non-4D input, a bad window,
            operator or power.
    """
    check_ndim(image, "image", (4,), "(B, C, H, W) images")
    check_ndim(entropy, "entropy", (4,), "(B, n, H, W) entropy maps")
    _check_image_and_maps(image, entropy, "entropy")
    _check_window(window)
    with torch.autocast(device_type=entropy.device.type, enabled=False):
        phi = edge_map(image, edge, power)  # (B, 1, H, W)
        flat = entropy.float().reshape(-1, 1, *entropy.shape[-2:])
        psi = minmax_normalise(flat).view(entropy.shape)  # per image and head
        return -local_ncc(phi, psi, window).mean(dim=(0, 2, 3))


def _check_image_and_maps(image: Tensor, maps: Tensor, name: str) -> None:
    if image.shape[0] != maps.shape[0] or image.shape[2:] != maps.shape[-2:]:
        raise ValueError(
            f"image and {name} must share batch and spatial size, got image "
            f"{tuple(image.shape)} and {name} {tuple(maps.shape)}"
        )
