"""The adapter interface shared by every dataset, and the common reading/validation logic.

An adapter knows one archive layout: it lists the scans of an archive root (nothing decoded),
checks their headers cheaply, and reads one scan as arrays in stored voxel order with a RAS
affine, its raw label values mapped to contiguous class indices ``0..K``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from segssl.data.errors import DataError
from segssl.data.io import VolumeHeader, affine_spacing, read_header, read_volume
from segssl.data.types import ScanRecord

__all__ = ["Adapter", "BaseAdapter", "RawScan", "squeeze_shape"]


class RawScan(NamedTuple):
    """One decoded scan in stored voxel order ``(i, j, k)``."""

    image: np.ndarray  # (i, j, k) float32
    label: np.ndarray | None  # (i, j, k) uint8 contiguous class indices 0..K
    spacing: tuple[float, float, float]  # voxel sizes along i, j, k (mm)
    affine: np.ndarray  # 4 x 4 voxel -> RAS world (mm)


@runtime_checkable
class Adapter(Protocol):
    """What every dataset adapter provides (see :func:`segssl.data.adapters.get_adapter`)."""

    name: str
    root: Path
    class_names: tuple[str, ...]  # foreground classes, in class-index order 1..K
    label_values: tuple[int, ...]  # raw label value of each foreground class

    def list_scans(self) -> list[ScanRecord]:
        """All labeled scans of the archive, sorted by scan id (no voxel decoded)."""
        ...

    def check(self, record: ScanRecord) -> VolumeHeader:
        """Validate a scan's headers (files exist, 3D, image/label shapes agree)."""
        ...

    def read(self, record: ScanRecord) -> RawScan:
        """Decode a scan and map its labels to contiguous class indices."""
        ...

    def map_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw label values -> class indices; values outside the label set are errors."""
        ...

    def options(self) -> dict[str, Any]:
        """Adapter options that change what is read (part of the cache fingerprint)."""
        ...


def squeeze_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop trailing singleton axes beyond the third (``(X, Y, Z, 1)`` is a 3D volume)."""
    out = list(shape)
    while len(out) > 3 and out[-1] == 1:
        out.pop()
    return tuple(out)


def _check_same_grid(img: VolumeHeader, lab: VolumeHeader, record: ScanRecord) -> None:
    """The label must lie on the image's voxel grid: same axis directions and voxel sizes.

    Preprocessing reorients both arrays with the image's affine, so a label stored flipped or
    permuted relative to its image (e.g. re-saved by another tool) would be silently misaligned.
    Origins are not compared (some archives round them in label headers).

    Raises:
        DataError: naming both files, their axis codes and voxel sizes.
    """
    if img.affine is None or lab.affine is None:
        return
    from nibabel.orientations import aff2axcodes

    codes_i, codes_l = aff2axcodes(img.affine), aff2axcodes(lab.affine)
    zoom_i = np.linalg.norm(img.affine[:3, :3], axis=0)
    zoom_l = np.linalg.norm(lab.affine[:3, :3], axis=0)
    if codes_i != codes_l or not np.allclose(zoom_i, zoom_l, rtol=0.01):
        raise DataError(
            f"{record.label}: label is not on the voxel grid of its image {record.image.name}: "
            f"axes {''.join(codes_l)} with voxel size {tuple(np.round(zoom_l, 3).tolist())} mm, "
            f"expected {''.join(codes_i)} with {tuple(np.round(zoom_i, 3).tolist())} mm"
        )


class BaseAdapter:
    """Common logic: header checks, 3D/4D handling, label mapping. Subclasses list scans.

    Attributes:
        channel: for 4D images (several modalities along the 4th axis), the index to keep;
            None means a 4D image is an error.
    """

    name: str = ""
    class_names: tuple[str, ...] = ()
    label_values: tuple[int, ...] = ()

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.channel: int | None = None
        if not self.root.exists():
            raise DataError(f"{self.root}: dataset root does not exist (dataset {self.name!r})")
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root is not a directory")

    # ------------------------------------------------------------------ to be provided
    def list_scans(self) -> list[ScanRecord]:  # pragma: no cover - abstract
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """Adapter options that change what is read (part of the cache fingerprint)."""
        return {"channel": self.channel}

    # ------------------------------------------------------------------ shared logic
    def _spatial_shape(self, header: VolumeHeader, what: str) -> tuple[int, int, int]:
        shape = squeeze_shape(header.shape)
        if len(shape) == 4 and self.channel is not None:
            if not 0 <= self.channel < shape[3]:
                raise DataError(
                    f"{header.path}: {what} has {shape[3]} channels along axis 4, "
                    f"channel {self.channel} requested"
                )
            return shape[:3]  # type: ignore[return-value]
        if len(shape) != 3:
            raise DataError(f"{header.path}: expected a 3D {what}, got shape {header.shape}")
        if min(shape) < 1:
            raise DataError(f"{header.path}: empty {what}, shape {header.shape}")
        return shape  # type: ignore[return-value]

    def check(self, record: ScanRecord) -> VolumeHeader:
        """Validate headers: files present and readable, 3D, image and label shapes equal."""
        img = read_header(record.image, "image")
        shape = self._spatial_shape(img, "image")
        if record.label is not None:
            lab = read_header(record.label, "label")
            lshape = squeeze_shape(lab.shape)
            if len(lshape) != 3:
                raise DataError(f"{record.label}: expected a 3D label volume, got {lab.shape}")
            if lshape != shape:
                raise DataError(
                    f"{record.label}: label shape {lshape} does not match image shape {shape} "
                    f"of {record.image.name}"
                )
            _check_same_grid(img, lab, record)
        spacing = img.spacing[:3]
        if min(spacing) <= 0:
            raise DataError(f"{record.image}: non-positive voxel spacing {spacing} in the header")
        return VolumeHeader(record.image, shape, tuple(spacing), img.affine)

    def map_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw label values -> contiguous class indices (uint8).

        Raises:
            DataError: a value outside ``{0} | label_values`` (names the file and the values).
        """
        values = np.unique(raw)
        known = np.asarray((0, *self.label_values), dtype=np.float64)
        bad = [v for v in values.tolist() if not np.any(np.isclose(float(v), known))]
        if bad:
            shown = ", ".join(f"{v:g}" for v in bad[:10])
            raise DataError(
                f"{path}: label values {{{shown}}} outside the {self.name} label set "
                f"{sorted(int(k) for k in known)} (classes {', '.join(self.class_names)})"
            )
        out = np.zeros(raw.shape, dtype=np.uint8)
        for index, value in enumerate(self.label_values, start=1):
            out[np.isclose(raw, value)] = index
        return out

    def read(self, record: ScanRecord) -> RawScan:
        """Decode image and label, keep the configured channel, map the labels."""
        image, affine = read_volume(record.image, "image")
        shape = squeeze_shape(image.shape)
        image = image.reshape(shape)
        if image.ndim == 4 and self.channel is not None:
            image = image[..., self.channel]
        if image.ndim != 3:
            raise DataError(f"{record.image}: expected a 3D image, got shape {shape}")
        image = np.asarray(image, dtype=np.float32)
        if not np.all(np.isfinite(image)):
            raise DataError(f"{record.image}: image contains NaN or infinite values")
        label = None
        if record.label is not None:
            raw, _ = read_volume(record.label, "label")
            raw = raw.reshape(squeeze_shape(raw.shape))
            if raw.shape != image.shape:
                raise DataError(
                    f"{record.label}: label shape {raw.shape} does not match image shape "
                    f"{image.shape} of {record.image.name}"
                )
            label = self.map_labels(raw, record.label)
        return RawScan(image, label, affine_spacing(affine), affine)
