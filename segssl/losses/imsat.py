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

__all__ = ["imsat_loss", "imsat_objective", "imsat_terms"]

_EPS = 1e-10


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
        # both views have the same size: means over their concatenation are the means of the
        # two views' means (no concatenated copy); each logarithm is taken once
        dims = [0] + list(range(2, a.ndim))
        marginal = (a.mean(dim=dims) + r.mean(dim=dims)) / 2
        h_marginal = -(marginal * torch.log(marginal.clamp_min(_EPS))).sum()
        log_a = torch.log(a.clamp_min(_EPS))
        log_r = torch.log(r.clamp_min(_EPS))
        h_a = -torch.linalg.vecdot(a, log_a, dim=1).mean()
        h_r = -torch.linalg.vecdot(r, log_r, dim=1).mean()
        kl = torch.linalg.vecdot(r.detach(), log_r.detach() - log_a, dim=1)
        return {
            "marginal_entropy": h_marginal,
            "conditional_entropy": (h_a + h_r) / 2,
            "sat": kl.mean(),
        }


def imsat_objective(
    terms: dict[str, Tensor], lamda: float = 0.1, mu: float = 4.0, sat_weight: float = 1.0
) -> Tensor:
    """``sat_weight * sat - lamda * (marginal_entropy - mu * conditional_entropy)`` of the
    :func:`imsat_terms` (a caller that also logs the terms computes them once)."""
    mi = terms["marginal_entropy"] - mu * terms["conditional_entropy"]
    return sat_weight * terms["sat"] - lamda * mi


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
    return imsat_objective(imsat_terms(p_aug, p_ref), lamda, mu, sat_weight)
