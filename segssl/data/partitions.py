"""Slice-position meta-labels: the partition index of each slice of a volume.

Chaitanya et al. group the D slices of each (roughly aligned) volume into S partitions of
consecutive slices; slices of the same partition in different volumes show similar anatomy and
serve as positives of the contrastive losses (BIM uses the same meta-labels for L_con). After
reorientation every volume runs along the same world direction, so partition s covers the same
relative position (base to apex for ACDC) in all volumes.
"""

from __future__ import annotations

import numpy as np

from segssl.data.errors import DataError

__all__ = ["partition_labels"]


def partition_labels(num_slices: int, partitions: int) -> np.ndarray:
    """Partition index of every slice: ``floor(i * S / D)``, shape ``(D,)`` int64 in [0, S).

    Partitions are as equal as possible (sizes differ by at most one slice) and every partition
    is non-empty when ``D >= S``.

    Raises:
        DataError: ``partitions < 1`` or ``num_slices < 1``.
    """
    if partitions < 1 or num_slices < 1:
        raise DataError(
            f"partition_labels: need num_slices >= 1 and partitions >= 1, got {num_slices}, "
            f"{partitions}"
        )
    return (np.arange(num_slices, dtype=np.int64) * partitions) // num_slices
