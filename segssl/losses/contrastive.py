"""Contrastive losses: global (meta-label supervised / SimCLR) and dense local (Contrast(Dec)).

* :func:`supcon_loss` - BIM eq. 10 (supervised contrastive with meta-labels such as the slice
  partition index; Chaitanya's G^D). With ``labels=None`` the only positive of a view is the other
  view of the same image, which is SimCLR's NT-Xent (Chaitanya's G^R).
* :func:`dense_contrastive_loss` - the local contrastive loss of Chaitanya et al. (their eqs. 3-4,
  strategy L^R) as used for Contrast(Dec) in the BIM paper (App. E): embeddings on a 20 x 20 grid
  of two intensity-transformed views of the same images; the positive of an anchor is the same
  grid position in the other view; its negatives are the positions of the SAME image (both
  views) that lie far from it on the grid.

Distance rule for negatives (documented choice): a grid position ``(u', v')`` is a negative of
the anchor ``(u, v)`` when its Chebyshev distance ``max(|u - u'|, |v - v'|)`` is at least
``min_distance`` (default 3 cells, i.e. outside the anchor's 5 x 5 neighbourhood on the grid).
Positions closer than that are neither positives nor negatives: on a 20 x 20 grid pooled from a
224 px image, adjacent cells overlap in receptive field and mostly show the same tissue, which is
why the BIM paper speaks of negatives "with sufficiently large distances". Chaitanya et al.'s rule
(``u' != u`` and ``v' != v``) is the special case of a different-row-and-column mask; it can be
reproduced with ``rule="row_col"``.

Both losses take L2-normalised embeddings (they are re-normalised here, which is idempotent) and
are computed in float32 with autocast off.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from segssl.losses._checks import check_ndim, check_positive, same_shape

__all__ = ["dense_contrastive_loss", "negative_mask", "supcon_loss"]


def supcon_loss(z: Tensor, labels: Tensor | None = None, temperature: float = 0.07) -> Tensor:
    """Supervised contrastive loss over 2N views (BIM eq. 10); NT-Xent when ``labels`` is None.

    ``L = -1/|A| sum_{i in A} 1/|S_i| sum_{j in S_i} log( exp(z_i.z_j/tau) /
    sum_{a != i} exp(z_i.z_a/tau) )`` with ``S_i = {j != i : G(j) = G(i)}`` and ``A`` the
    anchors with at least one positive (all of them whenever every image has two views).

    Args:
        z: ``(2N, D)`` embeddings, the first N rows view 1 and the last N rows view 2 of the
            same N images (L2-normalised here).
        labels: meta-labels ``G``: ``(2N,)`` per view, or ``(N,)`` per image (shared by both
            views); ``None`` makes each image its own class (SimCLR / G^R). With ``(N,)`` or
            ``None`` every anchor has a positive (its other view) and nothing is read back to
            the host; ``(2N,)`` labels are checked for anchors without a positive, which reads
            the labels on the host (on a GPU a synchronisation): training steps pass ``(N,)``.
        temperature: ``tau > 0`` (0.07 in the BIM code).

    Returns:
        Scalar float32 tensor, >= 0.

    Raises:
        ValueError: on an odd or too small batch, a label shape that fits neither layout (both
            shapes named), ``temperature <= 0``, or no anchor with a positive.
    """
    check_ndim(z, "z", (2,), "(2N, D) embeddings")
    check_positive(temperature, "temperature")
    n2 = z.shape[0]
    if n2 < 2 or n2 % 2:
        raise ValueError(f"z must hold 2N >= 2 views (two per image), got shape {tuple(z.shape)}")
    n = n2 // 2
    paired = labels is None or (labels.ndim == 1 and labels.shape[0] == n)
    if labels is None:
        labels = torch.arange(n, device=z.device).repeat(2)
    elif paired:
        labels = labels.repeat(2)
    elif labels.ndim != 1 or labels.shape[0] != n2:
        raise ValueError(
            f"labels must be (2N,) or (N,) for z of shape (2N, D), got z {tuple(z.shape)} "
            f"and labels {tuple(labels.shape)}"
        )
    with torch.autocast(device_type=z.device.type, enabled=False):
        zz = F.normalize(z.float(), dim=1)
        logits = zz @ zz.t() / temperature
        self_mask = torch.eye(n2, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        pos = (labels.view(-1, 1) == labels.view(1, -1)) & ~self_mask
        n_pos = pos.sum(1)
        pos_log = log_prob.masked_fill(~pos, 0.0).sum(1)
        if paired:  # every anchor has its other view as a positive: all anchors count
            return -(pos_log / n_pos).mean()
        anchors = n_pos > 0
        if not bool(anchors.any()):
            raise ValueError("no anchor has a positive: every meta-label occurs only once")
        return -(pos_log[anchors] / n_pos[anchors]).mean()


def negative_mask(
    grid: tuple[int, int],
    min_distance: int = 3,
    rule: Literal["chebyshev", "row_col"] = "chebyshev",
    device: torch.device | str = "cpu",
) -> Tensor:
    """``(P, P)`` boolean mask (``P = Gh * Gw``): True where position q is a negative of anchor p.

    Args:
        grid: ``(Gh, Gw)`` grid size.
        min_distance: Chebyshev distance from which a position counts as negative (>= 1).
        rule: ``"chebyshev"`` (default) or ``"row_col"`` (Chaitanya: different row AND column).
        device: device of the mask.
    """
    gh, gw = grid
    uu, vv = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    u, v = uu.flatten().to(device), vv.flatten().to(device)
    du = (u.view(-1, 1) - u.view(1, -1)).abs()
    dv = (v.view(-1, 1) - v.view(1, -1)).abs()
    if rule == "chebyshev":
        return torch.maximum(du, dv) >= min_distance
    if rule == "row_col":
        return (du > 0) & (dv > 0)
    raise ValueError(f"rule must be 'chebyshev' or 'row_col', got {rule!r}")


def _every_anchor_has_negatives(grid: tuple[int, int], min_distance: int, rule: str) -> bool:
    """Whether every row of :func:`negative_mask` has a True entry, from the grid size alone
    (no tensor is read: the check costs no device synchronisation).

    Chebyshev: the farthest position from ``(u, v)`` is at distance ``max(u, gh-1-u, v,
    gw-1-v)``, smallest at the centre: ``max(ceil((gh-1)/2), ceil((gw-1)/2))``. Row-column:
    another row and another column exist.
    """
    gh, gw = grid
    if rule == "chebyshev":
        return max(gh // 2, gw // 2) >= min_distance
    if rule == "row_col":
        return gh > 1 and gw > 1
    raise ValueError(f"rule must be 'chebyshev' or 'row_col', got {rule!r}")


def _one_direction(a: Tensor, b: Tensor, neg: Tensor, temperature: float) -> Tensor:
    """Chaitanya eq. 3 for anchors in ``a`` (B, P, C) with positives in ``b`` at the same index."""
    sim_ab = a @ b.transpose(1, 2) / temperature  # (B, P, P)
    sim_aa = a @ a.transpose(1, 2) / temperature
    pos = torch.diagonal(sim_ab, dim1=1, dim2=2).unsqueeze(-1)  # (B, P, 1)
    neg_inf = float("-inf")
    candidates = torch.cat(
        [pos, sim_aa.masked_fill(~neg, neg_inf), sim_ab.masked_fill(~neg, neg_inf)], dim=2
    )
    return (torch.logsumexp(candidates, dim=2) - pos.squeeze(-1)).mean()


def dense_contrastive_loss(
    f1: Tensor,
    f2: Tensor,
    temperature: float = 0.1,
    min_distance: int = 3,
    rule: Literal["chebyshev", "row_col"] = "chebyshev",
) -> Tensor:
    """Local contrastive loss of Contrast(Dec) (Chaitanya eqs. 3-4, strategies L^R and L^D).

    For every image b and grid position p (all positions are anchors), with ``sim`` the cosine
    similarity: positive ``sim(f1[b, :, p], f2[b, :, p])``; negatives ``sim(f1[b, :, p],
    f1[b, :, q])`` and ``sim(f1[b, :, p], f2[b, :, q])`` for every q that is far from p
    (:func:`negative_mask`). The loss is symmetrised over the two views (eq. 4) and averaged.

    Chaitanya's domain-specific local strategy L^D (further positives in other images of the
    same partition) is :func:`segssl.losses.contrast_strategies.local_contrastive_loss`.

    Args:
        f1: ``(B, C, Gh, Gw)`` embeddings of view 1 (e.g. :class:`DenseProjector` output, 20x20).
        f2: same shape, view 2 (another intensity transformation of the same images, no
            geometric change, so that grid positions correspond).
        temperature: ``tau > 0`` (0.1 in Chaitanya et al.).
        min_distance: Chebyshev distance on the grid from which positions are negatives.
        rule: ``"chebyshev"`` or ``"row_col"`` (see module docstring).

    Returns:
        Scalar float32 tensor, >= 0.

    Raises:
        ValueError: on mismatched or non-4D shapes (both named), ``temperature <= 0``, a
            ``min_distance`` that leaves some anchor without negatives.
    """
    check_ndim(f1, "f1", (4,), "(B, C, Gh, Gw) embeddings")
    same_shape(f1, f2, "f1", "f2")
    check_positive(temperature, "temperature")
    b, c, gh, gw = f1.shape
    if isinstance(min_distance, bool) or not isinstance(min_distance, int) or min_distance < 1:
        raise ValueError(f"min_distance must be an int >= 1, got {min_distance!r}")
    if not _every_anchor_has_negatives((gh, gw), min_distance, rule):
        raise ValueError(
            f"min_distance={min_distance} (rule {rule!r}) leaves anchors without negatives on a "
            f"{gh}x{gw} grid; use a smaller min_distance or a larger grid"
        )
    neg = negative_mask((gh, gw), min_distance, rule, device=f1.device)
    with torch.autocast(device_type=f1.device.type, enabled=False):
        a = F.normalize(f1.float(), dim=1).flatten(2).transpose(1, 2)  # (B, P, C)
        z = F.normalize(f2.float(), dim=1).flatten(2).transpose(1, 2)
        return 0.5 * (
            _one_direction(a, z, neg, temperature) + _one_direction(z, a, neg, temperature)
        )
