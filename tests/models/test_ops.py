"""Equivalence tests of segssl.models.ops: the matmul 1x1 convolution and the fused softmax +
entropy node, values and gradients against the plain formulations they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segssl.losses.boundary import entropy_map
from segssl.models import UNet
from segssl.models.ops import Conv1x1, conv1x1, softmax_entropy


@pytest.mark.parametrize("bias", [True, False])
def test_conv1x1_equals_conv2d_with_gradients(bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(6, 4, 1, bias=bias)
    fast = Conv1x1(6, 4, bias=bias)
    fast.load_state_dict(conv.state_dict())  # the same parameters and keys
    x = torch.randn(3, 6, 9, 7, generator=g)
    up = torch.randn(3, 4, 9, 7, generator=g)
    outs, grads = [], []
    for module in (conv, fast):
        xi = x.clone().requires_grad_()
        y = module(xi)
        (y * up).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad for p in module.parameters()])
    torch.testing.assert_close(outs[1], outs[0])
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b)
    # a non-contiguous input takes conv2d (no copy), with the same result
    xt = x.transpose(2, 3)
    torch.testing.assert_close(fast(xt), conv(xt))
    torch.testing.assert_close(conv1x1(x, conv.weight, conv.bias), outs[0])


def test_unet_head_is_the_matmul_conv_with_conv2d_keys() -> None:
    net = UNet(1, 3, base_width=4, depth=3)
    assert isinstance(net.Conv_1x1, Conv1x1) and isinstance(net.Conv_1x1, torch.nn.Conv2d)
    assert {"Conv_1x1.weight", "Conv_1x1.bias"} <= set(net.state_dict())
    d = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(
        net.decode_head(d), F.conv2d(d, net.Conv_1x1.weight, net.Conv_1x1.bias)
    )


def _two_nodes(z: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The formulation the fused node replaces: softmax, then the entropy of entropy_map."""
    p = torch.softmax(z, dim)
    return p, entropy_map(p.unsqueeze(1) if dim == 1 else p, normalise=False).squeeze(1)


@pytest.mark.parametrize("outputs", ["both", "probs", "entropy"])
def test_softmax_entropy_equals_softmax_then_entropy_with_gradients(outputs: str) -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 3, 5, 6, 7, generator=g) * 4  # (B, heads, K, H, W), softmax over dim 2
    z[0, 0, :, 1, 1] = torch.tensor([60.0, -60.0, 0.0, 0.0, 0.0])  # probabilities below 1e-10
    up_p = torch.randn(z.shape, generator=g)
    up_h = torch.randn(2, 3, 6, 7, generator=g) * 10

    def loss(pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        p, h = pair
        terms = {"probs": (p * up_p).sum(), "entropy": (h * up_h).sum()}
        return sum(terms.values()) if outputs == "both" else terms[outputs]

    z_new = z.clone().requires_grad_()
    p_new, h_new = softmax_entropy(z_new, 2)
    z_ref = z.clone().requires_grad_()
    p_ref, h_ref = _two_nodes(z_ref, 2)
    assert h_new.shape == (2, 3, 6, 7)
    assert torch.equal(p_new, p_ref) and torch.equal(h_new, h_ref)  # the same arithmetic
    loss((p_new, h_new)).backward()
    loss((p_ref, h_ref)).backward()
    torch.testing.assert_close(z_new.grad, z_ref.grad, rtol=1e-5, atol=1e-5)
    # and against float64 (where the constant the fused backward drops cancels exactly)
    z64 = z.double().requires_grad_()
    p64 = torch.softmax(z64, 2)
    h64 = -(p64 * p64.clamp_min(1e-10).log()).sum(2)
    loss((p64, h64)).backward()
    torch.testing.assert_close(z_new.grad.double(), z64.grad, rtol=1e-5, atol=1e-5)


def test_softmax_entropy_gradient_has_the_entropy_term() -> None:
    """Negative control: dropping the entropy's gradient (or its sign) is detected."""
    z = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(2)).requires_grad_()
    _, h = softmax_entropy(z, 1)
    (g,) = torch.autograd.grad(h.sum(), z)
    p = torch.softmax(z.detach(), 1)
    expected = -p * (p.log() + (-(p * p.log()).sum(1, keepdim=True)))  # dH/dz = -p (log p + H)
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-6)
    assert g.abs().max() > 1e-2


# ----------------------------------------------------------- review: the fused node's edges
def _reference(z: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain autograd of the formula: softmax, then ``-sum p log max(p, 1e-10)``."""
    p = torch.softmax(z, dim)
    return p, -(p * p.clamp_min(1e-10).log()).sum(dim)


def test_softmax_entropy_gradcheck_float64() -> None:
    z = torch.randn(2, 5, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for dim in (1, -1):
        zz = z.clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda t, d=dim: softmax_entropy(t, d), (zz,))


def test_softmax_entropy_double_backward_is_exact() -> None:
    """A second derivative (create_graph) must see log p's dependence on z: the saved
    ``log max(p, 1e-10)`` of the forward is a constant to autograd, so a backward built on it
    gave a silently wrong Hessian-vector product (gradgradcheck failed)."""
    z = torch.randn(2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    zz = z.requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: softmax_entropy(t, 1), (zz,))
    # and against the plain formula's Hessian-vector product of the entropy alone
    v = torch.randn_like(z)
    (g,) = torch.autograd.grad(softmax_entropy(zz, 1)[1].sum(), zz, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), zz)
    (g_ref,) = torch.autograd.grad(_reference(zz, 1)[1].sum(), zz, create_graph=True)
    (hv_ref,) = torch.autograd.grad((g_ref * v).sum(), zz)
    torch.testing.assert_close(hv, hv_ref)


def test_softmax_entropy_masked_and_extreme_logits_match_autograd() -> None:
    """-inf logits (masked categories), an all-masked row (NaN in both), logits of magnitude
    1e4 (probabilities that underflow to exactly 0) and 60 (below the 1e-10 floor)."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, 6, 4, 4, dtype=torch.float64, generator=g) * 3
    z[0, :3] = float("-inf")  # half the categories masked at every pixel of image 0
    z[1, :, 0, 0] = float("-inf")  # one pixel with every category masked
    z[2, :, 1] *= 1e4  # one-hot after underflow
    z[2, 0, 2, 2], z[2, 1, 2, 2] = 60.0, -60.0
    up_p = torch.randn(z.shape, dtype=torch.float64, generator=g)
    up_h = torch.randn(3, 4, 4, dtype=torch.float64, generator=g)
    grads, values = [], []
    for fn in (softmax_entropy, _reference):
        zz = z.clone().requires_grad_()
        p, h = fn(zz, 1)
        ((p * up_p).nan_to_num().sum() + (h * up_h).nan_to_num().sum()).backward()
        grads.append(zz.grad)
        values.append((p.detach(), h.detach()))
    torch.testing.assert_close(values[0][0], values[1][0], equal_nan=True)
    torch.testing.assert_close(values[0][1], values[1][1], equal_nan=True)
    torch.testing.assert_close(grads[0], grads[1], equal_nan=True, rtol=1e-7, atol=1e-9)
    assert torch.isnan(values[0][1][1, 0, 0]) and torch.isnan(grads[0][1, :, 0, 0]).all()
    finite = torch.ones_like(z, dtype=torch.bool)
    finite[1, :, 0, 0] = False
    assert torch.isfinite(grads[0][finite]).all()
    assert (grads[0][0, :3] == 0).all()  # masked categories get no gradient


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_softmax_entropy_of_half_logits_is_float32_and_finite(dtype: torch.dtype) -> None:
    """Half logits are computed in float32 (as autocast runs softmax): in float16 the floor
    1e-10 rounds to 0, so an underflowed probability gave log 0 and a NaN entropy."""
    z = torch.randn(2, 40, 3, 3, generator=torch.Generator().manual_seed(6)) * 8
    z[:, 0] = 30.0  # the other probabilities underflow in float16
    zh = z.to(dtype).requires_grad_()
    p, h = softmax_entropy(zh, 1)
    assert p.dtype == h.dtype == torch.float32
    p_ref, h_ref = _reference(zh.detach().float(), 1)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(p, p_ref)
    h.sum().backward()
    assert zh.grad.dtype == dtype and torch.isfinite(zh.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_probs_and_entropy_under_autocast_equals_probs_then_entropy(dtype) -> None:
    """The fused entropy in float32 under autocast, as cc_loss computed it before (autocast
    off): autocast would run its vecdot in half precision (an entropy rounded to 1e-3 before
    L_CC's min-max normalisation)."""
    from segssl.models.heads import ClusterHeads

    torch.manual_seed(7)
    heads = ClusterHeads(6, k=5, n_heads=2)
    x = torch.randn(2, 6, 8, 8)
    results = []
    for fused in (True, False):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            if fused:
                p, h = heads.probs_and_entropy(xi)
            else:
                p = heads.probs(xi)
                with torch.autocast("cpu", enabled=False):  # as cc_loss computes it
                    h = entropy_map(p, normalise=False)
        assert p.dtype == h.dtype == torch.float32
        (p.pow(2).sum() + h.sum()).backward()
        results.append((p.detach(), h.detach(), xi.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_conv1x1_initialises_like_conv2d_and_loads_an_old_unet_checkpoint() -> None:
    """Same RNG draws as ``nn.Conv2d(c, o, 1)`` (a seeded run builds the same network as before),
    and a U-Net saved with a plain ``nn.Conv2d`` head loads into today's with equal logits."""
    torch.manual_seed(8)
    old = torch.nn.Conv2d(6, 3, 1)
    torch.manual_seed(8)
    new = Conv1x1(6, 3)
    assert torch.equal(old.weight, new.weight) and torch.equal(old.bias, new.bias)
    torch.manual_seed(9)
    net = UNet(1, 3, base_width=4, depth=3)
    torch.manual_seed(9)
    before = UNet(1, 3, base_width=4, depth=3)
    before.Conv_1x1 = torch.nn.Conv2d(4, 3, 1)  # the pre-change head
    torch.manual_seed(10)
    before.Conv_1x1.reset_parameters()
    state = before.state_dict()
    assert list(state) == list(net.state_dict())
    net.load_state_dict(state)
    x = torch.randn(2, 1, 16, 16)
    net.eval(), before.eval()
    torch.testing.assert_close(net(x), before(x))
    xl = x.contiguous(memory_format=torch.channels_last)  # conv2d fallback path
    torch.testing.assert_close(net(xl), before(xl))
