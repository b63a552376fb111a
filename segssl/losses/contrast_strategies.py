"""Contrasting strategies of Chaitanya et al. (seed 002) and IDEAL's dense InfoNCE (seed 003).

Every loss here is the same per-pair InfoNCE term applied to a set of embeddings with an explicit
positive mask and negative mask (Chaitanya eqs. 1 and 3)::

    l(a, p) = -log( e^{s(a,p)/tau} / (e^{s(a,p)/tau} + sum_{n in neg(a)} e^{s(a,n)/tau}) )

with ``s`` the cosine similarity, averaged over every ordered positive pair ``(a, p)`` (eqs. 2
and 4 sum ``l(a, p) + l(p, a)`` over the unordered pairs and divide by their number, which is
twice this mean; the factor does not change the optimum and Adam is invariant to it). Entries
that are neither positive nor negative of an anchor (e.g. the same partition of other volumes
under ``G^D-``) do not enter its terms.

Strategies (the masks, see :func:`global_masks` and :func:`local_masks`):

* ``random`` (``G^R``): positives are the other views of the same image; every other entry of the
  batch is a negative (SimCLR's NT-Xent when there are two views).
* ``domain_minus`` (``G^D-``): positives as ``G^R``; negatives only entries from another
  partition (corresponding partitions of other volumes are removed from the negatives).
* ``domain`` (``G^D``): positives are every other entry of the same partition (the other views
  of the image and the images of the same partition of other volumes, all their views);
  negatives as ``G^D-``. With ``volume`` ids, "other volumes" is enforced: other slices of the
  same partition of the SAME volume (batches not drawn by the partition sampler) are neither
  positives nor negatives.

Local loss (Chaitanya sec. 3.3): ``A`` regions of ``K x K`` at fixed positions of the decoder
feature map (:func:`region_corners`; the authors' 13 positions: the corners, edge midpoints and
centre of the map, plus the four quarter points), each region flattened to a ``K*K*C`` vector.

* ``random`` (``L^R``): the positive of region ``(u, v)`` of one view is region ``(u, v)`` of the
  other view of the same image; negatives are the regions ``(u', v')`` with ``u' != u`` and
  ``v' != v`` of that image, both views.
* ``domain`` (``L^D``): further positives are region ``(u, v)`` of the images of the same
  partition of other volumes (both views); their regions with ``u' != u, v' != v`` are further
  negatives.

IDEAL (:func:`dense_infonce_loss`, its eq. 2): per-location InfoNCE of dense 1x1-conv
projections; the positive key of a query location is the corresponding location of the other
view, known from the geometric transform (``segssl.augment.dense_correspondence``), negatives are
the other keys (other locations and other images).

All losses run in float32 with autocast off and take unnormalised embeddings (normalised here).
They never read a tensor value on the host (no synchronisation in a GPU training step): masks
are checked for shape only, and a batch without any positive pair gives a loss of 0.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from segssl.losses._checks import check_ndim, check_positive, same_shape

__all__ = [
    "GLOBAL_STRATEGIES",
    "LOCAL_STRATEGIES",
    "dense_infonce_loss",
    "global_contrastive_loss",
    "global_masks",
    "local_contrastive_loss",
    "local_masks",
    "pair_contrastive_loss",
    "region_corners",
    "region_embeddings",
]

GlobalStrategy = Literal["random", "domain_minus", "domain"]
LocalStrategy = Literal["random", "domain"]
GLOBAL_STRATEGIES: tuple[str, ...] = ("random", "domain_minus", "domain")
LOCAL_STRATEGIES: tuple[str, ...] = ("random", "domain")

# the authors' 13 region positions as fractions of the free range (map side - K): the 3 x 3
# lattice of corners, edge midpoints and centre, then the 4 quarter points
REGION_FRACTIONS: tuple[tuple[float, float], ...] = (
    (0.0, 0.0), (0.0, 0.5), (0.0, 1.0),
    (0.5, 0.0), (0.5, 0.5), (0.5, 1.0),
    (1.0, 0.0), (1.0, 0.5), (1.0, 1.0),
    (0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75),
)  # fmt: skip


def _check_strategy(strategy: str, known: tuple[str, ...], what: str) -> None:
    if strategy not in known:
        raise ValueError(f"unknown {what} contrasting strategy {strategy!r}; known: {list(known)}")


def _check_ids(ids: Tensor, name: str, m: int) -> None:
    if ids.ndim != 1 or ids.shape[0] != m:
        raise ValueError(f"{name} must be ({m},) (one id per entry), got shape {tuple(ids.shape)}")


# --------------------------------------------------------------------------------- the term
def pair_contrastive_loss(z: Tensor, pos: Tensor, neg: Tensor, temperature: float = 0.1) -> Tensor:
    """Mean over ordered positive pairs of ``-log(e^pos / (e^pos + sum_neg e^neg))``.

    Args:
        z: ``(M, D)`` embeddings (L2-normalised here; similarity is the cosine).
        pos: ``(M, M)`` bool, ``pos[a, p]``: ``p`` is a positive of anchor ``a`` (diagonal false).
        neg: ``(M, M)`` bool, ``neg[a, n]``: ``n`` is a negative of ``a``; disjoint from ``pos``.
        temperature: ``tau > 0`` (0.1 in Chaitanya et al.).

    Returns:
        Scalar float32 tensor, >= 0.

    Raises:
        ValueError: on shapes or dtypes that disagree (all named), or ``temperature <= 0``.
    """
    check_ndim(z, "z", (2,), "(M, D) embeddings")
    check_positive(temperature, "temperature")
    m = z.shape[0]
    for name, mask in (("pos", pos), ("neg", neg)):
        if tuple(mask.shape) != (m, m) or mask.dtype != torch.bool:
            raise ValueError(
                f"{name} must be a ({m}, {m}) bool mask for z of shape {tuple(z.shape)}, got "
                f"{tuple(mask.shape)} {mask.dtype}"
            )
    with torch.autocast(device_type=z.device.type, enabled=False):
        zz = F.normalize(z.float(), dim=1)
        sim = zz @ zz.t() / temperature
        lse_neg = torch.logsumexp(sim.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)
        terms = torch.logaddexp(sim, lse_neg) - sim  # (M, M): the term of every (a, p)
        w = pos.to(terms.dtype)
        return (terms * w).sum() / w.sum().clamp_min(1.0)


# --------------------------------------------------------------------------------- global
def _domain_group(image: Tensor, partition: Tensor, volume: Tensor | None) -> Tensor:
    """``(M, M)``: same image, or same partition of ANOTHER volume (``volume`` None: the batch
    holds one slice per volume and partition, so every same-partition entry qualifies)."""
    same_part = partition.view(-1, 1) == partition.view(1, -1)
    if volume is None:
        return same_part
    same_img = image.view(-1, 1) == image.view(1, -1)
    return same_img | (same_part & (volume.view(-1, 1) != volume.view(1, -1)))


def global_masks(
    image: Tensor, partition: Tensor, strategy: GlobalStrategy, volume: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Positive and negative masks of a global strategy over ``M`` entries (views of images).

    Args:
        image: ``(M,)`` image id of each entry (views of one image share it).
        partition: ``(M,)`` partition index of each entry's slice.
        strategy: ``random`` (G^R), ``domain_minus`` (G^D-) or ``domain`` (G^D).
        volume: ``(M,)`` volume id of each entry, or None when the batch holds at most one
            slice per volume and partition (the partition sampler's batches). Other slices of
            the same partition and the SAME volume are neither positives nor negatives.

    Returns:
        ``(pos, neg)``, ``(M, M)`` bool each (see the module docstring).
    """
    _check_strategy(strategy, GLOBAL_STRATEGIES, "global")
    m = image.shape[0]
    _check_ids(image, "image", m)
    _check_ids(partition, "partition", m)
    if volume is not None:
        _check_ids(volume, "volume", m)
    eye = torch.eye(m, dtype=torch.bool, device=image.device)
    same_img = image.view(-1, 1) == image.view(1, -1)
    same_part = partition.view(-1, 1) == partition.view(1, -1)
    if strategy == "random":
        return same_img & ~eye, ~same_img
    if strategy == "domain_minus":
        return same_img & ~eye, ~same_part
    return _domain_group(image, partition, volume) & ~eye, ~same_part


def global_contrastive_loss(
    z: Tensor,
    partition: Tensor,
    strategy: GlobalStrategy,
    temperature: float = 0.1,
    volume: Tensor | None = None,
) -> Tensor:
    """Chaitanya's global contrastive loss ``L_g`` (eqs. 1-2) with a contrasting strategy.

    Args:
        z: ``(V*N, D)`` embeddings ``g1(e(x))`` of ``V >= 2`` versions of ``N`` images, stacked
            version-major (rows ``v*N .. v*N+N-1`` are version ``v`` of images ``0..N-1``).
        partition: ``(N,)`` partition index of each image (or ``(V*N,)``).
        strategy: ``random``, ``domain_minus`` or ``domain``.
        temperature: ``tau`` (0.1).
        volume: ``(N,)`` volume id of each image (see :func:`global_masks`), or None.

    Returns:
        Scalar float32 tensor.
    """
    check_ndim(z, "z", (2,), "(V*N, D) embeddings")
    n = partition.shape[0] if partition.ndim == 1 else -1
    if n < 1 or z.shape[0] % n or z.shape[0] // n < 2:
        raise ValueError(
            f"z must stack V >= 2 versions of the N images of partition, got z {tuple(z.shape)} "
            f"and partition {tuple(partition.shape)}"
        )
    v = z.shape[0] // n
    image = torch.arange(n, device=z.device).repeat(v)
    part = partition.to(z.device).repeat(v) if n != z.shape[0] else partition.to(z.device)
    vol = None if volume is None else volume.to(z.device).repeat(z.shape[0] // volume.shape[0])
    pos, neg = global_masks(image, part, strategy, vol)
    return pair_contrastive_loss(z, pos, neg, temperature)


# --------------------------------------------------------------------------------- local
def region_corners(
    height: int, width: int, regions: int = 13, size: int = 1
) -> list[tuple[int, int]]:
    """Top-left corners ``(row, column)`` of the ``A`` local regions of ``K x K``.

    The first ``A`` of the authors' 13 positions (:data:`REGION_FRACTIONS`), each a fraction of
    the free range ``side - K`` rounded down, so every region lies inside the map.

    Raises:
        ValueError: ``A`` outside 1..13, ``K < 1``, or regions that do not fit: a region larger
            than the map or two regions at the same position (the map is too small for ``A``).
    """
    if not 1 <= regions <= len(REGION_FRACTIONS):
        raise ValueError(
            f"regions (A) must be in 1..{len(REGION_FRACTIONS)} (the authors' region layout), "
            f"got {regions}"
        )
    if size < 1:
        raise ValueError(f"region size K must be >= 1, got {size}")
    if size > min(height, width):
        raise ValueError(f"a {size}x{size} region does not fit in a {height}x{width} feature map")
    free_h, free_w = height - size, width - size
    corners = [(int(fh * free_h), int(fw * free_w)) for fh, fw in REGION_FRACTIONS[:regions]]
    if len(set(corners)) < len(corners):
        need = size + next(
            f
            for f in range(1, 9)
            if len({(int(a * f), int(b * f)) for a, b in REGION_FRACTIONS[:regions]}) == regions
        )
        raise ValueError(
            f"A={regions} local regions of {size}x{size} do not fit in a {height}x{width} "
            f"feature map (positions coincide; this layout needs a side of at least {need}); "
            "use fewer or smaller regions, or a larger feature map"
        )
    return corners


def region_embeddings(f: Tensor, corners: list[tuple[int, int]], size: int) -> Tensor:
    """``(B, A, C*K*K)``: each ``K x K x C`` region of ``f`` ``(B, C, H, W)``, flattened."""
    check_ndim(f, "f", (4,), "(B, C, H, W) feature maps")
    regions = [f[:, :, r : r + size, c : c + size] for r, c in corners]
    return torch.stack(regions, dim=1).flatten(2)


def local_masks(
    image: Tensor,
    partition: Tensor,
    corners: list[tuple[int, int]],
    strategy: LocalStrategy,
    volume: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Positive and negative masks of a local strategy over ``M * A`` region entries.

    Entry ``i * A + a`` is region ``a`` of entry ``i`` (a view of an image).

    Args:
        image: ``(M,)`` image id of each entry.
        partition: ``(M,)`` partition index of each entry.
        corners: the ``A`` region positions (their rows and columns index ``u`` and ``v``).
        strategy: ``random`` (L^R) or ``domain`` (L^D).
        volume: ``(M,)`` volume id of each entry or None (as in :func:`global_masks`).

    Returns:
        ``(pos, neg)``, ``(M*A, M*A)`` bool each.
    """
    _check_strategy(strategy, LOCAL_STRATEGIES, "local")
    m, a = image.shape[0], len(corners)
    _check_ids(partition, "partition", m)
    if volume is not None:
        _check_ids(volume, "volume", m)
    dev = image.device
    rc = torch.tensor(corners, dtype=torch.long, device=dev).view(a, 2)
    same_region = torch.eye(a, dtype=torch.bool, device=dev)
    u, v = rc[:, 0], rc[:, 1]
    far = (u.view(-1, 1) != u.view(1, -1)) & (v.view(-1, 1) != v.view(1, -1))  # u'!=u, v'!=v
    if strategy == "random":
        group = image.view(-1, 1) == image.view(1, -1)
    else:
        group = _domain_group(image, partition, volume)
    not_self = ~torch.eye(m * a, dtype=torch.bool, device=dev)
    pos = torch.kron(group.int(), same_region.int()).bool() & not_self
    neg = torch.kron(group.int(), far.int()).bool()
    return pos, neg


def local_contrastive_loss(
    f: Tensor,
    partition: Tensor,
    strategy: LocalStrategy,
    regions: int = 13,
    size: int = 1,
    temperature: float = 0.1,
    volume: Tensor | None = None,
) -> Tensor:
    """Chaitanya's local contrastive loss ``L_l`` (eqs. 3-4) over ``A`` regions of ``K x K``.

    Args:
        f: ``(V*N, C, H, W)`` feature maps ``g2(d_l(e(x)))`` of ``V >= 2`` intensity-transformed
            versions of ``N`` images, stacked version-major (positions correspond).
        partition: ``(N,)`` partition index of each image.
        strategy: ``random`` (L^R) or ``domain`` (L^D).
        regions: ``A`` (13).
        size: ``K`` (1 or 3).
        temperature: ``tau`` (0.1).
        volume: ``(N,)`` volume id of each image (see :func:`global_masks`), or None.
    """
    check_ndim(f, "f", (4,), "(V*N, C, H, W) feature maps")
    n = partition.shape[0] if partition.ndim == 1 else -1
    if n < 1 or f.shape[0] % n or f.shape[0] // n < 2:
        raise ValueError(
            f"f must stack V >= 2 versions of the N images of partition, got f {tuple(f.shape)} "
            f"and partition {tuple(partition.shape)}"
        )
    corners = region_corners(f.shape[2], f.shape[3], regions, size)
    v = f.shape[0] // n
    image = torch.arange(n, device=f.device).repeat(v)
    vol = None if volume is None else volume.to(f.device).repeat(v)
    pos, neg = local_masks(image, partition.to(f.device).repeat(v), corners, strategy, vol)
    z = region_embeddings(f, corners, size).flatten(0, 1)  # (V*N*A, C*K*K)
    return pair_contrastive_loss(z, pos, neg, temperature)


# --------------------------------------------------------------------------------- IDEAL
def dense_infonce_loss(
    q: Tensor,
    k: Tensor,
    match: Tensor,
    valid: Tensor,
    temperature: float = 0.1,
    negatives: Literal["all", "other_images"] = "all",
) -> Tensor:
    """IDEAL's dense local contrastive loss (its eq. 2) with a known correspondence.

    For every query location ``i`` of image ``b`` with ``valid[b, i]``, the positive key is
    ``k[b, :, match[b, i]]`` (the same point of the scene in the other view). Negatives are every
    other key of the batch (``all``: other locations of the image and all locations of other
    images) or only the keys of other images (``other_images``).

    Args:
        q: ``(B, D, H, W)`` query projections (view q).
        k: ``(B, D, H, W)`` key projections (view k).
        match: ``(B, H*W)`` int64, flat index of the corresponding key location.
        valid: ``(B, H*W)`` bool, the query location has a correspondent inside view k.
        temperature: ``tau > 0`` (not stated by IDEAL; 0.1 as Chaitanya et al.).
        negatives: ``all`` or ``other_images``.

    Returns:
        Scalar float32 tensor (mean over valid query locations; 0 when there is none).

    Raises:
        ValueError: on mismatched shapes (named) or ``temperature <= 0``.
    """
    check_ndim(q, "q", (4,), "(B, D, H, W) projections")
    same_shape(q, k, "q", "k")
    b, _, h, w = q.shape
    p = h * w
    for name, t in (("match", match), ("valid", valid)):
        if tuple(t.shape) != (b, p):
            raise ValueError(
                f"{name} must be (B, H*W) = ({b}, {p}) for q of shape {tuple(q.shape)}, "
                f"got {tuple(t.shape)}"
            )
    if negatives not in ("all", "other_images"):
        raise ValueError(f"negatives must be 'all' or 'other_images', got {negatives!r}")
    check_positive(temperature, "temperature")
    with torch.autocast(device_type=q.device.type, enabled=False):
        qq = F.normalize(q.float(), dim=1).flatten(2).transpose(1, 2).reshape(b * p, -1)
        kk = F.normalize(k.float(), dim=1).flatten(2).transpose(1, 2).reshape(b * p, -1)
        logits = qq @ kk.t() / temperature  # (B*P, B*P)
        owner = torch.arange(b, device=q.device).view(-1, 1).expand(b, p).reshape(-1)
        target = (match + torch.arange(b, device=q.device).view(-1, 1) * p).flatten()
        if negatives == "other_images":
            keep = owner.view(-1, 1) != owner.view(1, -1)
            keep[torch.arange(b * p, device=q.device), target] = True
            logits = logits.masked_fill(~keep, float("-inf"))
        ce = F.cross_entropy(logits, target, reduction="none")
        w = valid.flatten().to(ce.dtype)
        return (ce * w).sum() / w.sum().clamp_min(1.0)
