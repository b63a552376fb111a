"""Tests of the GMI losses: global MI (eq. 9), local MI for all displacements and heads at once
(eqs. 10-12), the consistency loss (eq. 13), and the semi-supervised baselines' losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segssl.losses.gmi import consistency_loss, global_joints, global_mi_loss
from segssl.losses.mi import local_mi_joints, local_mi_loss
from segssl.losses.semi import (
    adversarial_loss,
    discriminator_loss,
    mse_consistency,
    predictive_entropy,
    soft_cross_entropy,
    uncertainty_mask,
    uncertainty_threshold,
)


def _probs(shape: tuple[int, ...], seed: int, dim: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).mul(2).softmax(dim)


def _np_mi(joint: np.ndarray) -> float:
    pi, pj = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pi @ pj)[nz])).sum())


def _explicit_local(a: np.ndarray, b: np.ndarray, pad: int) -> list[float]:
    """-MI per displacement, one displacement at a time with explicit pixel loops."""
    _, k, h, w = a.shape
    out = []
    for dy in range(-pad, pad + 1):
        for dx in range(-pad, pad + 1):
            joint = np.zeros((k, k))
            for y in range(h):
                for x in range(w):
                    if 0 <= y + dy < h and 0 <= x + dx < w:
                        joint += np.einsum("bj,bk->jk", a[:, :, y + dy, x + dx], b[:, :, y, x])
            joint = (joint + joint.T) / 2
            out.append(-_np_mi(joint / joint.sum()))
    return out


def test_global_mi_equals_formula_on_hand_built_case() -> None:
    # two images, K=2: view 1 certain, view 2 agrees on image 0 and is uniform on image 1
    p1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p2 = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    # outer products [[1,0],[0,0]] and [[0,0],[.5,.5]] -> mean [[.5,0],[.25,.25]], symmetrised
    joint = np.array([[0.5, 0.125], [0.125, 0.25]])
    torch.testing.assert_close(global_joints(p1, p2)[0], torch.tensor(joint, dtype=torch.float32))
    marg = joint.sum(1)  # symmetric: rows == cols
    expected = -sum(
        joint[i, j] * math.log(joint[i, j] / (marg[i] * marg[j]))
        for i in range(2)
        for j in range(2)
    )
    assert float(global_mi_loss(p1, p2)) == pytest.approx(expected, abs=1e-6)
    # identical one-hot views of balanced clusters reach the maximum, log K
    eye = torch.eye(4)
    assert float(global_mi_loss(eye, eye)) == pytest.approx(-math.log(4), abs=1e-6)


def test_global_mi_heads_average_the_per_head_losses() -> None:
    p1, p2 = _probs((6, 3, 5), 0, dim=2), _probs((6, 3, 5), 1, dim=2)
    per_head = [float(global_mi_loss(p1[:, i], p2[:, i])) for i in range(3)]
    assert float(global_mi_loss(p1, p2)) == pytest.approx(np.mean(per_head), abs=1e-6)
    perm = torch.tensor([4, 2, 0, 1, 3])
    torch.testing.assert_close(global_mi_loss(p1[..., perm], p2[..., perm]), global_mi_loss(p1, p2))


@pytest.mark.parametrize("pad", [1, 2])
def test_local_mi_all_displacements_equal_explicit_per_displacement(pad: int) -> None:
    p1, p2 = _probs((2, 3, 6, 7), 2), _probs((2, 3, 6, 7), 3)
    expected = _explicit_local(p1.double().numpy(), p2.double().numpy(), pad)
    joints = local_mi_joints(p1, p2, pad)
    assert joints.shape == (1, (2 * pad + 1) ** 2, 3, 3)
    got = [-float(v) for v in _mi(joints[0])]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert float(local_mi_loss(p1, p2, pad)) == pytest.approx(np.mean(expected), abs=1e-5)


def _mi(joints: torch.Tensor) -> torch.Tensor:
    from segssl.losses.mi import batched_mutual_information

    return batched_mutual_information(joints)


def test_local_mi_heads_equal_head_by_head_and_permutation_invariant() -> None:
    p1, p2 = _probs((3, 4, 5, 8, 8), 4, dim=2), _probs((3, 4, 5, 8, 8), 5, dim=2)
    per_head = [float(local_mi_loss(p1[:, i], p2[:, i], 3)) for i in range(4)]
    assert float(local_mi_loss(p1, p2, 3)) == pytest.approx(np.mean(per_head), abs=1e-5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(
        local_mi_loss(p1[:, :, perm], p2[:, :, perm], 3), local_mi_loss(p1, p2, 3)
    )


def test_local_mi_rejects_a_window_larger_than_the_map() -> None:
    q = _probs((1, 3, 5, 5), 6)
    with pytest.raises(ValueError, match="7x7 does not fit a 5x5 map"):
        local_mi_loss(q, q, 3)


def test_consistency_loss_is_squared_l2_over_classes_mean_over_pixels() -> None:
    a = torch.zeros(1, 2, 1, 2)
    b = torch.zeros(1, 2, 1, 2)
    a[0, 0] = 1.0  # pixel probabilities (1, 0) both
    b[0, 1, 0, 0] = 1.0  # pixel 0: (0, 1) -> ||.||^2 = 2
    b[0, 0, 0, 1] = 1.0  # pixel 1: (1, 0) -> 0
    assert float(consistency_loss(a, b)) == pytest.approx(1.0)
    mask = torch.tensor([[[[0.0, 1.0]]]])
    assert float(consistency_loss(a, b, mask)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"\(1, 2, 1, 2\).*\(1, 2, 2, 2\)"):
        consistency_loss(a, torch.zeros(1, 2, 2, 2))


def test_uamt_threshold_ramps_linearly_and_masks_exactly_the_certain_pixels() -> None:
    k = 4
    assert uncertainty_threshold(k, 0.0) == pytest.approx(0.75 * math.log(4))
    assert uncertainty_threshold(k, 0.5) == pytest.approx(0.875 * math.log(4))
    assert uncertainty_threshold(k, 1.0) == pytest.approx(math.log(4))
    probs = torch.tensor([[0.97, 0.01, 0.01, 0.01], [0.25] * 4, [0.4, 0.4, 0.1, 0.1]])
    probs = probs.t().reshape(1, 4, 1, 3)  # three pixels
    ent = predictive_entropy(probs)
    np.testing.assert_allclose(
        ent.flatten().numpy(),
        [-(p * np.log(p)).sum() for p in probs[0, :, 0].t().numpy()],
        rtol=1e-5,
    )
    # entropies ~0.17, log 4 = 1.386, ~1.19: at 3/4 log 4 = 1.04 only pixel 0 is certain
    assert uncertainty_mask(ent, uncertainty_threshold(k, 0.0)).flatten().tolist() == [1, 0, 0]
    assert uncertainty_mask(ent, uncertainty_threshold(k, 0.9)).flatten().tolist() == [1, 0, 1]
    s = torch.zeros_like(probs)
    full = mse_consistency(s, probs)
    masked = mse_consistency(s, probs, uncertainty_mask(ent, 1.0))
    assert float(masked) == pytest.approx(float(probs[..., 0].pow(2).mean()))
    assert float(full) == pytest.approx(float(probs.pow(2).mean()))


def test_soft_cross_entropy_equals_hard_ce_on_one_hot_and_mixes_linearly() -> None:
    logits = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y1 = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    y2 = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(2))
    oh1 = torch.nn.functional.one_hot(y1, 3).permute(0, 3, 1, 2).float()
    oh2 = torch.nn.functional.one_hot(y2, 3).permute(0, 3, 1, 2).float()
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(soft_cross_entropy(logits, oh1), ce(logits, y1))
    mixed = soft_cross_entropy(logits, 0.3 * oh1 + 0.7 * oh2)
    torch.testing.assert_close(mixed, 0.3 * ce(logits, y1) + 0.7 * ce(logits, y2))


def test_adversarial_losses_point_in_opposite_directions() -> None:
    real, fake = torch.full((4, 1), 3.0), torch.full((4, 1), -3.0)
    assert float(discriminator_loss(real, fake)) < 0.05  # a discriminator that is right
    assert float(adversarial_loss(fake)) > 3.0  # the segmenter is far from fooling it
    assert float(adversarial_loss(real)) < 0.05
