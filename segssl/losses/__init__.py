"""Pure loss functions of tensors (no config objects, no device moves)."""

from segssl.losses.boundary import cc_loss, edge_map, entropy_map, local_ncc
from segssl.losses.contrastive import dense_contrastive_loss, negative_mask, supcon_loss
from segssl.losses.imsat import imsat_loss, imsat_terms
from segssl.losses.mi import joint_distribution, local_mi_loss, mi_loss, mutual_information
from segssl.losses.supervised import cross_entropy, dice_loss, entropy_loss

__all__ = [
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
