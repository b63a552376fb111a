"""3D segmentation metrics per scan: Dice, HD95, ASD and NSD in millimetres.

Predictions of the 2D slices of a scan are stacked back into a volume and compared with the
ground truth as a whole (the papers' 3D protocol). Definitions (every table caption states the
ones its numbers use, see :func:`describe`):

* **Dice** ``2 |P & G| / (|P| + |G|)`` over all voxels of the scan.
* **Surfaces** are the voxels of a mask that have at least one 6-connected neighbour outside it
  (``mask & ~binary_erosion(mask)``, the volume border counts as outside).
* **Surface distances** are Euclidean distances in millimetres, from
  ``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``, from every surface voxel of one
  mask to the nearest surface voxel of the other (the two *directed* distance sets).
* **HD95** has two definitions in the field, chosen by ``variant``:

  - ``max`` (default): the larger of the two directed 95th percentiles, as MONAI's
    ``compute_hausdorff_distance(percentile=95)``, DeepMind's ``surface-distance`` and
    MetricsReloaded;
  - ``pooled``: the 95th percentile of both directions' distances pooled, as medpy's ``hd95``.

* **ASD** is the average symmetric surface distance, the mean of both directions pooled,
  ``(sum d(P->G) + sum d(G->P)) / (|dP| + |dG|)`` (medpy's ``assd`` averages the two directed
  means instead; both agree when the surfaces have equal size).
* **NSD** (normalised surface Dice at a tolerance ``tau`` in mm): the fraction of both surfaces'
  voxels lying within ``tau`` of the other surface,
  ``(|d(P->G) <= tau| + |d(G->P) <= tau|) / (|dP| + |dG|)`` (surface voxels counted, as MONAI's
  ``compute_surface_dice`` without sub-voxel areas).

Empty masks (the policy is explicit and every case is counted, never hidden):

* both prediction and ground truth empty (``both_empty``): ``"perfect"`` (default) scores Dice 1,
  NSD 1, HD95 = ASD = 0; ``"exclude"`` leaves the scan out of every metric of that class;
* exactly one empty (``one_empty``): Dice 0 and NSD 0 always; HD95 and ASD are undefined, so
  ``"exclude"`` (default) leaves the scan out of the distance means, ``"worst"`` scores the
  diagonal of the volume in mm (the largest possible distance, as nnU-Net-style evaluations do).

:func:`evaluate_volumes` reports how many scans fell in each case per class
(``"empty_both/<class>"``, ``"empty_one/<class>"``, and ``"<metric>_undefined/<class>"`` for the
scans a distance mean left out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "HD95_VARIANTS",
    "MetricDefs",
    "asd",
    "describe",
    "dice",
    "evaluate_volumes",
    "hd95",
    "nsd",
    "surface_distances",
]

HD95_VARIANTS = ("max", "pooled")
BOTH_EMPTY = ("perfect", "exclude")
ONE_EMPTY = ("exclude", "worst")

_STRUCT_CACHE: dict[int, np.ndarray] = {}


@dataclass(frozen=True)
class MetricDefs:
    """Which metric definitions an evaluation uses (the run config's ``metrics`` section)."""

    hd95: str = "max"
    nsd_tolerance: float = 1.0  # mm
    both_empty: str = "perfect"
    one_empty: str = "exclude"

    def __post_init__(self) -> None:
        _check_choice("hd95 variant", self.hd95, HD95_VARIANTS)
        _check_choice("both_empty policy", self.both_empty, BOTH_EMPTY)
        _check_choice("one_empty policy", self.one_empty, ONE_EMPTY)
        if not (math.isfinite(self.nsd_tolerance) and self.nsd_tolerance > 0):
            raise ValueError(
                f"nsd_tolerance must be a positive number of mm, got {self.nsd_tolerance}"
            )


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


def describe(defs: MetricDefs) -> str:
    """One sentence stating the definitions, for table captions."""
    hd = (
        "HD95: max of the two directed 95th percentiles (MONAI, surface-distance, MetricsReloaded)"
        if defs.hd95 == "max"
        else "HD95: 95th percentile of both directions pooled (medpy)"
    )
    both = (
        "both empty scores Dice 1, distance 0"
        if defs.both_empty == "perfect"
        else "scans with both masks empty are left out"
    )
    one = (
        "one empty scores Dice 0 and leaves the scan out of HD95/ASD (counted)"
        if defs.one_empty == "exclude"
        else "one empty scores Dice 0 and the volume diagonal as HD95/ASD"
    )
    return (
        f"3D metrics per scan, averaged over scans then classes; {hd}; ASD pooled over both "
        f"directions; NSD at {defs.nsd_tolerance:g} mm; empty masks: {both}, {one}."
    )


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(
            f"pred and gt must have the same shape, got pred {pred.shape} and gt {gt.shape}"
        )
    if pred.ndim not in (2, 3):
        raise ValueError(f"expected 2D or 3D label volumes, got shape {pred.shape}")
    for name, arr in (("pred", pred), ("gt", gt)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(f"{name} must be an integer label volume, got dtype {arr.dtype}")


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(
            f"spacing must hold {ndim} positive finite values (one per axis), got {tuple(spacing)}"
        )
    return sp


def dice(pred: np.ndarray, gt: np.ndarray, label: int) -> float:
    """3D Dice of one label over a whole scan (empty vs empty = 1).

    Args:
        pred: integer label volume ``(D, H, W)`` (or 2D).
        gt: integer label volume of the same shape.
        label: the label value to score.

    Returns:
        Dice in [0, 1].
    """
    _check_pair(pred, gt)
    p = np.asarray(pred) == label
    g = np.asarray(gt) == label
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return 1.0
    return 2.0 * float(np.logical_and(p, g).sum()) / denom


def _surface(mask: np.ndarray) -> np.ndarray:
    struct = _STRUCT_CACHE.setdefault(mask.ndim, ndimage.generate_binary_structure(mask.ndim, 1))
    return mask & ~ndimage.binary_erosion(mask, structure=struct, border_value=0)


def surface_distances(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (mm) between two non-empty boolean masks.

    Args:
        a: boolean mask.
        b: boolean mask of the same shape.
        spacing: voxel size per axis (mm), in the axis order of the arrays.

    Returns:
        ``(d_ab, d_ba)``: for every surface voxel of ``a`` the distance to the surface of ``b``,
        and vice versa (1D float arrays).
    """
    sp = _check_spacing(spacing, a.ndim)
    both = a | b
    if not both.any() or not a.any() or not b.any():
        raise ValueError("surface_distances needs two non-empty masks")
    # crop to the bounding box of both masks plus a one-voxel margin (exact, and much faster)
    idx = np.nonzero(both)
    sl = tuple(
        slice(max(int(i.min()) - 1, 0), min(int(i.max()) + 2, n))
        for i, n in zip(idx, both.shape, strict=True)
    )
    a_c, b_c = a[sl], b[sl]  # outside the volume counts as background (border_value=0)
    sa, sb = _surface(a_c), _surface(b_c)
    dt_b = ndimage.distance_transform_edt(~sb, sampling=sp)
    dt_a = ndimage.distance_transform_edt(~sa, sampling=sp)
    return dt_b[sa], dt_a[sb]


def _masks(
    pred: np.ndarray, gt: np.ndarray, label: int, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    _check_pair(pred, gt)
    _check_spacing(spacing, np.asarray(pred).ndim)
    return np.asarray(pred) == label, np.asarray(gt) == label


def _diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def _hd95_of(d: tuple[np.ndarray, np.ndarray], variant: str) -> float:
    if variant == "max":
        return float(max(np.percentile(d[0], 95), np.percentile(d[1], 95)))
    return float(np.percentile(np.concatenate(d), 95))


def _nsd_of(d: tuple[np.ndarray, np.ndarray], tolerance: float) -> float:
    within = int((d[0] <= tolerance).sum()) + int((d[1] <= tolerance).sum())
    return within / (d[0].size + d[1].size)


def _scan_values(
    p: np.ndarray, g: np.ndarray, spacing: Sequence[float], defs: MetricDefs, distances: bool
) -> tuple[dict[str, float], str]:
    """Every metric of one class in one scan, and its empty case (``none|both|one``)."""
    has_p, has_g = bool(p.any()), bool(g.any())
    nan = float("nan")
    if not has_p and not has_g:
        if defs.both_empty == "exclude":
            return {"dsc": nan, "hd95": nan, "asd": nan, "nsd": nan}, "both"
        return {"dsc": 1.0, "hd95": 0.0, "asd": 0.0, "nsd": 1.0}, "both"
    inter = float(np.logical_and(p, g).sum())
    out = {"dsc": 2.0 * inter / (float(p.sum()) + float(g.sum()))}
    if not distances:
        return out, ("one" if has_p != has_g else "none")
    if has_p != has_g:
        worst = _diagonal(p.shape, spacing) if defs.one_empty == "worst" else nan
        out.update(hd95=worst, asd=worst, nsd=0.0)
        return out, "one"
    d = surface_distances(p, g, spacing)
    out.update(
        hd95=_hd95_of(d, defs.hd95),
        asd=float(np.concatenate(d).mean()),
        nsd=_nsd_of(d, defs.nsd_tolerance),
    )
    return out, "none"


def _distance_metric(
    pred: np.ndarray,
    gt: np.ndarray,
    label: int,
    spacing: Sequence[float],
    defs: MetricDefs,
    name: str,
) -> float:
    p, g = _masks(pred, gt, label, spacing)
    return _scan_values(p, g, spacing, defs, True)[0][name]


def hd95(
    pred: np.ndarray,
    gt: np.ndarray,
    label: int,
    spacing: Sequence[float],
    variant: str = "max",
) -> float:
    """95th-percentile Hausdorff distance (mm) of one label.

    Args:
        pred: integer label volume.
        gt: integer label volume of the same shape.
        label: label value to score.
        spacing: voxel size per axis (mm), same axis order as the arrays.
        variant: ``max`` (of the two directed percentiles; MONAI) or ``pooled`` (medpy).

    Returns:
        HD95 >= 0; 0 if both are empty; NaN if exactly one is empty.
    """
    return _distance_metric(pred, gt, label, spacing, MetricDefs(hd95=variant), "hd95")


def asd(pred: np.ndarray, gt: np.ndarray, label: int, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance (mm) of one label.

    Returns:
        ASD >= 0; 0 if both are empty; NaN if exactly one is empty.
    """
    return _distance_metric(pred, gt, label, spacing, MetricDefs(), "asd")


def nsd(
    pred: np.ndarray, gt: np.ndarray, label: int, spacing: Sequence[float], tolerance: float
) -> float:
    """Normalised surface Dice of one label at ``tolerance`` mm.

    Returns:
        NSD in [0, 1]; 1 if both are empty; 0 if exactly one is empty.
    """
    defs = MetricDefs(nsd_tolerance=tolerance)
    return _distance_metric(pred, gt, label, spacing, defs, "nsd")


def _class_map(class_names: Mapping[int, str] | Sequence[str]) -> dict[int, str]:
    if isinstance(class_names, Mapping):
        out = {int(k): str(v) for k, v in class_names.items()}
    elif isinstance(class_names, str):
        raise ValueError(f"class_names must be a mapping or a list of names, got {class_names!r}")
    else:
        out = {i + 1: str(name) for i, name in enumerate(class_names)}
    if not out:
        raise ValueError("class_names must name at least one foreground class")
    if len(set(out.values())) != len(out):
        raise ValueError(f"class names must be unique, got {list(out.values())}")
    return out


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=float)
    defined = arr[~np.isnan(arr)]
    return float(defined.mean()) if defined.size else float("nan")


def _check_inputs(
    preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], spacings: Sequence[Sequence[float]]
) -> None:
    n = len(preds)
    if n == 0 or len(gts) != n or len(spacings) != n:
        raise ValueError(
            f"preds, gts and spacings must be non-empty and of equal length, got "
            f"{len(preds)}, {len(gts)} and {len(spacings)}"
        )
    for i, (p, g, sp) in enumerate(zip(preds, gts, spacings, strict=True)):
        try:
            _check_pair(p, g)
            _check_spacing(sp, np.asarray(p).ndim)
        except ValueError as exc:
            raise ValueError(f"scan {i}: {exc}") from None


def evaluate_volumes(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    spacings: Sequence[Sequence[float]],
    class_names: Mapping[int, str] | Sequence[str],
    distances: bool = True,
    defs: MetricDefs | None = None,
    per_scan: bool = False,
) -> dict[str, float]:
    """Per-class means over scans and means over classes of Dice, HD95, ASD and NSD.

    Args:
        preds: one integer label volume per scan.
        gts: the ground-truth volumes, same order and shapes.
        spacings: one spacing (mm per axis) per scan.
        class_names: ``{label value: name}`` of the foreground classes to score, or a list of
            names for labels ``1..n`` (e.g. ``["RV", "Myo", "LV"]`` for ACDC).
        distances: also compute HD95, ASD and NSD (the costlier part; Dice only when False).
        defs: the metric definitions (default :class:`MetricDefs`: HD95 ``max``, NSD at 1 mm).
        per_scan: also return each scan's Dice, ``"scan/dsc/<i>"`` (mean over the classes
            defined in that scan) and ``"scan/dsc/<class>/<i>"`` (the variance unit "over test
            scans").

    Returns:
        ``{"dsc": mean over classes, "dsc/<name>": mean over scans, "hd95", "hd95/<name>",
        "asd", "asd/<name>", "nsd", "nsd/<name>", "hd95_undefined/<name>",
        "asd_undefined/<name>", "empty_both/<name>", "empty_one/<name>", "n_scans"}``. Means
        average the scans (classes) where a value is defined (NaN if none is).

    Raises:
        ValueError: if the sequences differ in length or are empty, or on bad volumes.
    """
    defs = defs or MetricDefs()
    _check_inputs(preds, gts, spacings)
    names = _class_map(class_names)
    metrics = ("dsc", "hd95", "asd", "nsd") if distances else ("dsc",)
    out: dict[str, float] = {"n_scans": float(len(preds))}
    per_metric: dict[str, list[float]] = {m: [] for m in metrics}
    scan_dsc: list[list[float]] = [[] for _ in preds]
    for label, name in names.items():
        values: dict[str, list[float]] = {m: [] for m in metrics}
        cases = {"both": 0, "one": 0}
        for i, (p, g, sp) in enumerate(zip(preds, gts, spacings, strict=True)):
            pm, gm = np.asarray(p) == label, np.asarray(g) == label
            vals, case = _scan_values(pm, gm, sp, defs, distances)
            cases[case] = cases.get(case, 0) + 1
            for m in metrics:
                values[m].append(vals[m])
            scan_dsc[i].append(vals["dsc"])
            if per_scan:
                out[f"scan/dsc/{name}/{i}"] = vals["dsc"]
        out[f"empty_both/{name}"] = float(cases["both"])
        out[f"empty_one/{name}"] = float(cases["one"])
        for m in metrics:
            mean = _nanmean(values[m])
            out[f"{m}/{name}"] = mean
            if m in ("hd95", "asd"):
                out[f"{m}_undefined/{name}"] = float(np.isnan(values[m]).sum())
            per_metric[m].append(mean)
    for m in metrics:
        out[m] = _nanmean(per_metric[m])
    if per_scan:
        for i, vals in enumerate(scan_dsc):
            out[f"scan/dsc/{i}"] = _nanmean(vals)
    return out
