"""Tests of segssl.losses.supervised: golden values and error paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segssl.losses.supervised import cross_entropy, dice_loss, entropy_loss


def test_cross_entropy_golden() -> None:
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    lse0 = math.log(math.exp(2) + 1)
    lse1 = math.log(1 + math.e)
    expected = ((lse0 - 2.0) + (lse1 - 1.0)) / 2
    assert float(cross_entropy(logits, target)) == pytest.approx(expected, abs=1e-6)


def test_dice_loss_golden() -> None:
    probs = np.array([[0.8, 0.2, 0.5, 1.0], [0.2, 0.8, 0.5, 0.0]])  # (C=2, 4 pixels)
    target = np.array([0, 1, 1, 0])
    onehot = np.stack([target == 0, target == 1]).astype(float)
    per_class = [
        (2 * (probs[c] * onehot[c]).sum() + 1e-5) / (probs[c].sum() + onehot[c].sum() + 1e-5)
        for c in range(2)
    ]
    logits = torch.tensor(np.log(np.clip(probs, 1e-12, None)), dtype=torch.float64)
    logits = logits.reshape(2, 1, 4).unsqueeze(0)  # (1, 2, 1, 4)
    t = torch.tensor(target).reshape(1, 1, 4)
    assert float(dice_loss(logits, t)) == pytest.approx(1 - np.mean(per_class), abs=1e-6)
    assert float(dice_loss(logits, t, include_background=False)) == pytest.approx(
        1 - per_class[1], abs=1e-6
    )


@pytest.mark.parametrize("classes", [2, 8])
def test_dice_loss_foreground_only_on_a_batch_without_foreground(classes: int) -> None:
    """A background-only batch (a slice batch missing the structure) with the background left out
    of the mean: no NaN; foreground predicted scores ~1 with a vanishing gradient (the eps
    smoothing), foreground predicted absent scores 0, as the docstring says."""
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    logits = torch.randn(2, classes, 8, 8, generator=torch.Generator().manual_seed(0))
    logits.requires_grad_(True)
    loss = dice_loss(logits, target, include_background=False)
    (grad,) = torch.autograd.grad(loss, logits)
    assert 0.99 < float(loss.detach()) <= 1.0
    assert torch.isfinite(grad).all() and float(grad.abs().max()) < 1e-6
    absent = torch.full((2, classes, 8, 8), -30.0)
    absent[:, 0] = 30.0
    assert float(dice_loss(absent, target, include_background=False)) == pytest.approx(0, abs=1e-6)


def test_dice_loss_perfect_prediction_is_zero() -> None:
    target = torch.tensor([[[0, 1], [2, 1]]])
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert float(dice_loss(logits, target)) == pytest.approx(0.0, abs=1e-5)


def test_entropy_loss_golden_and_zeros() -> None:
    uniform = torch.full((2, 4, 3, 3), 0.25)
    assert float(entropy_loss(uniform)) == pytest.approx(math.log(4), abs=1e-6)
    onehot = torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).float().requires_grad_(True)
    loss = entropy_loss(onehot)
    (g,) = torch.autograd.grad(loss, onehot)
    assert float(loss.detach()) == 0.0 and torch.isfinite(g).all()


def test_supervised_losses_decrease_under_sgd() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 6, 6), generator=g)
    for fn in (cross_entropy, dice_loss, lambda lg, _t: entropy_loss(lg.softmax(1))):
        logits = torch.randn(2, 3, 6, 6, generator=g).requires_grad_(True)
        opt = torch.optim.Adam([logits], lr=0.1)
        losses = []
        for _ in range(10):
            loss = fn(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        assert losses[-1] < losses[0] - 0.01


def test_supervised_error_paths() -> None:
    logits = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 4, 5\)"):
        cross_entropy(logits, torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\].*\[3, 3\]"):
        dice_loss(logits, torch.full((2, 4, 4), 3))
    with pytest.raises(ValueError, match="integer class indices"):
        cross_entropy(logits, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="eps must be > 0"):
        dice_loss(logits, torch.zeros(2, 4, 4, dtype=torch.long), eps=0)
    with pytest.raises(ValueError, match="K=1"):
        entropy_loss(torch.ones(2, 1, 4, 4))
