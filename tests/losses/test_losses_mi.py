"""Tests of segssl.losses.mi: golden values, invariances, the IIC identity, error paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segssl.losses.mi import joint_distribution, local_mi_loss, mi_loss, mutual_information


def _np_mi(joint: np.ndarray) -> float:
    pi = joint.sum(1, keepdims=True)
    pj = joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pi @ pj)[nz])).sum())


def _random_probs(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).mul(2).softmax(1)


def test_joint_golden_value_by_hand() -> None:
    p1 = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    p2 = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    # outer products [[0,1],[0,0]] and [[.25,.25],[.25,.25]]; mean then (P + P^T)/2
    expected = torch.tensor([[0.125, 0.375], [0.375, 0.125]])
    torch.testing.assert_close(joint_distribution(p1, p2), expected)
    torch.testing.assert_close(
        joint_distribution(p1, p2, symmetric=False), torch.tensor([[0.125, 0.625], [0.125, 0.125]])
    )


def test_joint_of_maps_equals_joint_of_flattened_pixels() -> None:
    p1 = _random_probs((2, 5, 3, 4), 0)
    p2 = _random_probs((2, 5, 3, 4), 1)
    flat1 = p1.permute(0, 2, 3, 1).reshape(-1, 5)
    flat2 = p2.permute(0, 2, 3, 1).reshape(-1, 5)
    joint = joint_distribution(p1, p2)
    torch.testing.assert_close(joint, joint_distribution(flat1, flat2))
    assert joint.shape == (5, 5)
    assert math.isclose(float(joint.sum()), 1.0, rel_tol=1e-6)
    torch.testing.assert_close(joint, joint.t())


def test_alpha0_equals_minus_mi_computed_independently() -> None:
    p1 = _random_probs((3, 6, 5, 5), 2)
    p2 = _random_probs((3, 6, 5, 5), 3)
    a = p1.permute(0, 2, 3, 1).reshape(-1, 6).double().numpy()
    b = p2.permute(0, 2, 3, 1).reshape(-1, 6).double().numpy()
    joint = a.T @ b / a.shape[0]
    joint = (joint + joint.T) / 2
    expected = -_np_mi(joint)
    assert float(mi_loss(p1, p2, alpha=0.0, lamda=1.0)) == pytest.approx(expected, abs=1e-5)
    assert float(mutual_information(joint_distribution(p1, p2))) == pytest.approx(
        -expected, abs=1e-5
    )


def test_alpha_half_golden_value() -> None:
    p1 = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    p2 = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    a, b = p1.double().numpy(), p2.double().numpy()
    joint = a.T @ b / 3
    joint = (joint + joint.T) / 2
    target = 0.5 * np.eye(3) / 3 + 0.5 * joint
    ent = lambda v: -(v * np.log(v)).sum()  # noqa: E731
    expected = -(target * np.log(joint)).sum() - 0.7 * (ent(joint.sum(0)) + ent(joint.sum(1)))
    assert float(mi_loss(p1, p2, alpha=0.5, lamda=0.7)) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_invariant_to_permuting_clusters_of_both_views(alpha: float) -> None:
    p1 = _random_probs((2, 7, 4, 4), 4)
    p2 = _random_probs((2, 7, 4, 4), 5)
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    ref = mi_loss(p1, p2, alpha=alpha)
    permuted = mi_loss(p1[:, perm], p2[:, perm], alpha=alpha)
    torch.testing.assert_close(permuted, ref)
    # and the local MI as well
    torch.testing.assert_close(local_mi_loss(p1[:, perm], p2[:, perm], 1), local_mi_loss(p1, p2, 1))


def _onehot(labels: list[int], k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), k).float()


def test_alpha1_minimised_by_uniform_diagonal_joint() -> None:
    k = 4
    diag = _onehot([0, 1, 2, 3] * 3, k)  # balanced, consistent: joint = I / K
    off = _onehot([1, 2, 3, 0] * 3, k)  # balanced but inconsistent: off-diagonal joint
    skew = _onehot([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3], k)  # consistent but unbalanced
    best = float(mi_loss(diag, diag, alpha=1.0))
    # cross-entropy(I/K, I/K) - 2 log K = log K - 2 log K
    assert best == pytest.approx(-math.log(k), abs=1e-6)
    assert float(mi_loss(diag, off, alpha=1.0)) > best + 1.0
    assert float(mi_loss(skew, skew, alpha=1.0)) > best + 0.1
    for seed in range(5):  # Prop. 2.1: CE >= log K, and each marginal entropy <= log K
        p1, p2 = _random_probs((12, k), 10 + seed), _random_probs((12, k), 20 + seed)
        assert float(mi_loss(p1, p2, alpha=1.0)) >= best - 1e-6
        assert float(mi_loss(p1, p2, alpha=1.0, lamda=0.0)) >= math.log(k) - 1e-6


def test_finite_gradients_with_exact_zeros() -> None:
    p1 = _onehot([0, 1, 1, 0], 3).requires_grad_(True)  # cluster 2 never used: zeros in joint
    p2 = _onehot([0, 1, 0, 0], 3).requires_grad_(True)
    for alpha in (0.0, 0.5, 1.0):
        loss = mi_loss(p1, p2, alpha=alpha)
        g1, g2 = torch.autograd.grad(loss, (p1, p2))
        assert torch.isfinite(loss)
        assert torch.isfinite(g1).all() and torch.isfinite(g2).all()
    q1 = _onehot([0, 1, 1, 0, 0, 1, 1, 0, 0], 3).reshape(1, 3, 3, 3).permute(0, 3, 1, 2)
    q1 = q1.requires_grad_(True)  # cluster 2 unused; a 3x3 map holds the 3x3 window
    loss = local_mi_loss(q1, q1.detach().clone().requires_grad_(True), 1)
    (g,) = torch.autograd.grad(loss, q1)
    assert torch.isfinite(loss) and torch.isfinite(g).all()


def _optimise(loss_fn, steps: int = 30, lr: float = 0.1) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 8, 8, generator=g).requires_grad_(True)
    noise = torch.randn(2, 5, 8, 8, generator=g).mul(0.3)
    opt = torch.optim.Adam([logits], lr=lr)
    first = last = None
    for _ in range(steps):
        loss = loss_fn(logits.softmax(1), (logits + noise).softmax(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
        last = float(loss.detach())
    return first, last


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_mi_loss_decreases_over_adam_steps(alpha: float) -> None:
    first, last = _optimise(lambda a, b: mi_loss(a, b, alpha=alpha))
    assert last < first - 0.05


def test_local_mi_loss_decreases_over_adam_steps() -> None:
    first, last = _optimise(lambda a, b: local_mi_loss(a, b, 1))
    assert last < first - 0.05


def test_local_mi_padding0_is_iic_and_golden_value() -> None:
    p1 = _random_probs((2, 3, 5, 6), 6)
    p2 = _random_probs((2, 3, 5, 6), 7)
    torch.testing.assert_close(local_mi_loss(p1, p2, 0), mi_loss(p1, p2, alpha=0.0))
    a, b = p1.double().numpy(), p2.double().numpy()
    _, k, h, w = a.shape
    values = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            joint = np.zeros((k, k))
            for y in range(h):
                for x in range(w):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w:
                        joint += np.einsum("bj,bk->jk", a[:, :, y, x], b[:, :, yy, xx])
            joint = (joint + joint.T) / 2
            values.append(-_np_mi(joint / joint.sum()))
    assert float(local_mi_loss(p1, p2, 1)) == pytest.approx(np.mean(values), abs=1e-5)


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 4, 8, 8\).*\(2, 4, 8, 9\)"):
        mi_loss(torch.rand(2, 4, 8, 8), torch.rand(2, 4, 8, 9))
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 5\)"):
        joint_distribution(torch.rand(2, 4), torch.rand(2, 5))
    with pytest.raises(ValueError, match=r"\(1, 3, 4, 4\).*\(1, 3, 4, 5\)"):
        local_mi_loss(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 5), 1)


def test_bad_arguments_are_rejected() -> None:
    p = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="at least 2 clusters.*K=1"):
        mi_loss(p, p)
    q = torch.rand(2, 3, 4, 4).softmax(1)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        mi_loss(q, q, alpha=1.5)
    with pytest.raises(ValueError, match="lamda must be >= 0, got -1"):
        mi_loss(q, q, lamda=-1)
    with pytest.raises(ValueError, match="padding must be an int.*got 4"):
        local_mi_loss(q, q, 4)
    with pytest.raises(ValueError, match=r"\(B, K\), \(B, K, H, W\) or .*\(3, 4, 4\)"):
        mi_loss(q[0], q[0])


def _reference_mi_loss(p1: torch.Tensor, p2: torch.Tensor, alpha: float, lamda: float, detach):
    """BIM eqs. 5-8 written out in float64 (independent of segssl.losses.mi)."""
    k = p1.shape[1]
    a = p1.permute(0, 2, 3, 1).reshape(-1, k)
    b = p2.permute(0, 2, 3, 1).reshape(-1, k)
    joint = a.t() @ b / a.shape[0]
    joint = (joint + joint.t()) / 2
    mix = joint.detach() if detach else joint
    target = alpha * torch.eye(k, dtype=joint.dtype) / k + (1 - alpha) * mix

    def ent(v: torch.Tensor) -> torch.Tensor:
        return -(v * v.log()).sum()

    return -(target * joint.log()).sum() - lamda * (ent(joint.sum(0)) + ent(joint.sum(1)))


@pytest.mark.parametrize("alpha,lamda", [(0.5, 1.0), (0.3, 0.7)])
def test_gradient_flows_through_p_in_the_alpha_target(alpha: float, lamda: float) -> None:
    """DESIGN: target = alpha I/K + (1 - alpha) P with the gradient through P (not detached)."""
    logits1 = torch.randn(
        2, 4, 3, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64
    )
    logits2 = torch.randn(
        2, 4, 3, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64
    )
    x = logits1.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(mi_loss(x.softmax(1), logits2.softmax(1), alpha, lamda), x)
    grads = {}
    for detach in (False, True):
        y = logits1.clone().requires_grad_(True)
        loss = _reference_mi_loss(y.softmax(1), logits2.softmax(1), alpha, lamda, detach)
        (grads[detach],) = torch.autograd.grad(loss, y)
    torch.testing.assert_close(got.double(), grads[False], rtol=1e-4, atol=1e-6)
    # the test can tell the two apart: a detached target gives a clearly different gradient
    assert float((grads[True] - grads[False]).abs().max()) > 100 * 1e-6


def _grads(fn, *leaves: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    xs = [t.detach().clone().requires_grad_() for t in leaves]
    out = fn(*xs)
    weights = torch.arange(1.0, out.numel() + 1).view(out.shape)  # a different weight per head
    (out * weights).sum().backward()
    return out.detach(), [x.grad for x in xs]


@pytest.mark.parametrize("alpha, lamda", [(0.0, 1.0), (0.5, 1.0), (1.0, 0.3)])
def test_batched_heads_equal_the_per_head_loss_and_gradients(alpha: float, lamda: float) -> None:
    # (B, heads, K, H, W): one batched call must equal mi_loss head by head, gradients included
    p1 = _random_probs((3, 4, 2, 5, 6), 10).transpose(1, 2)  # softmax over K = dim 2
    p2 = _random_probs((3, 4, 2, 5, 6), 11).transpose(1, 2) * (torch.rand(3, 1, 1, 5, 6) > 0.2)

    def per_head(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.stack([mi_loss(a[:, h], b[:, h], alpha, lamda) for h in range(a.shape[1])])

    ref, ref_grads = _grads(per_head, p1, p2)
    out, grads = _grads(lambda a, b: mi_loss(a, b, alpha, lamda), p1, p2)
    assert out.shape == (2,)
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)
    joints = joint_distribution(p1, p2)
    assert joints.shape == (2, 4, 4)
    for h in range(2):
        torch.testing.assert_close(joints[h], joint_distribution(p1[:, h], p2[:, h]))


def test_joint_gradients_match_autograd_of_the_plain_product() -> None:
    # the hand-written backward of the per-pixel joint against autograd of einsum (asymmetric)
    p1 = _random_probs((2, 3, 4, 5), 12)
    p2 = _random_probs((2, 3, 4, 5), 13)
    g = torch.randn(3, 3, generator=torch.Generator().manual_seed(14))

    def plain(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        joint = torch.einsum("bjyx,bkyx->jk", a, b)
        return (joint / joint.sum() * g).sum()

    ref, ref_grads = _grads(plain, p1, p2)
    out, grads = _grads(lambda a, b: (joint_distribution(a, b, symmetric=False) * g).sum(), p1, p2)
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b)
