"""Pure loss functions of tensors (no config objects, no device moves)."""

from segssl.losses.boundary import cc_loss, edge_map, entropy_map, local_ncc
from segssl.losses.contrastive import dense_contrastive_loss, negative_mask, supcon_loss
from segssl.losses.gmi import consistency_loss, global_mi_loss
from segssl.losses.imsat import imsat_loss, imsat_terms
from segssl.losses.mi import (
    joint_distribution,
    local_mi_joints,
    local_mi_loss,
    mi_loss,
    mutual_information,
)
from segssl.losses.semi import (
    adversarial_loss,
    discriminator_loss,
    mse_consistency,
    predictive_entropy,
    soft_cross_entropy,
    uncertainty_mask,
    uncertainty_threshold,
)
from segssl.losses.supervised import cross_entropy, dice_loss, entropy_loss

__all__ = [
    "adversarial_loss",
    "consistency_loss",
    "discriminator_loss",
    "global_mi_loss",
    "local_mi_joints",
    "mse_consistency",
    "predictive_entropy",
    "soft_cross_entropy",
    "uncertainty_mask",
    "uncertainty_threshold",
    "cc_loss",
    "edge_map",
    "entropy_map",
    "local_ncc",
    "cross_entropy",
    "dense_contrastive_loss",
    "imsat_loss",
    "imsat_terms",
    "negative_mask",
    "supcon_loss",
    "dice_loss",
    "entropy_loss",
    "joint_distribution",
    "local_mi_loss",
    "mi_loss",
    "mutual_information",
]
