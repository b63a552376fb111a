"""PROMISE12 (prostate MR segmentation challenge 2012) archive adapter.

Layout as shipped (training data, MetaImage read through SimpleITK)::

    <root>/Case00.mhd  <root>/Case00.raw
    <root>/Case00_segmentation.mhd  <root>/Case00_segmentation.raw

``<root>`` may also hold the cases under ``TrainingData_Part1..3`` (the split archive); folders
without any segmentation (``TestData``) are skipped. Labels: 0 background, 1 prostate.
"""

from __future__ import annotations

import re

from segssl.data.adapters.base import BaseAdapter
from segssl.data.errors import DataError
from segssl.data.io import read_header
from segssl.data.types import ScanRecord

__all__ = ["Promise12Adapter"]

_CASE = re.compile(r"^Case(\d+)\.mhd$")


class Promise12Adapter(BaseAdapter):
    """Transversal T2-weighted prostate MRI, one scan per subject."""

    name = "promise12"
    class_names = ("Prostate",)
    label_values = (1,)

    def list_scans(self) -> list[ScanRecord]:
        """One scan per ``CaseNN.mhd`` that has a ``CaseNN_segmentation.mhd``."""
        headers = sorted(p for p in self.root.rglob("Case*.mhd") if _CASE.match(p.name))
        if not headers:
            raise DataError(
                f"{self.root}: no CaseNN.mhd files found (expected the PROMISE12 layout "
                "CaseNN.mhd/.raw with CaseNN_segmentation.mhd)"
            )
        # the challenge's TestData folder has CaseNN.mhd without segmentations: a folder with
        # no segmentation at all is test data and skipped; a partial one is an error
        labeled_dirs = {p.parent for p in self.root.rglob("Case*_segmentation.mhd")}
        records = []
        for image in headers:
            if image.parent not in labeled_dirs:
                continue
            case = image.stem
            label = image.with_name(f"{case}_segmentation.mhd")
            if not label.is_file():
                raise DataError(f"{label}: missing segmentation of {image.name}")
            zooms = read_header(image, "image").spacing
            records.append(
                ScanRecord(
                    subject=case,
                    scan_id=case,
                    image=image,
                    label=label,
                    spacing=(zooms[2], zooms[0], zooms[1]),
                )
            )
        if not records:
            raise DataError(
                f"{self.root}: CaseNN.mhd files but no CaseNN_segmentation.mhd found (expected "
                "the PROMISE12 training data)"
            )
        return records
