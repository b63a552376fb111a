"""Types shared by the data layer and its consumers (engine, orchestration).

Batches are plain dicts of tensors so that they cross worker processes and devices cheaply:

* ``image``: ``(B, 1, H, W)`` float32, normalised intensities (preprocessed, not augmented)
* ``label``: ``(B, H, W)`` int64 class indices of the run's target (labeled batches only)
* ``partition``: ``(B,)`` int64 meta-label, partition index of the slice within its volume
* ``slice_index``: ``(B,)`` int64 slice position within its volume
* ``scan``: list of ``B`` scan ids
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Batch = dict[str, Any]

__all__ = ["Batch", "DataBundle", "ScanRecord", "Volume"]


@dataclass(frozen=True)
class ScanRecord:
    """One scan as an adapter lists it from the archive (nothing read yet).

    ``spacing`` is (through-plane, row, column) in mm as the header states it, or None when only
    reading the volume reveals it.
    """

    subject: str
    scan_id: str
    image: Path
    label: Path | None
    phase: str | None = None  # ACDC: "ED" / "ES"; None elsewhere
    spacing: tuple[float, float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class Volume:
    """A preprocessed scan: slices along axis 0, labels mapped to contiguous class indices."""

    scan_id: str
    subject: str
    image: np.ndarray  # (D, H, W) float32
    label: np.ndarray  # (D, H, W) int64 (target classes of the run)
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm after preprocessing


@dataclass
class DataBundle:
    """Everything a training run needs from the data layer (see ``segssl.data.build_data``).

    ``labeled`` / ``unlabeled`` are endless iterators of batches drawn with replacement (None when
    the stage does not use them); ``val`` / ``test`` are whole volumes for 3D evaluation.
    """

    class_names: tuple[str, ...]  # foreground class names of the run's target
    labeled: Iterator[Batch] | None
    unlabeled: Iterator[Batch] | None
    val: list[Volume]
    test: list[Volume]
    split: dict[str, Any]  # the split manifest (ids per set, labeled ids, fingerprint)
    data_fingerprint: str
    split_fingerprint: str
    split_path: Path | None = None
    close: Callable[[], None] = lambda: None

    @property
    def num_classes(self) -> int:
        """Output channels of the network: background plus foreground classes."""
        return len(self.class_names) + 1
