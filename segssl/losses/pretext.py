"""Pretext tasks of Chaitanya et al.'s Table 2: their inputs, targets and losses (pure tensors).

* Rotation (Gidaris et al., 2018): every image in its four rotations by 0, 90, 180, 270 degrees;
  the network predicts which (a 4-way classification of the pooled encoder output).
* Inpainting (Pathak et al., 2016, context encoder): random square regions are removed (set to
  the mean of the visible pixels, Pathak et al.'s zero of zero-centred inputs) and the network
  reconstructs the image; the loss is the squared error on the removed pixels (the reconstruction
  term of the context encoder; its small adversarial term is left out).
* Context restoration (Chen et al., 2019): two random disjoint patches of the same image are
  swapped, ``swaps`` times; the network restores the original image; squared error over the
  whole image.

Random draws come from a CPU ``torch.Generator`` passed in by the caller.
"""

from __future__ import annotations

import torch
from torch import Tensor

from segssl.losses._checks import check_ndim, same_shape

__all__ = ["inpainting_mask", "masked_mse", "remove_regions", "rotations", "swap_patches"]


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


def remove_regions(x: Tensor, mask: Tensor, fill: str = "mean") -> Tensor:
    """The context encoder's input: ``x`` with the pixels where ``mask`` is 1 replaced.

    Args:
        x: ``(B, C, H, W)`` images.
        mask: ``(B, 1, H, W)`` 0/1 mask of the removed pixels.
        fill: ``mean`` (per image and channel, the mean of the visible pixels: Pathak et al.'s
            zero of zero-centred inputs) or ``zero``.
    """
    check_ndim(x, "x", (4,), "(B, C, H, W) images")
    if fill not in ("mean", "zero"):
        raise ValueError(f"fill must be 'mean' or 'zero', got {fill!r}")
    keep = 1 - mask
    if fill == "zero":
        return x * keep
    visible = keep.sum((2, 3), keepdim=True).clamp_min(1.0)
    mean = (x * keep).sum((2, 3), keepdim=True) / visible
    return x * keep + mean * mask


def _overlaps(n: int, s: int) -> Tensor:
    """For each corner ``0..n-1`` along one axis: how many corners along it lie closer than
    ``s`` (their patches overlap along this axis)."""
    c = torch.arange(n)
    return (c + s - 1).clamp_max(n - 1) - (c - s + 1).clamp_min(0) + 1


def _disjoint_pair(
    b: int, h: int, w: int, s: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Flat corner indices (on the ``(h-s+1) x (w-s+1)`` grid of corners) of ``b`` pairs of
    disjoint ``s x s`` patches, uniform over all such pairs: the first corner is drawn in
    proportion to how many disjoint partners it has, the second uniformly among them.

    The partners of a corner are the grid minus one rectangle of rows ``lo_y..hi_y`` and columns
    ``lo_x..hi_x`` (the corners whose patch overlaps it), so the ``k``-th partner in row-major
    order has a closed form: full rows above the rectangle, rows beside it, full rows below.
    """
    ny, nx = h - s + 1, w - s + 1
    partners = ny * nx - _overlaps(ny, s).view(-1, 1) * _overlaps(nx, s).view(1, -1)
    first = torch.multinomial(partners.flatten().double(), b, True, generator=generator)
    y1, x1 = first // nx, first % nx
    lo_y, hi_y = (y1 - s + 1).clamp_min(0), (y1 + s - 1).clamp_max(ny - 1)
    lo_x, hi_x = (x1 - s + 1).clamp_min(0), (x1 + s - 1).clamp_max(nx - 1)
    width = hi_x - lo_x + 1
    beside = nx - width  # partners in each row of the rectangle
    above, middle = lo_y * nx, (hi_y - lo_y + 1) * beside
    count = ny * nx - (hi_y - lo_y + 1) * width
    k = (torch.rand(b, generator=generator, dtype=torch.float64) * count).long()
    k = torch.minimum(k, count - 1)
    j = k - above  # within the rows beside the rectangle
    t = j % beside.clamp_min(1)
    rows = torch.where(k < above, k // nx, lo_y + j // beside.clamp_min(1))
    cols = torch.where(k < above, k % nx, torch.where(t < lo_x, t, t + width))
    after = k >= above + middle
    j = k - above - middle  # within the rows below the rectangle
    rows = torch.where(after, hi_y + 1 + j // nx, rows)
    cols = torch.where(after, j % nx, cols)
    return first, rows * nx + cols


def swap_patches(x: Tensor, size: float, swaps: int, generator: torch.Generator | None) -> Tensor:
    """Context restoration's corruption: ``swaps`` times, swap two random disjoint patches.

    Each swap draws a pair of disjoint (Chen et al.: "isolated") ``s x s`` patches inside the
    image uniformly over all such pairs; later swaps act on the already corrupted image.
    Everything is drawn on the CPU and applied as one gather (no host read of device values).

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
    nx = w - s + 1
    src = torch.arange(h * w).repeat(b, 1)  # (B, H*W): which input pixel lands here
    dy, dx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    offs = (dy * w + dx).flatten().view(1, -1)
    for _ in range(swaps):
        first, second = _disjoint_pair(b, h, w, s, generator)
        i1 = ((first // nx) * w + first % nx).view(-1, 1) + offs
        i2 = ((second // nx) * w + second % nx).view(-1, 1) + offs
        v1, v2 = src.gather(1, i1), src.gather(1, i2)
        src.scatter_(1, i1, v2).scatter_(1, i2, v1)
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
