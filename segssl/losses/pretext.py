"""Pretext tasks of Chaitanya et al.'s Table 2: their inputs, targets and losses (pure tensors).

* Rotation (Gidaris et al., 2018): every image in its four rotations by 0, 90, 180, 270 degrees;
  the network predicts which (a 4-way classification of the pooled encoder output).
* Inpainting (Pathak et al., 2016, context encoder): random square regions are removed (set to
  0) and the network reconstructs the image; the loss is the squared error on the removed pixels
  (the reconstruction term of the context encoder; its small adversarial term is left out).
* Context restoration (Chen et al., 2019): two random non-overlapping patches of the same image
  are swapped, ``swaps`` times; the network restores the original image; squared error over the
  whole image.

Random draws come from a CPU ``torch.Generator`` passed in by the caller.
"""

from __future__ import annotations

import torch
from torch import Tensor

from segssl.losses._checks import check_ndim, same_shape

__all__ = ["inpainting_mask", "masked_mse", "rotations", "swap_patches"]


def rotations(x: Tensor) -> tuple[Tensor, Tensor]:
    """All four rotations of every image.

    Args:
        x: ``(B, C, H, W)`` images with ``H == W``.

    Returns:
        ``(x4, k)``: ``(4B, C, H, W)`` images, rotation ``k`` (0..3, times 90 degrees
        counter-clockwise) of image ``b`` at row ``k * B + b``; ``k`` ``(4B,)`` int64 labels.
    """
    check_ndim(x, "x", (4,), "(B, C, H, W) images")
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"rotations need square images, got shape {tuple(x.shape)}")
    b = x.shape[0]
    x4 = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).view(4, 1).expand(4, b).reshape(-1)
    return x4, labels


def _side(fraction: float, n: int, what: str) -> int:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{what} must be a fraction of the image side in (0, 1), got {fraction}")
    return max(1, int(round(fraction * n)))


def _square_masks(b: int, h: int, w: int, s: int, ys: Tensor, xs: Tensor) -> Tensor:
    """``(B, R, H, W)`` bool: the ``s x s`` squares with top-left corners ``(ys, xs)``."""
    rows = torch.arange(h).view(1, 1, h, 1)
    cols = torch.arange(w).view(1, 1, 1, w)
    y, x = ys.view(b, -1, 1, 1), xs.view(b, -1, 1, 1)
    return (rows >= y) & (rows < y + s) & (cols >= x) & (cols < x + s)


def inpainting_mask(
    shape: tuple[int, int, int, int],
    size: float,
    regions: int,
    generator: torch.Generator | None,
) -> Tensor:
    """``(B, 1, H, W)`` float mask (CPU), 1 on ``regions`` random squares of side
    ``size * min(H, W)`` per image; squares lie inside the image and may overlap."""
    b, _, h, w = shape
    if regions < 1:
        raise ValueError(f"regions must be >= 1, got {regions}")
    s = _side(size, min(h, w), "size")
    ys = torch.randint(0, h - s + 1, (b, regions), generator=generator)
    xs = torch.randint(0, w - s + 1, (b, regions), generator=generator)
    return _square_masks(b, h, w, s, ys, xs).any(1, keepdim=True).float()


def _second_corner(first: Tensor, side: int, s: int, u: Tensor) -> Tensor:
    """A corner at least ``s`` away from ``first`` along this axis, uniform over the choices."""
    left = (first - s + 1).clamp_min(0)
    right = (side - 2 * s - first + 1).clamp_min(0)
    k = (u * (left + right)).floor().long()
    return torch.where(k < left, k, first + s + (k - left))


def swap_patches(x: Tensor, size: float, swaps: int, generator: torch.Generator | None) -> Tensor:
    """Context restoration's corruption: ``swaps`` times, swap two random non-overlapping patches.

    The two patches of a swap are disjoint because they are at least one patch side apart
    along a random axis (rows or columns); everything is drawn at once on the CPU and applied
    as one gather (no host read of device values).

    Args:
        x: ``(B, C, H, W)`` images (not modified).
        size: patch side as a fraction of ``min(H, W)``.
        swaps: number of swaps per image (``T``).
        generator: CPU generator.

    Returns:
        The corrupted copy; the intensity histogram of every image is unchanged.
    """
    check_ndim(x, "x", (4,), "(B, C, H, W) images")
    if swaps < 1:
        raise ValueError(f"swaps must be >= 1, got {swaps}")
    b, c, h, w = x.shape
    s = _side(size, min(h, w), "size")
    if 2 * s > min(h, w):
        raise ValueError(f"two {s}x{s} patches cannot be disjoint in a {h}x{w} image")
    src = torch.arange(h * w).repeat(b, 1)  # (B, H*W): which input pixel lands here
    dy, dx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    offs = (dy * w + dx).flatten().view(1, -1)
    for _ in range(swaps):
        y1 = torch.randint(0, h - s + 1, (b,), generator=generator)
        x1 = torch.randint(0, w - s + 1, (b,), generator=generator)
        along_rows = torch.rand(b, generator=generator) < 0.5
        u = torch.rand(b, generator=generator)
        free_y = torch.randint(0, h - s + 1, (b,), generator=generator)
        free_x = torch.randint(0, w - s + 1, (b,), generator=generator)
        y2 = torch.where(along_rows, _second_corner(y1, h, s, u), free_y)
        x2 = torch.where(along_rows, free_x, _second_corner(x1, w, s, u))
        i1 = (y1 * w + x1).view(-1, 1) + offs
        i2 = (y2 * w + x2).view(-1, 1) + offs
        v1, v2 = src.gather(1, i1), src.gather(1, i2)
        src = src.scatter(1, i1, v2).scatter(1, i2, v1)
    index = src.to(x.device).view(b, 1, h * w).expand(b, c, h * w)
    return x.flatten(2).gather(2, index).view(b, c, h, w)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error over the pixels where ``mask`` is 1 (every pixel without a mask).

    Args:
        pred: ``(B, C, H, W)`` reconstruction.
        target: same shape, the original image.
        mask: optional ``(B, 1, H, W)`` weights in [0, 1].
    """
    same_shape(pred, target, "pred", "target")
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        return err.mean()
    weight = mask.to(err.dtype).expand_as(err)
    return (err * weight).sum() / weight.sum().clamp_min(1.0)
