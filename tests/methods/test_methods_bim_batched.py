"""The batched bim step (all heads in one tensor) against the per-head reference formulation."""

from __future__ import annotations

import pytest
import torch

from segssl.engine.loop import build_method
from segssl.losses import mi_loss
from segssl.losses.boundary import cc_loss
from segssl.methods import get_method
from segssl.methods.base import Clock
from segssl.models import build_model


def _reference_parts(method, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """BIM eqs. 9 and 3-8 written head by head: each head's 1x1 conv + softmax, then one
    mi_loss / cc_loss call per head on (B, K, H, W) maps, averaged (the pre-batching code)."""
    cfg, x = method.cfg, batch["image"]
    state = method.T.sample(x.shape[0], generator=generator)
    tx = state.image(x)
    _, f_tx = method.model(tx, taps=[cfg.dense_tap, cfg.global_tap])
    _, f_x = method.model(x, taps=[cfg.dense_tap, cfg.global_tap])
    convs = method.heads["cluster"].heads
    p_hat = [h(f_tx[cfg.dense_tap]).softmax(1) for h in convs]
    warped = state.geometry(f_x[cfg.dense_tap])
    mask = state.valid_mask(*x.shape[-2:])
    p_tilde = [h(warped).softmax(1) * mask for h in convs]
    mi = [mi_loss(a, b, cfg.alpha, cfg.lamda) for a, b in zip(p_hat, p_tilde, strict=True)]
    cc = [cc_loss(tx, p, cfg.window, cfg.edge, cfg.edge_power) for p in p_hat]
    return {"mi": torch.stack(mi).mean(), "cc": torch.stack(cc).mean()}


def _batched_and_reference(tiny, ref_terms=("mi", "cc")) -> tuple:
    """The batched step's loss parts and gradients, and the per-head reference's (the sum of
    ``ref_terms``, each signed: ``"-cc"`` subtracts L_CC)."""
    cfg = tiny("bim", "pretrain", method={"name": "bim", "w_con": 0, "k": 6, "heads": 3})
    torch.manual_seed(0)
    model = build_model(cfg.model, 4)
    model.eval()  # batch-norm statistics are not updated between the two passes
    method = build_method(cfg, get_method("bim"), model, 4, ("a", "b", "c"), torch.device("cpu"))
    ctx = method.ctx
    with torch.no_grad():  # sharper heads: entropy maps with structure, not near-flat maps whose
        for p in method.heads["cluster"].parameters():  # min-max normalisation magnifies 1e-7
            p.mul_(30.0)  # rounding differences of the stacked conv into 1e-3 gradient changes
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.rand(3, 1, 32, 32, generator=g), "partition": torch.tensor([0, 1, 2])}
    named = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    params = [p for _, p in named]

    ctx.generator.manual_seed(5)
    out = method.training_step(None, batch, Clock(1, 0, 2, 4))
    grads = torch.autograd.grad(out["loss"], params, allow_unused=True)
    ref = _reference_parts(method, batch, torch.Generator().manual_seed(5))
    total = sum(-ref[t[1:]] if t.startswith("-") else ref[t] for t in ref_terms)
    ref_grads = torch.autograd.grad(total, params, allow_unused=True)
    return out, ref, list(zip([n for n, _ in named], grads, ref_grads, strict=True))


def _gradient_mismatches(pairs: list) -> tuple[list, int]:
    """Parameters whose gradients differ beyond the rounding tolerance, and how many were
    compared.

    The step's softmax + entropy is one autograd node whose backward drops the entropy
    gradient's constant term (it cancels in the softmax backward); the reference sums it in
    and cancels it numerically. Through the min-max normalised entropy maps of these sharp
    heads, float32 rounding then differs by up to ~1e-3 of a gradient's norm (both
    formulations are ~1 % away from a float64 evaluation here; the kernel itself is checked
    against float64 in tests/models/test_ops.py), so each parameter's gradient is compared by
    the norm of the difference, relative to its own norm plus a floor of 1e-5 of the whole
    gradient's norm (deep layers get gradients at the level of the rounding noise).
    """
    whole = sum(float(b.pow(2).sum()) for _, _, b in pairs if b is not None) ** 0.5
    bad, checked = [], 0
    for name_p, a, b in pairs:
        if b is None:
            if a is not None and torch.count_nonzero(a) != 0:
                bad.append((name_p, "gradient where the reference has none"))
            continue
        err, norm = float((a - b).norm()), float(b.norm())
        if err > 2e-3 * norm + 1e-5 * whole:
            bad.append((name_p, err, norm))
        checked += 1
    return bad, checked


def test_batched_bim_step_equals_the_per_head_reference(tiny) -> None:
    out, ref, pairs = _batched_and_reference(tiny)
    for part in ("mi", "cc"):
        torch.testing.assert_close(out[part].detach(), ref[part].detach())
    assert -1 <= float(out["cc"]) <= 0
    bad, checked = _gradient_mismatches(pairs)
    assert not bad, bad
    assert checked > 10  # the U-Net and all three heads received gradients


@pytest.mark.parametrize("ref_terms", [("mi",), ("mi", "-cc"), ("cc",)])
def test_gradient_comparison_catches_a_missing_or_flipped_term(tiny, ref_terms) -> None:
    """Negative control of the norm-based tolerance: a reference gradient without L_CC, with
    L_CC's sign flipped, or without L_MI is caught on many parameters (one suffices to fail
    the comparison)."""
    _, _, pairs = _batched_and_reference(tiny, ref_terms)
    bad, checked = _gradient_mismatches(pairs)
    assert len(bad) >= 10, (len(bad), checked)  # 28-46 of 72 when measured


def test_gradient_comparison_catches_a_wrong_entropy_gradient_sign(tiny, monkeypatch) -> None:
    """Negative control through the fused kernel: its entropy gradient with the wrong sign
    (``+g_H log p``) gives a batched step whose gradients the comparison rejects."""
    from segssl.models import ops

    def wrong(ctx, g_p, g_ent):
        p, log_p = ctx.saved_tensors
        g = torch.addcmul(
            g_p if g_p is not None else torch.zeros_like(p),
            g_ent.unsqueeze(ctx.dim),
            log_p,
            value=1,
        )
        return torch._softmax_backward_data(g, p, ctx.dim, p.dtype), None

    monkeypatch.setattr(ops._SoftmaxEntropy, "backward", staticmethod(wrong))
    _, _, pairs = _batched_and_reference(tiny)
    bad, checked = _gradient_mismatches(pairs)
    assert len(bad) >= 10, (len(bad), checked)  # 28-46 of 72 when measured


def test_bim_step_runs_no_segmentation_head_and_equals_the_full_forward(tiny) -> None:
    """The step takes its taps from ``model.features``: the 1x1 segmentation head, whose logits
    a pre-training step throws away, is never run, and loss and gradients are exactly those of
    taking the taps from the full forward pass."""
    cfg = tiny("bim", "pretrain", method={"name": "bim", "k": 6, "heads": 2})
    g = torch.Generator().manual_seed(1)
    image = torch.rand(4, 1, 32, 32, generator=g)
    batch = {"image": image, "partition": torch.tensor([0, 1, 2, 0])}

    def step(full_forward: bool) -> tuple[torch.Tensor, list, int]:
        torch.manual_seed(0)
        model = build_model(cfg.model, 4)
        cpu = torch.device("cpu")
        method = build_method(cfg, get_method("bim"), model, 4, ("a", "b", "c"), cpu)
        if full_forward:  # the taps as the full forward pass returns them (logits computed)
            model.features = lambda x, taps: model(x, taps=taps)[1]
        calls = []
        model.Conv_1x1.register_forward_hook(lambda *a: calls.append(1))
        method.train()
        method.ctx.generator.manual_seed(5)
        out = method.training_step(None, batch, Clock(1, 0, 2, 4))
        params = [p for p in method.parameters() if p.requires_grad]
        grads = torch.autograd.grad(out["loss"], params, allow_unused=True)
        return out["loss"].detach(), grads, len(calls)

    loss, grads, head_calls = step(full_forward=False)
    ref_loss, ref_grads, ref_calls = step(full_forward=True)
    assert head_calls == 0 and ref_calls == 2
    assert torch.equal(loss, ref_loss)
    for a, b in zip(grads, ref_grads, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
