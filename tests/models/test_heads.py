"""Tests of segssl.models.heads: shapes, normalisation, known outputs, errors."""

from __future__ import annotations

import math

import pytest
import torch

from segssl.models import ClusterHeads, DenseProjector, GlobalProjector, UNet


def test_cluster_heads_known_output_and_shapes() -> None:
    heads = ClusterHeads(in_ch=2, k=3, n_heads=2)
    with torch.no_grad():
        for h in heads.heads:
            h.weight.zero_()
            h.bias.zero_()
        heads.heads[0].weight[0, 0] = 1.0  # cluster 0 score = channel 0
        heads.heads[0].bias[2] = math.log(2.0)  # cluster 2 twice as likely as cluster 1
    x = torch.zeros(1, 2, 2, 2)
    x[0, 0, 0, 0] = math.log(3.0)
    probs = heads(x)
    assert len(probs) == 2 and all(p.shape == (1, 3, 2, 2) for p in probs)
    torch.testing.assert_close(probs[0][0, :, 0, 0], torch.tensor([0.5, 1 / 6, 1 / 3]))
    torch.testing.assert_close(probs[0][0, :, 1, 1], torch.tensor([0.25, 0.25, 0.5]))
    torch.testing.assert_close(probs[1], torch.full((1, 3, 2, 2), 1 / 3))


def test_cluster_heads_on_unet_tap_sum_to_one_and_are_independent() -> None:
    net = UNet(1, 2, base_width=4, depth=3)
    _, feats = net(torch.rand(2, 1, 16, 16), taps=["decoder2"])
    f = feats["decoder2"]  # Up_conv2 of the depth-3 net
    heads = ClusterHeads(f.shape[1], k=5, n_heads=3)
    probs = heads(f)
    for p in probs:
        assert p.shape == (2, 5, 16, 16)
        torch.testing.assert_close(p.sum(1), torch.ones(2, 16, 16))
    assert not torch.allclose(probs[0], probs[1])
    probs[0][:, 0].sum().backward()
    # the heads run as one stacked conv: head 1 gets an exact zero gradient from head 0's loss
    assert torch.count_nonzero(heads.heads[1].weight.grad) == 0
    assert torch.count_nonzero(heads.heads[0].weight.grad) > 0


def test_global_projector_unit_norm_and_pooling() -> None:
    proj = GlobalProjector(in_ch=8, hidden=16, out=4)
    x = torch.rand(3, 8, 5, 7)
    z = proj(x)
    assert z.shape == (3, 4)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    # global pooling: a spatial permutation of the map gives the same embedding
    perm = torch.randperm(35, generator=torch.Generator().manual_seed(0))
    shuffled = x.flatten(2)[:, :, perm].view(3, 8, 5, 7)
    torch.testing.assert_close(proj(shuffled), z)


def test_dense_projector_grid_and_unit_norm() -> None:
    proj = DenseProjector(in_ch=6, hidden=8, out=5, grid=20)
    z = proj(torch.rand(2, 6, 64, 64))
    assert z.shape == (2, 5, 20, 20)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2, 20, 20))
    # pooling on a multiple of the grid is plain average pooling of blocks
    x = torch.rand(1, 6, 40, 40)
    manual = proj.mlp(torch.nn.functional.avg_pool2d(x, 2))
    torch.testing.assert_close(proj(x), torch.nn.functional.normalize(manual, dim=1))


def test_heads_reject_bad_arguments_and_inputs() -> None:
    with pytest.raises(ValueError, match="K must be an int >= 2, got 1"):
        ClusterHeads(8, k=1)
    with pytest.raises(ValueError, match="n_heads must be an int >= 1, got 0"):
        ClusterHeads(8, k=4, n_heads=0)
    with pytest.raises(ValueError, match=r"expects a \(B, 8, H, W\).*\(2, 4, 16, 16\)"):
        ClusterHeads(8, k=4)(torch.rand(2, 4, 16, 16))
    with pytest.raises(ValueError, match=r"GlobalProjector expects a \(B, 8, H, W\)"):
        GlobalProjector(8)(torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="grid must be an int >= 1, got 0"):
        DenseProjector(8, grid=0)


def _reference_probs(heads: ClusterHeads, x: torch.Tensor) -> list[torch.Tensor]:
    """Each head run on its own: its Conv2d module, then a softmax over K."""
    return [torch.softmax(h(x), dim=1) for h in heads.heads]


def test_stacked_probs_equal_heads_run_one_by_one_with_gradients() -> None:
    torch.manual_seed(0)
    heads = ClusterHeads(in_ch=6, k=5, n_heads=3)
    x = torch.randn(2, 6, 7, 9)
    mask = (torch.rand(2, 1, 7, 9) > 0.3).float()
    up = torch.randn(2, 3, 5, 7, 9)  # an arbitrary upstream gradient

    x_ref = x.clone().requires_grad_()
    ref = torch.stack([p * mask for p in _reference_probs(heads, x_ref)], dim=1)
    (ref * up).sum().backward()
    ref_grads = [x_ref.grad] + [p.grad.clone() for p in heads.parameters()]
    heads.zero_grad()

    x_new = x.clone().requires_grad_()
    new = heads.probs(x_new, mask)
    assert new.shape == (2, 3, 5, 7, 9)
    torch.testing.assert_close(new, ref)
    (new * up).sum().backward()
    new_grads = [x_new.grad] + [p.grad for p in heads.parameters()]
    for a, b in zip(new_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the list API gives the per-head maps; masked pixels are exactly 0
    for p, r in zip(heads(x), _reference_probs(heads, x), strict=True):
        torch.testing.assert_close(p, r)
    outside = (mask.unsqueeze(1) == 0).expand_as(new)
    assert outside.any() and bool((new.detach()[outside] == 0).all())


def test_cluster_heads_state_dict_keys_and_mask_errors() -> None:
    heads = ClusterHeads(in_ch=4, k=3, n_heads=2)
    assert sorted(heads.state_dict()) == [
        "heads.0.bias",
        "heads.0.weight",
        "heads.1.bias",
        "heads.1.weight",
    ]
    x = torch.rand(2, 4, 5, 5)
    with pytest.raises(ValueError, match=r"mask must be .* shape \(2, 1, 5, 5\).*\(2, 5, 5\)"):
        heads.probs(x, torch.ones(2, 5, 5))
    with pytest.raises(ValueError, match=r"float or bool tensor.*torch.int64"):
        heads.probs(x, torch.ones(2, 1, 5, 5, dtype=torch.long))
    # a bool mask is the float mask
    mask = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(0)) > 0.5
    torch.testing.assert_close(heads.probs(x, mask), heads.probs(x, mask.float()))


def test_1x1_conv_as_matmul_equals_conv2d_with_gradients() -> None:
    """The heads' batched matrix product over channels is conv2d with the stacked weights."""
    torch.manual_seed(0)
    heads = ClusterHeads(in_ch=6, k=4, n_heads=3)
    x = torch.randn(3, 6, 9, 7, requires_grad=True)
    z = heads.stacked_logits(x)
    weight = torch.cat([h.weight for h in heads.heads])
    bias = torch.cat([h.bias for h in heads.heads])
    x_ref = x.detach().clone().requires_grad_()
    ref = torch.nn.functional.conv2d(x_ref, weight, bias).view(3, 3, 4, 9, 7)
    torch.testing.assert_close(z, ref)
    up = torch.randn_like(ref)
    grads = torch.autograd.grad((z * up).sum(), [x, *heads.parameters()])
    ref_grads = torch.autograd.grad((ref * up).sum(), [x_ref, *heads.parameters()])
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b)
    # channels_last features give the same scores
    torch.testing.assert_close(
        heads.stacked_logits(x.detach().contiguous(memory_format=torch.channels_last)), z.detach()
    )
