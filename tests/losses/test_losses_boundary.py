"""Tests of segssl.losses.boundary (BIM eq. 9): golden NCC, correlation extremes, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segssl.losses.boundary import cc_loss, edge_map, entropy_map, local_ncc


def _texture(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, h, w, generator=g)
    return F.avg_pool2d(x, 3, stride=1, padding=1)


def _np_local_ncc(a: np.ndarray, b: np.ndarray, r: int) -> np.ndarray:
    h, w = a.shape
    pa, pb = np.pad(a, r), np.pad(b, r)
    out = np.zeros_like(a)
    for y in range(h):
        for x in range(w):
            wa = pa[y : y + 2 * r + 1, x : x + 2 * r + 1].ravel()
            wb = pb[y : y + 2 * r + 1, x : x + 2 * r + 1].ravel()
            da, db = wa - wa.mean(), wb - wb.mean()
            out[y, x] = (da @ db) ** 2 / ((da @ da) * (db @ db) + 1e-5)
    return out


def test_local_ncc_golden_values() -> None:
    a = _texture(1, 6, 7, 0)
    b = _texture(1, 6, 7, 1)
    expected = _np_local_ncc(a[0, 0].double().numpy(), b[0, 0].double().numpy(), 1)
    got = local_ncc(a, b, window=3)[0, 0].double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_edge_maps_golden() -> None:
    img = torch.zeros(1, 1, 4, 4)
    img[..., :, 2:] = 1.0  # vertical step between columns 1 and 2
    diff = edge_map(img, "diff", power=1.0)[0, 0]
    expected = torch.zeros(4, 4)
    expected[:, 1] = 1.0
    torch.testing.assert_close(diff, expected, atol=1e-5, rtol=0)
    sobel = edge_map(img, "sobel", power=1.0)[0, 0]
    # |gx| = 4 on columns 1 and 2, 0 elsewhere -> normalised to 1 there
    expected_s = torch.zeros(4, 4)
    expected_s[:, 1:3] = 1.0
    torch.testing.assert_close(sobel, expected_s, atol=1e-5, rtol=0)
    ramp = torch.linspace(0, 1, 16).view(1, 1, 4, 4)
    powered = edge_map(ramp * ramp, "diff", power=0.75)
    torch.testing.assert_close(powered, edge_map(ramp * ramp, "diff", power=1.0) ** 0.75)


def test_entropy_map_golden() -> None:
    probs = torch.tensor([[1.0, 0.5, 0.25], [0.0, 0.5, 0.75]]).view(1, 2, 1, 3)
    raw = entropy_map(probs, normalise=False)[0, 0, 0]
    h = [0.0, math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    torch.testing.assert_close(raw, torch.tensor(h), atol=1e-6, rtol=0)
    norm = entropy_map(probs)[0, 0, 0]
    torch.testing.assert_close(norm, torch.tensor(h) / math.log(2), atol=1e-5, rtol=0)


def _probs_with_entropy(target: torch.Tensor) -> torch.Tensor:
    """2-cluster probabilities whose entropy is 0.05 + 0.9 * target * log 2 (bisection)."""
    want = (0.05 + 0.9 * target) * math.log(2)
    lo, hi = torch.zeros_like(want), torch.full_like(want, 0.5)
    for _ in range(60):
        q = (lo + hi) / 2
        ent = -(q * torch.log(q) + (1 - q) * torch.log(1 - q))
        lo, hi = torch.where(ent < want, q, lo), torch.where(ent < want, hi, q)
    q = (lo + hi) / 2
    return torch.cat([q, 1 - q], dim=1)


@pytest.mark.parametrize("edge", ["sobel", "diff"])
def test_cc_loss_near_minus_one_for_perfectly_correlated_maps(edge: str) -> None:
    img = _texture(2, 24, 24, 3)
    probs = _probs_with_entropy(edge_map(img, edge, power=0.75))
    loss = float(cc_loss(img, probs, window=5, edge=edge, power=0.75))
    assert -1.0 - 1e-4 <= loss < -0.97
    unrelated = torch.rand(2, 2, 24, 24, generator=torch.Generator().manual_seed(9)).softmax(1)
    assert float(cc_loss(img, unrelated, edge=edge)) > loss + 0.5


def test_cc_loss_finite_gradients_with_exact_zeros_and_decreases() -> None:
    img = _texture(1, 16, 16, 4)
    probs = torch.zeros(1, 3, 16, 16)
    probs[:, 0, :, :8] = 1.0
    probs[:, 1, :, 8:] = 1.0  # exact zeros and exact ones, cluster 2 empty
    probs.requires_grad_(True)
    loss = cc_loss(img, probs)
    (g,) = torch.autograd.grad(loss, probs)
    assert torch.isfinite(loss) and torch.isfinite(g).all()

    logits = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    logits.requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.05)
    values = []
    for _ in range(15):
        loss = cc_loss(img, logits.softmax(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(float(loss.detach()))
    assert values[-1] < values[0] - 0.05


def test_cc_loss_error_paths() -> None:
    img = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"\(2, 1, 16, 16\).*\(2, 4, 8, 8\)"):
        cc_loss(img, torch.rand(2, 4, 8, 8))
    with pytest.raises(ValueError, match="window must be an odd int >= 3, got 4"):
        cc_loss(img, torch.rand(2, 4, 16, 16), window=4)
    with pytest.raises(ValueError, match="edge must be 'sobel' or 'diff', got 'canny'"):
        cc_loss(img, torch.rand(2, 4, 16, 16), edge="canny")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="K=1"):
        cc_loss(img, torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="power must be > 0"):
        edge_map(img, power=0.0)


def test_normalisation_is_per_slice_so_slices_do_not_interact() -> None:
    """DESIGN: edge and entropy maps are min-max normalised per slice, not over the batch."""
    img = _texture(1, 16, 16, 5)
    batch = torch.cat([img, 10.0 * img + 3.0])  # same slice at another intensity scale
    for edge in ("sobel", "diff"):
        maps = edge_map(batch, edge)
        torch.testing.assert_close(maps[1], maps[0], atol=1e-5, rtol=0)
        assert float(maps[0].max()) == pytest.approx(1.0, abs=1e-4)
    g = torch.Generator().manual_seed(6)
    probs = torch.cat(
        [
            torch.randn(1, 4, 16, 16, generator=g).softmax(1),
            torch.randn(1, 4, 16, 16, generator=g).mul(5).softmax(1),
        ]
    )
    ent = entropy_map(probs)
    for i in range(2):
        assert float(ent[i].min()) == pytest.approx(0.0, abs=1e-6)
        assert float(ent[i].max()) == pytest.approx(1.0, abs=1e-4)
    images = torch.cat([img, 4.0 * _texture(1, 16, 16, 7)])
    whole = cc_loss(images, probs)
    parts = [cc_loss(images[i : i + 1], probs[i : i + 1]) for i in range(2)]
    torch.testing.assert_close(whole, (parts[0] + parts[1]) / 2)


def test_cc_loss_is_computed_in_float32_for_half_inputs() -> None:
    img = _texture(2, 16, 16, 8)
    probs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(8)).softmax(1)
    ref = cc_loss(img, probs)
    half = cc_loss(img.half(), probs.half())
    assert half.dtype == torch.float32
    assert float(half) == pytest.approx(float(ref), abs=2e-3)


@pytest.mark.parametrize("edge", ["sobel", "diff"])
def test_cc_loss_of_stacked_heads_equals_per_head_calls_with_gradients(edge: str) -> None:
    g = torch.Generator().manual_seed(3)
    image = _texture(2, 12, 10, seed=4) * 5
    logits = torch.randn(2, 3, 6, 12, 10, generator=g) * 3
    probs = logits.softmax(2)
    probs[0, 1, :, 2, 3] = torch.tensor([1.0, 0, 0, 0, 0, 0])  # exact zeros included
    weights = torch.tensor([1.0, 2.0, 3.0])

    ref_p = probs.clone().requires_grad_()
    ref = torch.stack([cc_loss(image, ref_p[:, h], 5, edge, 0.75) for h in range(3)])
    (ref * weights).sum().backward()
    new_p = probs.clone().requires_grad_()
    out = cc_loss(image, new_p, 5, edge, 0.75)
    (out * weights).sum().backward()
    assert out.shape == (3,)
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(new_p.grad, ref_p.grad)


def test_entropy_gradient_equals_autograd_of_the_formula() -> None:
    # away from the 1e-10 floor the one-pass backward equals autograd of -sum p log p
    p = torch.rand(2, 4, 5, 6, generator=torch.Generator().manual_seed(5)).add(0.01).softmax(1)
    up = torch.randn(2, 1, 5, 6, generator=torch.Generator().manual_seed(6))
    a = p.clone().requires_grad_()
    (entropy_map(a, normalise=False) * up).sum().backward()
    b = p.clone().requires_grad_()
    (-(b * b.log()).sum(1, keepdim=True) * up).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    stacked = entropy_map(torch.stack([p, p.flip(1)], dim=1))  # (B, heads, K, H, W)
    assert stacked.shape == (2, 2, 5, 6)
    torch.testing.assert_close(stacked[:, 1:], entropy_map(p.flip(1)))


def test_local_ncc_multi_channel_b_equals_channel_by_channel() -> None:
    a = _texture(2, 9, 11, seed=7)
    b = torch.cat([_texture(2, 9, 11, seed=s) for s in (8, 9, 10)], dim=1)
    out = local_ncc(a, b, 5)
    assert out.shape == (2, 3, 9, 11)
    for c in range(3):
        torch.testing.assert_close(out[:, c : c + 1], local_ncc(a, b[:, c : c + 1], 5))
    with pytest.raises(ValueError, match=r"a must be \(B, 1, H, W\).*got a \(2, 2, 9, 11\)"):
        local_ncc(b[:, :2], b, 5)


@pytest.mark.parametrize("window", [3, 5, 7])
def test_box_sum_equals_pooling_with_gradients(window: int) -> None:
    """The shifted-add box filter is n * avg_pool2d (zero padding), its backward the pooling's."""
    from segssl.losses.boundary import box_sum

    g = torch.Generator().manual_seed(window)
    x = torch.rand(2, 3, 9, 6, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(2, 3, 9, 6, generator=g, dtype=torch.float64)
    ref = window**2 * F.avg_pool2d(x, window, stride=1, padding=window // 2)
    new = box_sum(x, window)
    torch.testing.assert_close(new, ref)
    (g_new,) = torch.autograd.grad((new * up).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * up).sum(), x)
    torch.testing.assert_close(g_new, g_ref)
    assert torch.autograd.gradcheck(
        lambda t: box_sum(t, window), (x[:1, :1, :5, :4].detach().clone().requires_grad_(),)
    )


def test_local_ncc_with_pooled_box_sums_equals_shifted_adds() -> None:
    """local_ncc (values and gradients) as it was written with avg_pool2d box sums."""
    a = _texture(2, 20, 24, 1)
    b = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(2), requires_grad=True)

    def pooled(a: torch.Tensor, b: torch.Tensor, window: int = 5) -> torch.Tensor:
        n, c = float(window * window), b.shape[1]
        stacked = torch.cat([a, a * a, b, b * b, a * b], dim=1)
        sums = n * F.avg_pool2d(stacked, window, stride=1, padding=window // 2)
        s_a, s_aa = sums[:, :1], sums[:, 1:2]
        s_b, s_bb, s_ab = sums[:, 2:].split(c, dim=1)
        mean_a, mean_b = s_a / n, s_b / n
        cross = s_ab - mean_b * s_a - mean_a * s_b + mean_a * mean_b * n
        var_a = (s_aa - 2 * mean_a * s_a + mean_a * mean_a * n).clamp_min(0.0)
        var_b = (s_bb - 2 * mean_b * s_b + mean_b * mean_b * n).clamp_min(0.0)
        return cross * cross / (var_a * var_b + 1e-5)

    up = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    new, ref = local_ncc(a, b), pooled(a, b)
    torch.testing.assert_close(new, ref, rtol=1e-4, atol=1e-5)
    (g_new,) = torch.autograd.grad((new * up).sum(), b)
    (g_ref,) = torch.autograd.grad((ref * up).sum(), b)
    torch.testing.assert_close(g_new, g_ref, rtol=1e-3, atol=1e-4)


def test_entropy_cc_loss_equals_cc_loss_of_the_probabilities_with_gradients() -> None:
    """L_CC from precomputed raw entropies (the bim step's path) is cc_loss of the maps."""
    from segssl.losses.boundary import entropy_cc_loss

    g = torch.Generator().manual_seed(11)
    image = _texture(2, 12, 10, seed=12) * 3
    probs = (torch.randn(2, 3, 5, 12, 10, generator=g) * 3).softmax(2)
    ref_p = probs.clone().requires_grad_()
    ref = cc_loss(image, ref_p, 5, "sobel", 0.75)
    ref.sum().backward()
    new_p = probs.clone().requires_grad_()
    ent = entropy_map(new_p, normalise=False)  # (B, heads, H, W) raw entropies
    new = entropy_cc_loss(image, ent, 5, "sobel", 0.75)
    new.sum().backward()
    torch.testing.assert_close(new, ref.detach())
    torch.testing.assert_close(new_p.grad, ref_p.grad)
    one = entropy_cc_loss(image, ent[:, :1], 5, "sobel", 0.75)
    torch.testing.assert_close(one, cc_loss(image, probs[:, 0], 5, "sobel", 0.75).view(1))
    with pytest.raises(ValueError, match=r"image and entropy must share.*\(2, 3, 12, 9\)"):
        entropy_cc_loss(image, ent[..., :9])
