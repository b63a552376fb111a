"""Tests of segssl.losses.contrastive and segssl.losses.imsat: golden values, properties, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segssl.losses.contrastive import dense_contrastive_loss, negative_mask, supcon_loss
from segssl.losses.imsat import imsat_loss, imsat_terms


def _np_supcon(z: np.ndarray, labels: np.ndarray, tau: float) -> float:
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z)
    total, count = 0.0, 0
    for i in range(n):
        denom = sum(math.exp(z[i] @ z[a] / tau) for a in range(n) if a != i)
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        total += -np.mean([math.log(math.exp(z[i] @ z[j] / tau) / denom) for j in pos])
        count += 1
    return total / count


def test_supcon_golden_with_meta_labels_and_simclr() -> None:
    z = np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.2], [0.3, -0.9]])
    meta = np.array([0, 1, 1, 0, 1, 0])
    got = supcon_loss(torch.tensor(z), torch.tensor(meta), temperature=0.5)
    assert float(got) == pytest.approx(_np_supcon(z, meta, 0.5), abs=1e-5)
    simclr = _np_supcon(z, np.array([0, 1, 2, 0, 1, 2]), 0.5)
    assert float(supcon_loss(torch.tensor(z), None, temperature=0.5)) == pytest.approx(
        simclr, abs=1e-5
    )
    # per-image labels (N,) are shared by both views
    per_image = torch.tensor([0, 1, 1])
    torch.testing.assert_close(
        supcon_loss(torch.tensor(z), per_image, 0.5),
        supcon_loss(torch.tensor(z), per_image.repeat(2), 0.5),
    )


def test_supcon_lower_when_embeddings_follow_the_meta_labels() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    aligned = F.one_hot(labels, 4).float()
    shuffled = F.one_hot(torch.tensor([2, 0, 1, 1, 2, 0, 0, 2]), 4).float()
    assert float(supcon_loss(aligned, labels)) < float(supcon_loss(shuffled, labels)) - 1.0


def test_supcon_decreases_and_errors() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 16, generator=g).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 0, 0, 1, 2, 0])
    opt = torch.optim.Adam([z], lr=0.05)
    values = []
    for _ in range(15):
        loss = supcon_loss(z, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(float(loss.detach()))
    assert values[-1] < values[0] - 0.1
    with pytest.raises(ValueError, match=r"z \(6, 4\) and labels \(5,\)"):
        supcon_loss(torch.rand(6, 4), torch.zeros(5))
    with pytest.raises(ValueError, match="2N >= 2 views"):
        supcon_loss(torch.rand(5, 4))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        supcon_loss(torch.rand(4, 4), temperature=0.0)
    with pytest.raises(ValueError, match="no anchor has a positive"):
        supcon_loss(torch.rand(4, 4), torch.tensor([0, 1, 2, 3]))


def test_negative_mask_rules() -> None:
    m = negative_mask((3, 3), min_distance=2)
    # centre (index 4) is within distance 1 of every cell: no negatives; corner 0 has 5
    assert int(m[4].sum()) == 0 and int(m[0].sum()) == 5
    rc = negative_mask((3, 3), rule="row_col")
    assert int(rc[4].sum()) == 4 and not bool(rc[4, 1]) and bool(rc[4, 0])


def _np_dense(f1: np.ndarray, f2: np.ndarray, tau: float, neg: np.ndarray) -> float:
    def one(a: np.ndarray, b: np.ndarray) -> float:
        vals = []
        for img in range(a.shape[0]):
            x = a[img].reshape(a.shape[1], -1).T
            y = b[img].reshape(b.shape[1], -1).T
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
            y = y / np.linalg.norm(y, axis=1, keepdims=True)
            for p in range(len(x)):
                pos = math.exp(x[p] @ y[p] / tau)
                negs = sum(
                    math.exp(x[p] @ x[q] / tau) + math.exp(x[p] @ y[q] / tau)
                    for q in range(len(x))
                    if neg[p, q]
                )
                vals.append(-math.log(pos / (pos + negs)))
        return float(np.mean(vals))

    return 0.5 * (one(f1, f2) + one(f2, f1))


def test_dense_contrastive_golden() -> None:
    g = torch.Generator().manual_seed(1)
    f1 = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    f2 = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    neg = negative_mask((4, 4), min_distance=2).numpy()
    expected = _np_dense(f1.numpy(), f2.numpy(), 0.1, neg)
    got = dense_contrastive_loss(f1, f2, temperature=0.1, min_distance=2)
    assert float(got) == pytest.approx(expected, abs=1e-4)


def test_dense_contrastive_lower_for_consistent_distinct_embeddings_and_decreases() -> None:
    g = torch.Generator().manual_seed(2)
    base = torch.randn(2, 8, 6, 6, generator=g)
    consistent = dense_contrastive_loss(base, base + 0.01 * torch.randn(2, 8, 6, 6, generator=g))
    unrelated = dense_contrastive_loss(base, torch.randn(2, 8, 6, 6, generator=g))
    assert float(consistent) < float(unrelated) - 1.0
    f = torch.randn(2, 8, 6, 6, generator=g).requires_grad_(True)
    noise = torch.randn(2, 8, 6, 6, generator=g)
    opt = torch.optim.Adam([f], lr=0.05)
    values = []
    for _ in range(15):
        loss = dense_contrastive_loss(f, f + noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(float(loss.detach()))
    assert values[-1] < values[0] - 0.1


def test_dense_contrastive_errors() -> None:
    with pytest.raises(ValueError, match=r"\(2, 8, 20, 20\).*\(2, 8, 10, 10\)"):
        dense_contrastive_loss(torch.rand(2, 8, 20, 20), torch.rand(2, 8, 10, 10))
    with pytest.raises(ValueError, match="min_distance=3.*without negatives on a 3x3 grid"):
        dense_contrastive_loss(torch.rand(1, 4, 3, 3), torch.rand(1, 4, 3, 3), min_distance=3)
    with pytest.raises(ValueError, match="min_distance must be an int >= 1, got 0"):
        dense_contrastive_loss(torch.rand(1, 4, 3, 3), torch.rand(1, 4, 3, 3), min_distance=0)


def test_imsat_golden_and_properties() -> None:
    p_aug = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    p_ref = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
    both = np.array([[0.7, 0.3], [0.2, 0.8], [0.9, 0.1], [0.4, 0.6]])
    marg = both.mean(0)
    h_m = -(marg * np.log(marg)).sum()
    h_c = -(both * np.log(both)).sum(1).mean()
    a, r = p_aug.double().numpy(), p_ref.double().numpy()
    sat = (r * (np.log(r) - np.log(a))).sum(1).mean()
    terms = imsat_terms(p_aug, p_ref)
    assert float(terms["marginal_entropy"]) == pytest.approx(h_m, abs=1e-6)
    assert float(terms["conditional_entropy"]) == pytest.approx(h_c, abs=1e-6)
    assert float(terms["sat"]) == pytest.approx(sat, abs=1e-6)
    expected = 2.0 * sat - 0.3 * (h_m - 4.0 * h_c)
    got = imsat_loss(p_aug, p_ref, lamda=0.3, mu=4.0, sat_weight=2.0)
    assert float(got) == pytest.approx(expected, abs=1e-6)
    # balanced, confident, consistent one-hot maps: SAT 0, MI term log K, finite gradients
    onehot = F.one_hot(torch.tensor([[[0, 1], [2, 3]]]), 4).permute(0, 3, 1, 2).float()
    onehot.requires_grad_(True)
    loss = imsat_loss(onehot, onehot.detach(), lamda=1.0, mu=1.0)
    (grad,) = torch.autograd.grad(loss, onehot)
    assert float(loss.detach()) == pytest.approx(-math.log(4), abs=1e-6)
    assert torch.isfinite(grad).all()


def test_imsat_decreases_and_errors() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 6, 6, generator=g).requires_grad_(True)
    noise = torch.randn(2, 5, 6, 6, generator=g) * 0.3
    opt = torch.optim.Adam([logits], lr=0.1)
    values = []
    for _ in range(15):
        loss = imsat_loss(logits.softmax(1), (logits + noise).softmax(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(float(loss.detach()))
    assert values[-1] < values[0] - 0.05
    with pytest.raises(ValueError, match=r"\(2, 5, 6, 6\).*\(2, 5, 6, 5\)"):
        imsat_loss(torch.rand(2, 5, 6, 6), torch.rand(2, 5, 6, 5))
    with pytest.raises(ValueError, match="mu must be >= 0, got -1"):
        imsat_loss(torch.rand(2, 5), torch.rand(2, 5), mu=-1)


def test_supcon_per_image_labels_equal_per_view_labels_with_gradients() -> None:
    """The sync-free path for (N,) labels is the checked (2N,) path with the labels repeated."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(8, 5, generator=g, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2])
    a = supcon_loss(z, labels)
    (ga,) = torch.autograd.grad(a, z)
    b = supcon_loss(z, labels.repeat(2))
    (gb,) = torch.autograd.grad(b, z)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ga, gb)
    none = supcon_loss(z)
    torch.testing.assert_close(none, supcon_loss(z, torch.arange(4).repeat(2)))


@pytest.mark.parametrize("rule", ["chebyshev", "row_col"])
def test_negatives_check_from_grid_size_equals_the_mask(rule: str) -> None:
    from segssl.losses.contrastive import _every_anchor_has_negatives

    for gh in range(1, 8):
        for gw in range(1, 8):
            for d in range(1, 5):
                mask = negative_mask((gh, gw), d, rule)
                want = bool(mask.any(1).all())
                assert _every_anchor_has_negatives((gh, gw), d, rule) == want, (gh, gw, d)


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 6, 7)])
def test_imsat_terms_equal_the_concatenated_formulation_with_gradients(shape) -> None:
    """imsat_terms (each log once, no concatenated copy) equals the formulas written on the
    concatenation of both views, in values and in the gradients of both inputs."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(shape, generator=g).softmax(1).requires_grad_()
    r = torch.randn(shape, generator=g).softmax(1)
    r[0, 0] = 0.0  # an exact zero (masked pixel, border)
    r = r.requires_grad_()

    def reference(a: torch.Tensor, r: torch.Tensor) -> dict[str, torch.Tensor]:
        both = torch.cat([a, r])
        dims = [0] + list(range(2, both.ndim))
        m = both.mean(dim=dims)
        t = r.detach()
        return {
            "marginal_entropy": -(m * torch.log(m.clamp_min(1e-10))).sum(),
            "conditional_entropy": -(both * torch.log(both.clamp_min(1e-10))).sum(1).mean(),
            "sat": (t * (torch.log(t.clamp_min(1e-10)) - torch.log(a.clamp_min(1e-10))))
            .sum(1)
            .mean(),
        }

    new, ref = imsat_terms(a, r), reference(a, r)
    for key in ref:
        torch.testing.assert_close(new[key], ref[key])
        g_new = torch.autograd.grad(new[key], (a, r), retain_graph=True, allow_unused=True)
        g_ref = torch.autograd.grad(ref[key], (a, r), retain_graph=True, allow_unused=True)
        for x, y in zip(g_new, g_ref, strict=True):
            if y is None or x is None:
                assert (x is None or not x.any()) and (y is None or not y.any()), key
            else:
                torch.testing.assert_close(x, y)
    torch.testing.assert_close(imsat_loss(a, r, 0.1, 4.0, 1.0), imsat_loss(a, r))
