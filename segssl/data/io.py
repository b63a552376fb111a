"""Reading volumes from disk: NIfTI through nibabel, MetaImage through SimpleITK.

Every reader returns arrays in stored voxel order ``(i, j, k)`` together with a 4 x 4 voxel-to-world
affine in RAS+ millimetres (the NIfTI convention), so that preprocessing can reorient any scan the
same way whatever its format. Errors name the file and say what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segssl.data.errors import DataError

__all__ = [
    "VolumeHeader",
    "affine_spacing",
    "read_header",
    "read_volume",
]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class VolumeHeader:
    """What a file header says without decoding the voxels."""

    path: Path
    shape: tuple[int, ...]
    spacing: tuple[float, ...]  # voxel sizes along the stored axes (mm)
    affine: np.ndarray | None = field(default=None, compare=False)  # 4 x 4 voxel -> RAS (mm)


def _is_mhd(path: Path) -> bool:
    return path.suffix.lower() in (".mhd", ".mha")


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{path}: missing {what} (expected a file here)")


def _mhd_data_file(path: Path) -> Path | None:
    """The ``ElementDataFile`` a ``.mhd`` header points to (None for LOCAL / .mha)."""
    if path.suffix.lower() != ".mhd":
        return None
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise DataError(f"{path}: cannot read MetaImage header: {exc}") from None
    m = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", text, flags=re.MULTILINE)
    if not m:
        raise DataError(f"{path}: MetaImage header has no ElementDataFile entry")
    name = m.group(1)
    if name.upper() == "LOCAL" or name.upper().startswith("LIST"):
        return None
    return path.parent / name


def read_header(path: Path, what: str = "volume") -> VolumeHeader:
    """Read shape and voxel spacing from a header (cheap: voxels are not decoded).

    Raises:
        DataError: missing file, missing MetaImage data file, or an unreadable header.
    """
    path = Path(path)
    _require_file(path, what)
    if _is_mhd(path):
        import SimpleITK as sitk

        data_file = _mhd_data_file(path)
        if data_file is not None and not data_file.is_file():
            raise DataError(f"{data_file}: missing data file of MetaImage header {path.name}")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise DataError(f"{path}: unreadable MetaImage header: {_first_line(exc)}") from None
        size = tuple(int(s) for s in reader.GetSize())
        spacing = tuple(float(s) for s in reader.GetSpacing())
        comps = reader.GetNumberOfComponents()
        if comps > 1:
            size = (*size, comps)
            spacing = (*spacing, 1.0)
        if data_file is not None:
            _check_mhd_size(path, what, data_file, size)
        dim = reader.GetDimension()
        direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)
        affine = _mhd_affine(direction, reader.GetSpacing(), reader.GetOrigin())
        return VolumeHeader(path, size, spacing, affine)
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except Exception as exc:  # nibabel raises many types for broken files
        raise DataError(f"{path}: unreadable NIfTI header: {_first_line(exc)}") from None
    offset = getattr(img.dataobj, "offset", None)
    if isinstance(offset, int):
        nbytes = int(np.prod(shape, dtype=np.int64)) * img.get_data_dtype().itemsize
        _check_nifti_size(path, what, offset + nbytes)
    return VolumeHeader(path, shape, zooms[: len(shape)], np.asarray(img.affine, dtype=np.float64))


# MetaImage element types whose size does not depend on the platform
_MET_SIZES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


def _truncated(path: Path, what: str, expected: int, found: str) -> DataError:
    return DataError(
        f"{path}: truncated {what}: its header describes {expected} bytes (header + voxels) "
        f"but {found}"
    )


def _check_nifti_size(path: Path, what: str, expected: int) -> None:
    """Cheap truncation check of a NIfTI file against the size its header implies.

    Plain ``.nii``: the file must hold ``vox_offset + voxel bytes``. ``.nii.gz``: the gzip
    trailer (ISIZE, the uncompressed size modulo 2**32) is compared first; only when it disagrees
    (a truncated file, or a multi-member stream) is the stream decompressed to count its bytes.
    """
    if path.suffix.lower() != ".gz":
        size = path.stat().st_size
        if size < expected:
            raise _truncated(path, what, expected, f"the file holds only {size}")
        return
    try:
        with open(path, "rb") as fh:
            fh.seek(-4, 2)
            isize = int.from_bytes(fh.read(4), "little")
    except OSError:
        isize = -1
    if isize == expected % 2**32:
        return
    import zlib

    total, ended, corrupt = 0, False, ""
    try:
        with open(path, "rb") as fh:
            d = zlib.decompressobj(wbits=31)
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                while chunk:
                    total += len(d.decompress(chunk))
                    ended = d.eof
                    chunk = d.unused_data.lstrip(b"\0") if d.eof else b""
                    if chunk:  # another gzip member follows (zero padding is skipped)
                        d = zlib.decompressobj(wbits=31)
    except zlib.error as exc:
        corrupt = str(exc)
    if total >= expected:  # all the voxels are there (whatever follows them)
        return
    if corrupt:
        found = f"its gzip stream is corrupt after {total} ({corrupt})"
    elif not ended:
        found = f"its gzip stream breaks off after {total}"
    else:
        found = f"it decompresses to only {total}"
    raise _truncated(path, what, expected, found)


def _check_mhd_size(path: Path, what: str, data_file: Path, shape: tuple[int, ...]) -> None:
    """Truncation check of an uncompressed MetaImage data file (``.raw``) against its header."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return
    fields = dict(
        (m.group(1).lower(), m.group(2).strip())
        for m in re.finditer(r"^\s*(\w+)\s*=\s*(.*?)\s*$", text, flags=re.MULTILINE)
    )
    if fields.get("compresseddata", "false").lower() == "true":
        return
    item = _MET_SIZES.get(fields.get("elementtype", "").upper())
    try:
        header_size = int(fields.get("headersize", "0"))
    except ValueError:
        return
    if item is None or header_size < 0:
        return
    expected = header_size + int(np.prod(shape, dtype=np.int64)) * item
    size = data_file.stat().st_size
    if size < expected:
        raise _truncated(
            data_file, f"data file of {path.name} ({what})", expected, f"the file holds {size}"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def affine_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the three stored axes: the norms of the affine's columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def read_volume(path: Path, what: str = "volume") -> tuple[np.ndarray, np.ndarray]:
    """Decode a volume: ``(array in stored (i, j, k[, c]) order, 4 x 4 RAS affine)``.

    Raises:
        DataError: missing, unreadable or truncated file.
    """
    path = Path(path)
    _require_file(path, what)
    if _is_mhd(path):
        return _read_mhd(path)
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:
        raise DataError(
            f"{path}: unreadable or truncated NIfTI file ({what}): {_first_line(exc)}"
        ) from None
    return np.asarray(data), affine


def _read_mhd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    data_file = _mhd_data_file(path)
    if data_file is not None and not data_file.is_file():
        raise DataError(f"{data_file}: missing data file of MetaImage header {path.name}")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataError(
            f"{path}: unreadable or truncated MetaImage file: {_first_line(exc)}"
        ) from None
    arr = sitk.GetArrayFromImage(img)  # (k, j, i[, c])
    dim = img.GetDimension()
    axes = tuple(range(dim))[::-1]
    arr = np.transpose(arr, (*axes, dim)) if arr.ndim == dim + 1 else np.transpose(arr, axes)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    return arr, _mhd_affine(direction, img.GetSpacing(), img.GetOrigin())


def _mhd_affine(
    direction: np.ndarray, spacing: Sequence[float], origin: Sequence[float]
) -> np.ndarray:
    """4 x 4 voxel -> RAS affine of an ITK image (ITK's world is LPS, NIfTI's is RAS)."""
    sp = np.asarray(spacing, dtype=np.float64)
    affine = np.eye(4)
    n = min(direction.shape[0], 3)
    affine[:n, :n] = (direction * sp[None, :])[:n, :n]
    affine[:n, 3] = np.asarray(origin, dtype=np.float64)[:n]
    return _LPS_TO_RAS @ affine
