"""Medical Segmentation Decathlon adapter, driven by any task's ``dataset.json``.

Layout as shipped::

    <root>/dataset.json             name, modality {"0": "T2", "1": "ADC"}, labels, training list
    <root>/imagesTr/prostate_00.nii.gz   (4D when the task has several modalities)
    <root>/labelsTr/prostate_00.nii.gz

Scans come from the ``training`` list of ``dataset.json`` (so macOS ``._*`` files in the tarballs
are never picked up). Class names and raw label values come from its ``labels``; for multi-modal
tasks the ``modality`` option (an index or a name such as ``"T2"``) picks the channel.
Presets: ``msd-prostate`` (Task05_Prostate: PZ, TZ; T2) and ``msd-spleen`` (Task09_Spleen).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from segssl.config import did_you_mean
from segssl.data.adapters.base import BaseAdapter
from segssl.data.errors import DataError
from segssl.data.io import read_header
from segssl.data.types import ScanRecord

__all__ = ["MsdAdapter", "MsdProstateAdapter", "MsdSpleenAdapter", "read_dataset_json"]


def read_dataset_json(path: Path) -> dict[str, Any]:
    """Read and check a Decathlon ``dataset.json`` (labels, modality, training list).

    Raises:
        DataError: missing or invalid file, or a required key missing.
    """
    if not path.is_file():
        raise DataError(f"{path}: missing dataset.json (expected a Decathlon task folder)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise DataError(
            f"{path}: expected a JSON object with 'labels', 'modality' and 'training', got a "
            f"{type(meta).__name__}"
        )
    for key in ("labels", "modality", "training"):
        if key not in meta:
            raise DataError(f"{path}: missing key {key!r} (expected a Decathlon dataset.json)")
    for key in ("labels", "modality"):
        try:
            {int(k): str(v) for k, v in meta[key].items()}
        except (AttributeError, TypeError, ValueError):
            raise DataError(
                f'{path}: {key!r} must map integer strings to names (e.g. {{"0": "T2"}}), '
                f"got {meta[key]!r}"
            ) from None
    if not meta["modality"]:
        raise DataError(f"{path}: 'modality' is empty (expected at least {{\"0\": <name>}})")
    labels = {int(k): str(v) for k, v in meta["labels"].items()}
    if 0 not in labels or len(labels) < 2:
        raise DataError(f"{path}: 'labels' must name background '0' and at least one class")
    if not isinstance(meta["training"], list):
        raise DataError(
            f'{path}: \'training\' must be a list of {{"image": ..., "label": ...}} entries, '
            f"got a {type(meta['training']).__name__}"
        )
    return meta


class MsdAdapter(BaseAdapter):
    """Any Decathlon task: class names, label values and modalities from ``dataset.json``."""

    name = "msd"
    task_name: str | None = None  # presets check dataset.json's "name"

    def __init__(self, root: str | Path, modality: int | str = 0) -> None:
        super().__init__(root)
        self.meta = read_dataset_json(self.root / "dataset.json")
        labels = {int(k): str(v) for k, v in self.meta["labels"].items()}
        self.label_values = tuple(sorted(v for v in labels if v != 0))
        self.class_names = tuple(labels[v] for v in self.label_values)
        self.modalities = {int(k): str(v) for k, v in self.meta["modality"].items()}
        channel = self._channel(modality)  # validated even when there is one modality
        self.channel = channel if len(self.modalities) > 1 else None
        if self.task_name and str(self.meta.get("name", "")).lower() != self.task_name.lower():
            raise DataError(
                f"{self.root / 'dataset.json'}: name {self.meta.get('name')!r}, expected "
                f"{self.task_name!r} for dataset {self.name!r} (use dataset 'msd' for other tasks)"
            )

    def _channel(self, modality: int | str) -> int:
        if isinstance(modality, int):
            if modality not in self.modalities:
                raise DataError(
                    f"data.modality={modality}: no such channel; {self.root / 'dataset.json'} "
                    f"lists {self.modalities}"
                )
            return modality
        by_name = {v.lower(): k for k, v in self.modalities.items()}
        if modality.lower() not in by_name:
            names = list(self.modalities.values())
            raise DataError(
                f"data.modality={modality!r}: unknown modality{did_you_mean(modality, names)}; "
                f"{self.root / 'dataset.json'} lists {names}"
            )
        return by_name[modality.lower()]

    def list_scans(self) -> list[ScanRecord]:
        """One scan per entry of the ``training`` list of ``dataset.json``."""
        records = []
        for entry in self.meta["training"]:
            try:
                image = (self.root / entry["image"]).resolve()
                label = (self.root / entry["label"]).resolve()
            except (TypeError, KeyError):
                raise DataError(
                    f"{self.root / 'dataset.json'}: training entry {entry!r} needs 'image' and "
                    "'label'"
                ) from None
            sid = image.name.split(".nii")[0]
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
        if not records:
            raise DataError(f"{self.root / 'dataset.json'}: empty 'training' list")
        return sorted(records, key=lambda r: r.scan_id)


class MsdProstateAdapter(MsdAdapter):
    """Task05_Prostate: 4D T2/ADC MRI, labels 1 PZ, 2 TZ; the T2 channel by default."""

    name = "msd-prostate"
    task_name = "Prostate"


class MsdSpleenAdapter(MsdAdapter):
    """Task09_Spleen: portal venous CT, label 1 spleen."""

    name = "msd-spleen"
    task_name = "Spleen"
