"""Tests of segssl.metrics on hand-built volumes (known Dice, HD95, ASD; anisotropic spacing)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segssl.metrics import asd, dice, evaluate_volumes, hd95


def _brute_surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels by explicit 6-neighbour checks (outside the volume = background)."""
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask)
    for axis in range(3):
        for shift in (-1, 1):
            inner &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~inner)


def _brute_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    sa = _brute_surface(a) * np.asarray(spacing)
    sb = _brute_surface(b) * np.asarray(spacing)
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return np.concatenate([d.min(1), d.min(0)])


def test_single_voxels_offset_along_anisotropic_axis() -> None:
    gt = np.zeros((10, 6, 6), dtype=np.int64)
    pred = np.zeros_like(gt)
    gt[2, 3, 3] = 1
    pred[5, 3, 3] = 1  # 3 slices apart at 2.5 mm per slice -> 7.5 mm
    assert dice(pred, gt, 1) == 0.0
    assert hd95(pred, gt, 1, (2.5, 0.7, 0.7)) == pytest.approx(7.5)
    assert asd(pred, gt, 1, (2.5, 0.7, 0.7)) == pytest.approx(7.5)
    # the same offset in-plane is 3 * 0.7 mm
    pred2 = np.zeros_like(gt)
    pred2[2, 3, 0] = 1
    assert hd95(pred2, gt, 1, (2.5, 0.7, 0.7)) == pytest.approx(2.1)


def test_two_cubes_offset_by_known_mm() -> None:
    spacing = (2.0, 1.0, 0.5)
    gt = np.zeros((16, 16, 16), dtype=np.int64)
    pred = np.zeros_like(gt)
    gt[4:9, 4:9, 4:9] = 3
    pred[5:10, 4:9, 4:9] = 3  # shifted by one slice = 2 mm along axis 0
    assert dice(pred, gt, 3) == pytest.approx(2 * 4 * 25 / (125 + 125))
    d = _brute_distances(pred == 3, gt == 3, spacing)
    assert hd95(pred, gt, 3, spacing) == pytest.approx(np.percentile(d, 95))
    assert asd(pred, gt, 3, spacing) == pytest.approx(d.mean())
    # every surface voxel is within one slice of the other surface: at most 2 mm
    assert 0 < asd(pred, gt, 3, spacing) < hd95(pred, gt, 3, spacing) <= 2.0 + 1e-9
    # swapping the spacing of the shifted axis changes the distances accordingly
    assert hd95(pred, gt, 3, (0.5, 1.0, 2.0)) <= 0.5 + 1e-9


def test_distances_match_brute_force_on_irregular_shapes() -> None:
    rng = np.random.default_rng(0)
    gt = (rng.random((6, 9, 9)) > 0.6).astype(np.int64)
    pred = (rng.random((6, 9, 9)) > 0.6).astype(np.int64)
    spacing = (3.0, 0.8, 1.1)
    d = _brute_distances(pred == 1, gt == 1, spacing)
    assert hd95(pred, gt, 1, spacing) == pytest.approx(np.percentile(d, 95))
    assert asd(pred, gt, 1, spacing) == pytest.approx(d.mean())


def test_empty_conventions() -> None:
    empty = np.zeros((4, 4, 4), dtype=np.int64)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = 1
    assert dice(empty, empty, 1) == 1.0
    assert hd95(empty, empty, 1, (1, 1, 1)) == 0.0 and asd(empty, empty, 1, (1, 1, 1)) == 0.0
    assert dice(full, empty, 1) == 0.0
    assert math.isnan(hd95(full, empty, 1, (1, 1, 1)))
    assert math.isnan(asd(empty, full, 1, (1, 1, 1)))
    assert hd95(full, full, 1, (1, 1, 1)) == 0.0


def test_evaluate_volumes_aggregates_per_class_and_counts_undefined() -> None:
    gt = np.zeros((8, 8, 8), dtype=np.int64)
    gt[2:6, 2:6, 2:6] = 1
    gt[0, 0, 0] = 2
    pred_a = gt.copy()  # perfect
    pred_b = gt.copy()
    pred_b[pred_b == 2] = 0  # class 2 missed entirely -> undefined distances
    pred_b[2, 2:6, 2:6] = 0  # class 1 loses one slice of 16 voxels
    out = evaluate_volumes(
        [pred_a, pred_b], [gt, gt], [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)], {1: "LV", 2: "RV"}
    )
    dsc_b = 2 * 48 / (48 + 64)
    assert out["dsc/LV"] == pytest.approx((1.0 + dsc_b) / 2)
    assert out["dsc/RV"] == pytest.approx(0.5)
    assert out["dsc"] == pytest.approx(((1.0 + dsc_b) / 2 + 0.5) / 2)
    assert out["hd95/RV"] == 0.0 and out["hd95_undefined/RV"] == 1.0
    assert out["hd95_undefined/LV"] == 0.0
    d_b = _brute_distances(pred_b == 1, gt == 1, (2.0, 1.0, 1.0))  # independent of hd95()
    n_pred = len(_brute_surface(pred_b == 1))  # d_b = pred->gt distances, then gt->pred
    directed = max(np.percentile(d_b[:n_pred], 95), np.percentile(d_b[n_pred:], 95))
    expected_lv = (0.0 + float(directed)) / 2  # the default variant: max of directed
    assert out["asd/LV"] == pytest.approx((0.0 + float(d_b.mean())) / 2)
    assert out["hd95/LV"] == pytest.approx(expected_lv)
    assert out["hd95/LV"] > 0
    assert out["asd"] == pytest.approx((out["asd/LV"] + out["asd/RV"]) / 2)
    assert out["n_scans"] == 2.0
    # list form of class names means labels 1..n; binary mode uses a single name
    assert evaluate_volumes([pred_a], [gt], [(1, 1, 1)], ["LV"], distances=False) == {
        "n_scans": 1.0,
        "dsc/LV": 1.0,
        "dsc": 1.0,
        "empty_both/LV": 0.0,
        "empty_one/LV": 0.0,
    }


def test_metric_error_paths() -> None:
    a = np.zeros((4, 4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match=r"pred \(4, 4, 4\) and gt \(4, 4, 5\)"):
        dice(a, np.zeros((4, 4, 5), dtype=np.int64), 1)
    with pytest.raises(ValueError, match="spacing must hold 3 positive"):
        hd95(a, a, 1, (1.0, 1.0))
    with pytest.raises(ValueError, match="integer label volume, got dtype float64"):
        asd(a.astype(float), a, 1, (1, 1, 1))
    with pytest.raises(ValueError, match="equal length, got 2, 1 and 1"):
        evaluate_volumes([a, a], [a], [(1, 1, 1)], ["LV"])
    with pytest.raises(ValueError, match=r"scan 0: spacing must hold 3 positive.*\(1, 0, 1\)"):
        evaluate_volumes([a], [a], [(1, 0, 1)], ["LV"])
