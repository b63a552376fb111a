"""ACDC (Automated Cardiac Diagnosis Challenge) archive adapter.

Layout as shipped::

    <root>/training/patient001/Info.cfg                      ED: 1, ES: 12, Group, Height, ...
    <root>/training/patient001/patient001_frame01.nii.gz     end-diastolic frame (ED)
    <root>/training/patient001/patient001_frame01_gt.nii.gz  its labels
    <root>/training/patient001/patient001_frame12.nii.gz     end-systolic frame (ES)
    <root>/training/patient001/patient001_4d.nii.gz          the cine (not used)

``<root>`` may also be the ``training`` folder itself. Labels: 0 background, 1 RV, 2 Myo, 3 LV.
Each patient gives two scans (``patient001_ED``, ``patient001_ES``) of one subject.
"""

from __future__ import annotations

import re
from pathlib import Path

from segssl.data.adapters.base import BaseAdapter
from segssl.data.errors import DataError
from segssl.data.io import read_header
from segssl.data.types import ScanRecord

__all__ = ["AcdcAdapter", "read_info_cfg"]

_PATIENT = re.compile(r"^patient\d{3}$")


def read_info_cfg(path: Path) -> dict[str, str]:
    """Parse an ACDC ``Info.cfg`` (``Key: value`` lines).

    Raises:
        DataError: missing file, or ED/ES missing or not integers.
    """
    if not path.is_file():
        raise DataError(f"{path}: missing Info.cfg (expected ED/ES frame numbers)")
    info: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if not info.get(key, "").isdigit():
            raise DataError(
                f"{path}: expected an integer '{key}: <frame>' line, got {info.get(key)!r}"
            )
    return info


class AcdcAdapter(BaseAdapter):
    """Short-axis cine MRI, ED and ES frames with RV/Myo/LV labels."""

    name = "acdc"
    class_names = ("RV", "Myo", "LV")
    label_values = (1, 2, 3)

    def _patients_dir(self) -> Path:
        training = self.root / "training"
        return training if training.is_dir() else self.root

    def list_scans(self) -> list[ScanRecord]:
        """Two scans (ED, ES) per ``patientNNN`` folder, frames taken from ``Info.cfg``."""
        base = self._patients_dir()
        patients = sorted(p for p in base.iterdir() if p.is_dir() and _PATIENT.match(p.name))
        if not patients:
            raise DataError(
                f"{base}: no patientNNN folders found (expected the ACDC layout "
                "training/patientNNN/patientNNN_frameFF.nii.gz)"
            )
        records: list[ScanRecord] = []
        for folder in patients:
            pid = folder.name
            info = read_info_cfg(folder / "Info.cfg")
            for phase in ("ED", "ES"):
                frame = int(info[phase])
                image = folder / f"{pid}_frame{frame:02d}.nii.gz"
                label = folder / f"{pid}_frame{frame:02d}_gt.nii.gz"
                header = read_header(image, f"{phase} image (Info.cfg {phase}: {frame})")
                zooms = header.spacing
                spacing = (zooms[2], zooms[0], zooms[1]) if len(zooms) >= 3 else None
                records.append(
                    ScanRecord(
                        subject=pid,
                        scan_id=f"{pid}_{phase}",
                        image=image,
                        label=label,
                        phase=phase,
                        spacing=spacing,
                        extra={"frame": frame, "group": info.get("Group")},
                    )
                )
        return records
