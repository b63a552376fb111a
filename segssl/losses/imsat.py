"""IMSAT (Hu et al., 2017) adapted to dense clustering, as the IMSAT (Dec) baseline of the BIM
paper (App. E): maximise ``I(X; p(X)) = H(mean_x p(x)) - mean_x H(p(x))`` over every pixel of
every image, plus IMSAT's self-augmented training (SAT) consistency term.

The objective minimised is::

    L = sat_weight * R_SAT  -  lamda * ( H(marginal) - mu * mean H(p) )

* ``H(marginal)``: entropy of the cluster marginal (mean of the probabilities over the batch,
  both views and all pixels) - large when the clusters are balanced;
* ``mean H(p)``: mean pixel-wise conditional entropy - small when assignments are confident;
* ``R_SAT = mean_pixels KL(p_ref || p_aug)``: the prediction on the augmented image
  ``p_aug = g(s(T(x)))`` is pulled towards the (constant, detached) geometrically transformed
  prediction on the original image ``p_ref = T(g(s(x)))``, IMSAT's self-augmentation with T as
  the augmentation.

IMSAT's paper uses ``mu = 4``; its ``lamda`` trades SAT against the MI term (``0.1`` here by
default). All three are arguments so that configs can set them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from segssl.losses._checks import (
    check_clusters,
    check_ndim,
    check_non_negative,
    same_shape,
)

__all__ = ["imsat_loss", "imsat_terms"]

_EPS = 1e-10


def _entropy_rows(p: Tensor) -> Tensor:
    """Entropy along dim 1 (nats)."""
    return -(p * torch.log(p.clamp_min(_EPS))).sum(1)


def imsat_terms(p_aug: Tensor, p_ref: Tensor) -> dict[str, Tensor]:
    """The three IMSAT quantities (scalar float32 tensors, nats).

    Args:
        p_aug: ``(B, K, H, W)`` or ``(B, K)`` probabilities on the transformed image.
        p_ref: same shape; probabilities on the original image, transformed afterwards
            (the SAT target; detached here).

    Returns:
        ``{"marginal_entropy": H(mean p), "conditional_entropy": mean H(p), "sat": KL}``; the
        entropies use both views, ``0 <= H <= log K``; ``sat >= 0``.

    Raises:
        ValueError: on shape mismatch (both shapes named), bad rank, or K < 2.
    """
    check_ndim(p_aug, "p_aug", (2, 4), "(B, K) or (B, K, H, W) probabilities")
    same_shape(p_aug, p_ref, "p_aug", "p_ref")
    check_clusters(p_aug, "p_aug")
    with torch.autocast(device_type=p_aug.device.type, enabled=False):
        a = p_aug.float()
        r = p_ref.float()
        both = torch.cat([a, r], dim=0)
        dims = [0] + list(range(2, both.ndim))
        marginal = both.mean(dim=dims)
        h_marginal = -(marginal * torch.log(marginal.clamp_min(_EPS))).sum()
        h_cond = _entropy_rows(both).mean()
        target = r.detach()
        kl = (target * (torch.log(target.clamp_min(_EPS)) - torch.log(a.clamp_min(_EPS)))).sum(1)
        return {"marginal_entropy": h_marginal, "conditional_entropy": h_cond, "sat": kl.mean()}


def imsat_loss(
    p_aug: Tensor,
    p_ref: Tensor,
    lamda: float = 0.1,
    mu: float = 4.0,
    sat_weight: float = 1.0,
) -> Tensor:
    """Dense IMSAT loss ``sat_weight * R_SAT - lamda * (H(marginal) - mu * mean H(p))``.

    Args:
        p_aug: ``(B, K, H, W)`` or ``(B, K)`` probabilities ``g(s(T(x)))``.
        p_ref: same shape, ``T(g(s(x)))`` (SAT target, detached).
        lamda: weight of the MI term (>= 0).
        mu: weight of the conditional entropy inside the MI term (>= 0; 4 in IMSAT).
        sat_weight: weight of the self-augmentation consistency (>= 0).

    Returns:
        Scalar float32 tensor.

    Raises:
        ValueError: on bad shapes or negative weights.
    """
    for name, v in (("lamda", lamda), ("mu", mu), ("sat_weight", sat_weight)):
        check_non_negative(v, name)
    t = imsat_terms(p_aug, p_ref)
    mi = t["marginal_entropy"] - mu * t["conditional_entropy"]
    return sat_weight * t["sat"] - lamda * mi
