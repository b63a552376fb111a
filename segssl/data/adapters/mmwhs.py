"""MM-WHS (multi-modality whole heart segmentation) archive adapters, CT and MR.

Layout as shipped::

    <root>/ct_train/ct_train_1001_image.nii.gz   <root>/ct_train/ct_train_1001_label.nii.gz
    <root>/mr_train/mr_train_1001_image.nii.gz   <root>/mr_train/mr_train_1001_label.nii.gz

``<root>`` may also be the ``ct_train`` / ``mr_train`` folder itself. Raw label values 205 Myo,
420 LA, 500 LV, 550 RA, 600 RV, 820 AA, 850 PA become classes 1..7 in that order.
"""

from __future__ import annotations

import re
from pathlib import Path

from segssl.data.adapters.base import BaseAdapter
from segssl.data.errors import DataError
from segssl.data.io import read_header
from segssl.data.types import ScanRecord

__all__ = ["MmwhsAdapter", "MmwhsCtAdapter", "MmwhsMrAdapter"]


class MmwhsAdapter(BaseAdapter):
    """Whole-heart volumes with seven labeled structures."""

    modality = ""
    class_names = ("Myo", "LA", "LV", "RA", "RV", "AA", "PA")
    label_values = (205, 420, 500, 550, 600, 820, 850)

    def _folder(self) -> Path:
        sub = self.root / f"{self.modality}_train"
        return sub if sub.is_dir() else self.root

    def list_scans(self) -> list[ScanRecord]:
        """One scan per ``<mod>_train_NNNN_image.nii.gz`` with its ``_label`` file."""
        folder = self._folder()
        pattern = re.compile(rf"^{self.modality}_train_(\d+)_image\.nii(\.gz)?$")
        images = sorted(p for p in folder.iterdir() if pattern.match(p.name))
        if not images:
            raise DataError(
                f"{folder}: no {self.modality}_train_NNNN_image.nii.gz files found (expected "
                f"the MM-WHS layout {self.modality}_train/{self.modality}_train_1001_image.nii.gz)"
            )
        records = []
        for image in images:
            sid = image.name.split("_image")[0]
            label = image.with_name(image.name.replace("_image", "_label"))
            zooms = read_header(image, "image").spacing
            records.append(
                ScanRecord(
                    subject=sid,
                    scan_id=sid,
                    image=image,
                    label=label,
                    spacing=(zooms[2], zooms[0], zooms[1]),
                )
            )
        return records


class MmwhsCtAdapter(MmwhsAdapter):
    """MM-WHS CT training volumes."""

    name = "mmwhs-ct"
    modality = "ct"


class MmwhsMrAdapter(MmwhsAdapter):
    """MM-WHS MR training volumes."""

    name = "mmwhs-mr"
    modality = "mr"
