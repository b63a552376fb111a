"""Preprocessing of raw scans into a memory-mappable cache of 2D slices.

Per scan (settings from :class:`segssl.config.PreprocessConfig`): reorient from the affine to the
closest canonical (RAS) axes so that slices are the same whatever the stored orientation; pick the
through-plane axis and move it first; normalise intensities with the scan's low/high percentiles;
resample in-plane to the target spacing (linear for images, nearest for labels); centre crop/pad
(or resize) to the fixed size.

Cache layout (one compact file per scan, memory-mapped with ``np.load(mmap_mode="r")``)::

    <cache>/manifest.json        sources + checksums, spacing, slice counts, settings, fingerprint
    <cache>/scans/<scan_id>.npy  structured array, one record per slice: image (H, W) float16/32
                                 and label (H, W) uint8 (contiguous class indices, all classes)

The cache is built in a temporary sibling directory, the manifest written last, and the directory
renamed into place atomically, under an exclusive file lock (several Ray trials may prepare the
same cache at once). A cache whose manifest is missing, incomplete, or whose files are missing or
of the wrong size is never taken as complete. The same settings and sources are reused untouched;
changed settings or changed source files (size/mtime, then sha256) rebuild it. Bad input raises
:class:`DataError` and leaves an existing cache untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from segssl.config import PreprocessConfig, config_hash
from segssl.data.adapters import Adapter, get_adapter
from segssl.data.errors import DataError
from segssl.data.io import _mhd_data_file
from segssl.data.types import ScanRecord

__all__ = [
    "CACHE_FORMAT",
    "cache_lock",
    "load_manifest",
    "open_scan",
    "prepare",
    "prepare_records",
    "preprocess_volume",
    "reorient",
    "slice_count",
    "source_files",
    "validate_cache",
]

CACHE_FORMAT = 2  # 2: near-isotropic scans are sliced axially (was: along the stored third axis)
MANIFEST = "manifest.json"


# ------------------------------------------------------------------------- the transforms
def _orientation(affine: np.ndarray, cfg: PreprocessConfig) -> tuple[Any, np.ndarray, int]:
    """``(ornt, spacing, axis)``: the reorientation (nibabel ``io_orientation``, None without
    ``cfg.reorient``), the spacing of the (reoriented) axes and the through-plane axis among
    them (see :func:`reorient`)."""
    from nibabel.orientations import io_orientation

    zooms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    ornt = None
    if cfg.reorient:
        ornt = io_orientation(affine)
        spacing = np.empty(3)
        spacing[ornt[:, 0].astype(int)] = zooms
        axis = int(ornt[2, 0])
    else:
        spacing = zooms
        axis = 2
    if cfg.slice_axis == "auto":
        coarsest = int(np.argmax(spacing))
        others = np.delete(spacing, coarsest)
        # ties: the canonical S axis (the stored third axis when not reoriented), never the
        # storage plane, which differs between subjects of one archive (sagittal vs axial)
        axis = coarsest if spacing[coarsest] > 1.1 * others.max() else 2
    return ornt, spacing, axis


def slice_count(shape: Sequence[int], affine: np.ndarray, cfg: PreprocessConfig) -> int:
    """How many 2D slices preprocessing makes of a volume of stored ``shape`` (from its header:
    no voxel is decoded; in-plane resampling keeps the through-plane axis)."""
    ornt, _, axis = _orientation(affine, cfg)
    stored = axis if ornt is None else int(np.flatnonzero(ornt[:, 0].astype(int) == axis)[0])
    return int(shape[stored])


def reorient(
    image: np.ndarray,
    label: np.ndarray | None,
    affine: np.ndarray,
    cfg: PreprocessConfig,
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float]]:
    """Arrays ``(slices, rows, cols)`` with the through-plane axis first, and their spacing.

    With ``cfg.reorient`` the stored axes are permuted/flipped to the closest canonical RAS axes
    (nibabel ``io_orientation``), so a volume stored flipped or with permuted axes yields the
    same slices. The through-plane axis is the coarsest one (``slice_axis="auto"``; when the
    spacings tie within 10 %, the canonical third axis, i.e. axial slices after reorientation,
    so that near-isotropic scans stored in different planes are sliced alike) or the stored
    third axis (``"stored"``).
    """
    from nibabel.orientations import apply_orientation

    ornt, spacing, axis = _orientation(affine, cfg)
    if ornt is not None:
        image = apply_orientation(image, ornt)
        if label is not None:
            label = apply_orientation(label, ornt)
    image = np.moveaxis(image, axis, 0)
    if label is not None:
        label = np.moveaxis(label, axis, 0)
    rest = [a for a in range(3) if a != axis]
    out_spacing = (float(spacing[axis]), float(spacing[rest[0]]), float(spacing[rest[1]]))
    return image, label, out_spacing


def normalise(
    image: np.ndarray,
    percentiles: Sequence[float],
    clip: bool,
    name: str,
    window: Sequence[float] | None = None,
) -> np.ndarray:
    """``(x - p_lo) / (p_hi - p_lo)`` with the scan's own percentiles, optionally clipped; with a
    fixed ``window`` (e.g. CT Hounsfield units) ``(clip(x, lo, hi) - lo) / (hi - lo)`` instead.

    Raises:
        DataError: the percentiles coincide (a constant image cannot be normalised).
    """
    if window is not None:
        lo, hi = (np.float32(w) for w in window)
        return (np.clip(image.astype(np.float32), lo, hi) - lo) / (hi - lo)
    lo, hi = np.percentile(image, list(percentiles))
    if not hi > lo:
        raise DataError(
            f"{name}: intensity percentiles {tuple(percentiles)} are equal ({lo:g}); "
            "a constant image cannot be normalised"
        )
    out = (image.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0) if clip else out


def _crop_or_pad(arr: np.ndarray, size: tuple[int, int], center: tuple[float, float]) -> np.ndarray:
    """Crop/pad the last two axes to ``size`` around ``center`` (zeros outside)."""
    out = np.zeros((arr.shape[0], *size), dtype=arr.dtype)
    src, dst = [slice(None)], [slice(None)]
    for n, m, c in zip(arr.shape[1:], size, center, strict=True):
        start = int(round(c - m / 2.0))  # first source index of the window
        s0, s1 = max(start, 0), min(start + m, n)
        if s1 <= s0:  # window outside the image: keep it centred instead
            start = (n - m) // 2
            s0, s1 = max(start, 0), min(start + m, n)
        src.append(slice(s0, s1))
        dst.append(slice(s0 - start, s1 - start))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def preprocess_volume(
    image: np.ndarray,
    label: np.ndarray | None,
    affine: np.ndarray,
    cfg: PreprocessConfig,
    name: str = "<scan>",
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float]]:
    """Raw stored-order arrays -> ``(D, H, W)`` float32 image, uint8 label, spacing (dz, dy, dx).

    Args:
        image: ``(i, j, k)`` raw intensities.
        label: ``(i, j, k)`` contiguous class indices, or None.
        affine: 4 x 4 voxel -> RAS world.
        cfg: preprocessing settings.
        name: scan name for error messages.
    """
    image, label, (dz, dy, dx) = reorient(image, label, affine, cfg)
    image = normalise(image, cfg.percentiles, cfg.clip, name, cfg.window)
    if cfg.spacing is not None:
        ty, tx = cfg.spacing
        factors = (1.0, dy / ty, dx / tx)
        h, w = image.shape[1:]
        if abs(factors[1] - 1) > 1e-6 or abs(factors[2] - 1) > 1e-6:
            image = ndimage.zoom(image, factors, order=1, mode="nearest", grid_mode=True)
            if label is not None:
                label = ndimage.zoom(label, factors, order=0, mode="nearest", grid_mode=True)
        dy, dx = dy * h / image.shape[1], dx * w / image.shape[2]
    size = tuple(cfg.size)
    if cfg.fit == "resize":
        h, w = image.shape[1:]
        factors = (1.0, size[0] / h, size[1] / w)
        image = ndimage.zoom(image, factors, order=1, mode="nearest", grid_mode=True)
        if label is not None:
            label = ndimage.zoom(label, factors, order=0, mode="nearest", grid_mode=True)
        dy, dx = dy * h / size[0], dx * w / size[1]
    else:
        center = ((image.shape[1] - 1) / 2.0 + 0.5, (image.shape[2] - 1) / 2.0 + 0.5)
        if cfg.crop_center == "label" and label is not None and label.any():
            _, rows, cols = np.nonzero(label)
            center = ((rows.min() + rows.max() + 1) / 2.0, (cols.min() + cols.max() + 1) / 2.0)
        image = _crop_or_pad(image, size, center)
        if label is not None:
            label = _crop_or_pad(label, size, center)
    return image.astype(np.float32), label, (float(dz), float(dy), float(dx))


# ------------------------------------------------------------------------- sources, hashing
def source_files(record: ScanRecord) -> dict[str, Path]:
    """Every file a scan is read from (MetaImage data files included)."""
    out = {"image": record.image}
    raw = _mhd_data_file(record.image) if record.image.suffix.lower() == ".mhd" else None
    if raw is not None:
        out["image_data"] = raw
    if record.label is not None:
        out["label"] = record.label
        raw = _mhd_data_file(record.label) if record.label.suffix.lower() == ".mhd" else None
        if raw is not None:
            out["label_data"] = raw
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _describe_sources(
    records: Sequence[ScanRecord], root: Path, known: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per scan: its source files with size, mtime and sha256 (reused when size+mtime match)."""
    out = []
    for rec in records:
        files = {}
        for role, path in source_files(rec).items():
            try:
                st = path.stat()
            except OSError:
                raise DataError(
                    f"{path}: missing {role.replace('_', ' ')} of {rec.scan_id}"
                ) from None
            try:
                rel = str(path.resolve().relative_to(root.resolve()))
            except ValueError:
                rel = str(path.resolve())
            prev = known.get(rel)
            if prev and prev["bytes"] == st.st_size and prev["mtime_ns"] == st.st_mtime_ns:
                sha = prev["sha256"]
            else:
                sha = _sha256(path)
            files[role] = {
                "path": rel,
                "bytes": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "sha256": sha,
            }
        out.append(
            {"scan_id": rec.scan_id, "subject": rec.subject, "phase": rec.phase, "sources": files}
        )
    return out


def _fingerprint(
    dataset: str,
    options: dict[str, Any],
    settings: PreprocessConfig,
    class_names: Sequence[str],
    sources: list[dict[str, Any]],
) -> str:
    return config_hash(
        {
            "format": CACHE_FORMAT,
            "dataset": dataset,
            "adapter": options,
            "settings": settings,
            "classes": list(class_names),
            "sources": [
                [
                    s["scan_id"],
                    s["subject"],
                    s["phase"],
                    sorted((k, v["path"], v["sha256"]) for k, v in s["sources"].items()),
                ]
                for s in sources
            ],
        },
        length=32,
    )


# ------------------------------------------------------------------------- cache validity
def load_manifest(cache: str | Path) -> dict[str, Any]:
    """Read ``<cache>/manifest.json``.

    Raises:
        DataError: no manifest (not a cache, or an interrupted build) or invalid JSON.
    """
    path = Path(cache) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: missing (not a segssl cache, or an interrupted build)")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable manifest: {exc}") from None


def validate_cache(cache: str | Path) -> dict[str, Any]:
    """The manifest of a complete cache.

    Raises:
        DataError: missing/incomplete manifest, or a scan file missing or of the wrong size.
    """
    cache = Path(cache)
    manifest = load_manifest(cache)
    if manifest.get("format") != CACHE_FORMAT:
        raise DataError(
            f"{cache / MANIFEST}: cache format {manifest.get('format')!r}, expected "
            f"{CACHE_FORMAT} (made by another segssl version; prepare it again to rebuild it)"
        )
    if not manifest.get("complete"):
        raise DataError(f"{cache / MANIFEST}: incomplete cache (an interrupted build)")
    for scan in manifest.get("scans", []):
        path = cache / scan["file"]
        if not path.is_file() or path.stat().st_size != scan["bytes"]:
            raise DataError(f"{path}: missing or truncated cache file (half-written cache)")
    return manifest


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """Exclusive ``fcntl`` lock on ``<parent>/.<name>.lock`` (safe across processes)."""
    lock = cache.parent / f".{cache.name}.lock"
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock, "a+")  # noqa: SIM115 - held for the duration of the context
    except OSError as exc:
        raise DataError(
            f"{lock}: cannot create the cache lock file ({exc.strerror}); the cache directory "
            "must be writable (set data.cache / --out to a writable place)"
        ) from None
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


def open_scan(cache: Path, entry: dict[str, Any], mmap: bool = True) -> np.ndarray:
    """A cached scan: structured array ``(D,)`` with fields ``image`` and ``label``."""
    return np.load(cache / entry["file"], mmap_mode="r" if mmap else None)


def _slice_dtype(size: tuple[int, int], dtype: str) -> np.dtype:
    return np.dtype([("image", dtype, tuple(size)), ("label", np.uint8, tuple(size))])


# ------------------------------------------------------------------------- building
def _check_labels(adapter: Adapter, records: Sequence[ScanRecord]) -> None:
    """Decode every label volume and check its values (labels are small; images come later)."""
    from segssl.data.io import read_volume

    for rec in records:
        if rec.label is not None:
            raw, _ = read_volume(rec.label, "label")
            adapter.map_labels(raw, rec.label)


def _build(
    adapter: Adapter,
    records: Sequence[ScanRecord],
    tmp: Path,
    cfg: PreprocessConfig,
    sources: list[dict[str, Any]],
    fingerprint: str,
) -> None:
    (tmp / "scans").mkdir(parents=True)
    dtype = _slice_dtype(tuple(cfg.size), cfg.dtype)
    entries = []
    for rec, src in zip(records, sources, strict=True):
        raw = adapter.read(rec)
        image, label, spacing = preprocess_volume(
            raw.image, raw.label, raw.affine, cfg, str(rec.image)
        )
        arr = np.zeros(image.shape[0], dtype=dtype)
        arr["image"] = image.astype(cfg.dtype)
        if label is not None:
            arr["label"] = label
        rel = f"scans/{rec.scan_id}.npy"
        np.save(tmp / rel, arr)
        counts = np.bincount(arr["label"].ravel(), minlength=len(adapter.class_names) + 1)
        entries.append(
            {
                **src,
                "file": rel,
                "bytes": (tmp / rel).stat().st_size,
                "slices": int(image.shape[0]),
                "shape": list(image.shape),
                "spacing": list(spacing),
                "source_spacing": list(raw.spacing),
                "source_shape": list(raw.image.shape),
                "label_voxels": [int(c) for c in counts],
            }
        )
    manifest = {
        "format": CACHE_FORMAT,
        "complete": True,
        "dataset": adapter.name,
        "root": str(adapter.root.resolve()),
        "adapter": adapter.options(),
        "class_names": list(adapter.class_names),
        "label_values": list(adapter.label_values),
        "settings": cfg.model_dump(mode="json"),
        "num_scans": len(entries),
        "num_slices": sum(e["slices"] for e in entries),
        "scans": entries,
        "fingerprint": fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = tmp / MANIFEST
    with open(path, "w") as fh:  # manifest last: its presence marks a complete build
        json.dump(manifest, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def _refuse_foreign(out: Path) -> None:
    """Never replace a directory that is not a segssl cache (a mistyped ``--out``)."""
    if out.is_dir() and any(out.iterdir()):
        ours = {MANIFEST, "scans"}
        if not set(p.name for p in out.iterdir()) <= ours:
            raise DataError(
                f"{out}: exists and is not a segssl cache (expected only {MANIFEST} and scans/); "
                "refusing to overwrite it"
            )
    elif out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")


def prepare_records(
    adapter: Adapter,
    records: Sequence[ScanRecord],
    out: Path,
    cfg: PreprocessConfig,
    log: Any = None,
) -> dict[str, Any]:
    """Build or reuse the cache at ``out`` for already listed ``records``; return its manifest.

    Headers of every scan are checked first (missing files, shapes, 3D), then, under the lock,
    the sources are fingerprinted; an up-to-date complete cache is returned untouched. Otherwise
    labels are checked, the cache is built in a temporary directory and swapped in atomically.
    """
    out = Path(out)
    if not records:
        raise DataError(f"{adapter.root}: no scans found for dataset {adapter.name!r}")
    ids = [r.scan_id for r in records]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataError(f"{adapter.root}: duplicate scan ids {dup[:5]}")
    for rec in records:
        adapter.check(rec)
    _refuse_foreign(out)
    root = adapter.root
    with cache_lock(out):
        known: dict[str, dict[str, Any]] = {}
        current: dict[str, Any] | None = None
        try:
            current = validate_cache(out)
        except DataError:
            current = None
        with contextlib.suppress(DataError):
            for scan in (current or load_manifest(out)).get("scans", []):
                for v in scan.get("sources", {}).values():
                    known[v["path"]] = v
        sources = _describe_sources(records, root, known)
        fingerprint = _fingerprint(
            adapter.name, adapter.options(), cfg, adapter.class_names, sources
        )
        if current is not None and current.get("fingerprint") == fingerprint:
            return current
        _check_labels(adapter, records)
        for stale in out.parent.glob(f".{out.name}.tmp-*"):  # interrupted builds (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            if log is not None:
                log(f"preparing {len(records)} scans of {adapter.name} into {out}")
            _build(adapter, records, tmp, cfg, sources, fingerprint)
            if out.exists():
                old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return validate_cache(out)


def prepare(
    dataset: str,
    root: str | Path,
    out: str | Path,
    preprocess_cfg: PreprocessConfig | None = None,
    *,
    modality: int | str = 0,
) -> Path:
    """Build (or reuse) the preprocessed cache of the archive at ``root`` in ``out``.

    Args:
        dataset: adapter name (``acdc``, ``promise12``, ``msd``, ``msd-prostate``, ...).
        root: the archive root as shipped.
        out: the cache directory (its parent gets a ``.<name>.lock`` file).
        preprocess_cfg: settings (defaults: :class:`PreprocessConfig`).
        modality: channel of multi-modal Decathlon images (index or name).

    Returns:
        ``out`` as a Path.

    Raises:
        DataError: any bad input (the existing cache at ``out`` is left untouched).
    """
    adapter = get_adapter(dataset, root, modality=modality)
    records = adapter.list_scans()
    prepare_records(adapter, records, Path(out), preprocess_cfg or PreprocessConfig())
    return Path(out)
