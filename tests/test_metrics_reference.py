"""HD95 (both variants), ASD and NSD against medpy and MONAI on random anisotropic volumes.

medpy and MONAI are test-only dependencies (the ``test`` extra); MONAI is installed without its
dependencies so that it never replaces the pinned torch.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from segssl.metrics import MetricDefs, asd, evaluate_volumes, hd95, nsd

medpy_binary = pytest.importorskip("medpy.metric.binary")
monai_metrics = pytest.importorskip("monai.metrics")
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI deprecation notes

SPACINGS = [(2.5, 0.7, 0.9), (5.0, 1.25, 1.25), (1.0, 0.5, 3.0)]


def _blob(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A random smooth blob: thresholded, Gaussian-smoothed noise (irregular surfaces)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0)
    return (noise > np.quantile(noise, 0.8)).astype(np.int64)


def _cases() -> list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    rng = np.random.default_rng(11)
    out = []
    for i in range(6):
        gt = _blob(rng, (12, 24, 20))
        pred = ndimage.binary_dilation(gt, iterations=1 + i % 2).astype(np.int64)
        pred = pred & (rng.random(gt.shape) > 0.15)  # ragged, disconnected bits
        out.append((pred.astype(np.int64), gt, SPACINGS[i % len(SPACINGS)]))
    return out


def _onehot(vol: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(vol == 1)
    return torch.stack([~t, t])[None].float()


CASES = _cases()


@pytest.mark.parametrize("case", range(len(CASES)))
def test_hd95_pooled_equals_medpy(case: int) -> None:
    pred, gt, sp = CASES[case]
    ref = medpy_binary.hd95(pred, gt, voxelspacing=sp, connectivity=1)
    assert hd95(pred, gt, 1, sp, variant="pooled") == pytest.approx(ref, rel=0.01)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_hd95_max_asd_nsd_equal_monai(case: int) -> None:
    pred, gt, sp = CASES[case]
    p, g = _onehot(pred), _onehot(gt)
    ref_hd = float(monai_metrics.compute_hausdorff_distance(p, g, percentile=95, spacing=sp))
    ref_asd = float(
        monai_metrics.compute_average_surface_distance(p, g, symmetric=True, spacing=sp)
    )
    ref_nsd = float(monai_metrics.compute_surface_dice(p, g, [1.5], spacing=sp))
    assert hd95(pred, gt, 1, sp, variant="max") == pytest.approx(ref_hd, rel=0.01)
    assert asd(pred, gt, 1, sp) == pytest.approx(ref_asd, rel=0.01)
    assert nsd(pred, gt, 1, sp, tolerance=1.5) == pytest.approx(ref_nsd, rel=0.01)


def test_the_two_hd95_variants_differ_where_the_field_does() -> None:
    """A prediction with a far outlier: the directed percentile of the small side catches it."""
    gt = np.zeros((4, 20, 20), dtype=np.int64)
    gt[1:3, 5:10, 5:15] = 1  # 100 voxels, all on the surface
    pred = gt.copy()
    pred[1:3, 12:14, 12:14] = 1  # an island of 8: 7 % of pred's surface, 4 % of both pooled
    sp = (3.0, 1.0, 1.0)
    pooled = hd95(pred, gt, 1, sp, variant="pooled")
    mx = hd95(pred, gt, 1, sp, variant="max")
    assert mx > pooled
    assert mx == pytest.approx(
        float(
            monai_metrics.compute_hausdorff_distance(
                _onehot(pred), _onehot(gt), percentile=95, spacing=sp
            )
        ),
        rel=0.01,
    )
    assert pooled == pytest.approx(medpy_binary.hd95(pred, gt, voxelspacing=sp), rel=0.01)


def test_empty_policies_are_explicit_and_counted() -> None:
    gt = np.zeros((6, 8, 8), dtype=np.int64)
    gt[2:4, 2:6, 2:6] = 1
    empty = np.zeros_like(gt)
    sp = (2.0, 1.0, 1.0)
    vols = ([gt, empty, empty], [gt, gt, empty], [sp, sp, sp])
    out = evaluate_volumes(*vols, ["LV"])  # defaults: both empty perfect, one empty excluded
    assert out["empty_both/LV"] == 1.0 and out["empty_one/LV"] == 1.0
    assert out["dsc/LV"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    assert out["hd95/LV"] == 0.0 and out["hd95_undefined/LV"] == 1.0
    assert out["nsd/LV"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    strict = MetricDefs(both_empty="exclude", one_empty="worst")
    out = evaluate_volumes(*vols, ["LV"], defs=strict)
    diag = float(np.sqrt((6 * 2.0) ** 2 + 8**2 + 8**2))
    assert out["dsc/LV"] == pytest.approx(0.5)  # the both-empty scan left out
    assert out["hd95/LV"] == pytest.approx(diag / 2)  # (0 + diagonal) / 2
    assert out["hd95_undefined/LV"] == 1.0  # the both-empty scan, left out
    assert out["empty_both/LV"] == 1.0


def test_per_scan_dice_is_returned_on_request() -> None:
    gt = np.zeros((4, 8, 8), dtype=np.int64)
    gt[1:3, 2:6, 2:6] = 1
    gt[1:3, 0:2, 0:2] = 2
    half = gt.copy()
    half[1] = 0
    out = evaluate_volumes([gt, half], [gt, gt], [(1, 1, 1)] * 2, ["RV", "LV"], per_scan=True)
    assert out["scan/dsc/0"] == 1.0
    assert out["scan/dsc/RV/1"] == pytest.approx(2 / 3)
    assert out["scan/dsc/1"] == pytest.approx(2 / 3)
    assert "scan/dsc/0" not in evaluate_volumes([gt], [gt], [(1, 1, 1)], ["RV", "LV"])


def test_unknown_definitions_are_refused() -> None:
    with pytest.raises(
        ValueError, match="unknown hd95 variant 'mean'; expected one of max, pooled"
    ):
        MetricDefs(hd95="mean")
    with pytest.raises(ValueError, match="nsd_tolerance must be a positive"):
        MetricDefs(nsd_tolerance=0)


def test_unknown_hd95_variant_in_a_run_config_is_refused_before_work() -> None:
    from segssl.config import ConfigError, parse_run_config

    with pytest.raises(ConfigError, match=r"metrics.hd95.*'max' or 'pooled'"):
        parse_run_config({"method": {"name": "baseline"}, "metrics": {"hd95": "mean"}}, "r.yaml")
    cfg = parse_run_config({"method": {"name": "baseline"}}, "r.yaml")
    assert cfg.metrics.hd95 == "max" and cfg.metrics.nsd_tolerance == 1.0
