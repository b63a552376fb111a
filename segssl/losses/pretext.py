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
    x4 = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return x4, labels


def _side(fraction: float, n: int, what: str) -> int:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{what} must be a fraction of the image side in (0, 1), got {fraction}")
    return max(1, int(round(fraction * n)))


def inpainting_mask(
    shape: tuple[int, int, int, int],
    size: float,
    regions: int,
    generator: torch.Generator | None,
) -> Tensor:
    """``(B, 1, H, W)`` float mask, 1 on ``regions`` random squares of side ``size * min(H, W)``.

    Squares lie inside the image and may overlap.
    """
    b, _, h, w = shape
    if regions < 1:
        raise ValueError(f"regions must be >= 1, got {regions}")
    s = _side(size, min(h, w), "size")
    mask = torch.zeros(b, 1, h, w)
    ys = torch.randint(0, h - s + 1, (b, regions), generator=generator)
    xs = torch.randint(0, w - s + 1, (b, regions), generator=generator)
    for i in range(b):
        for y, x in zip(ys[i].tolist(), xs[i].tolist(), strict=True):
            mask[i, :, y : y + s, x : x + s] = 1.0
    return mask


def swap_patches(x: Tensor, size: float, swaps: int, generator: torch.Generator | None) -> Tensor:
    """Context restoration's corruption: ``swaps`` times, swap two random non-overlapping patches.

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
    b, _, h, w = x.shape
    s = _side(size, min(h, w), "size")
    if 2 * s > max(h, w):
        raise ValueError(f"two {s}x{s} patches cannot be disjoint in a {h}x{w} image")
    out = x.clone()
    for i in range(b):
        for _ in range(swaps):
            while True:
                y1, y2 = torch.randint(0, h - s + 1, (2,), generator=generator).tolist()
                x1, x2 = torch.randint(0, w - s + 1, (2,), generator=generator).tolist()
                if abs(y1 - y2) >= s or abs(x1 - x2) >= s:
                    break
            a = out[i, :, y1 : y1 + s, x1 : x1 + s].clone()
            out[i, :, y1 : y1 + s, x1 : x1 + s] = out[i, :, y2 : y2 + s, x2 : x2 + s]
            out[i, :, y2 : y2 + s, x2 : x2 + s] = a
    return out


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
