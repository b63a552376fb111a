"""Shared mechanics against their formulas: EMA teacher, ramp-ups, MC dropout, mixup, streams."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from segssl.config import AugmentConfig
from segssl.methods.base import Clock, MethodContext
from segssl.methods.mechanics import EMATeacher, RampUp, mc_dropout, mixup, two_stream
from segssl.models import UNet


def _ctx(epochs: int = 10, iters: int = 4) -> MethodContext:
    return MethodContext(
        2, ("a",), torch.device("cpu"), AugmentConfig(), 3, torch.Generator(), epochs, iters
    )


def test_ema_update_is_the_moving_average_of_the_parameters() -> None:
    torch.manual_seed(0)
    student = UNet(1, 2, base_width=4, depth=3)
    teacher = EMATeacher(student, decay=0.99)
    t0 = {k: v.clone() for k, v in teacher.net.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    teacher.update(student)
    for name, s in student.named_parameters():
        want = 0.99 * t0[name] + 0.01 * s
        torch.testing.assert_close(dict(teacher.net.named_parameters())[name], want)
    assert not any(p.requires_grad for p in teacher.parameters())
    # buffers are not averaged (BatchNorm running stats are the teacher's own)
    assert all(
        torch.equal(a, b) for a, b in zip(teacher.net.buffers(), student.buffers(), strict=True)
    )


def test_ema_warmup_makes_the_teacher_the_average_of_the_students_so_far() -> None:
    """With the reference code's warm-up (decay ``min(d, 1 - 1/(step + 1))``) the teacher after
    step n is the plain mean of its initial weights and the n students, until that decay reaches
    ``d``; without it the initial (random) weights keep ``d ** n`` of the teacher."""
    torch.manual_seed(0)
    student = UNet(1, 2, base_width=4, depth=3)
    warm, plain = EMATeacher(student, decay=0.999), EMATeacher(student, decay=0.999)
    history = [[p.detach().clone() for p in student.parameters()]]
    for step in range(1, 6):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p))
        history.append([p.detach().clone() for p in student.parameters()])
        warm.update(student, step)
        plain.update(student)
    mean = [torch.stack(ws).mean(0) for ws in zip(*history, strict=True)]
    for got, want in zip(warm.net.parameters(), mean, strict=True):
        torch.testing.assert_close(got, want)
    init = history[0]
    drift = max(
        (p - w).abs().max().item() for p, w in zip(plain.net.parameters(), init, strict=True)
    )
    assert drift < 0.05  # 0.999 ** 5 of the teacher is still the initialisation
    assert [warm.decay_at(s) for s in (1, 99, 10_000)] == [0.5, 0.99, 0.999]
    assert warm.decay_at(None) == 0.999


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_ema_decay_outside_the_open_unit_interval_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\)"):
        EMATeacher(UNet(1, 2, base_width=4, depth=3), decay)


def test_ema_teacher_mode_is_its_own_choice() -> None:
    student = UNet(1, 2, base_width=4, depth=3)
    student.frozen_prefixes = ("Conv1",)  # a frozen student block does not freeze the teacher
    train, fixed = EMATeacher(student, 0.9, bn="train"), EMATeacher(student, 0.9, bn="eval")
    train.train(), fixed.train()
    bns = [m for m in train.net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.training for m in bns)
    assert not any(m.training for m in fixed.net.modules())
    train.eval()
    assert not any(m.training for m in train.net.modules())


@pytest.mark.parametrize(
    ("kind", "formula"),
    [
        ("sigmoid", lambda t: math.exp(-5.0 * (1.0 - t) ** 2)),
        ("linear", lambda t: t),
        ("cosine", lambda t: 0.5 * (1.0 - math.cos(math.pi * t))),
    ],
)
def test_ramp_ups_follow_their_formula_in_epochs(kind: str, formula) -> None:
    ramp = RampUp.checked(kind, 5, _ctx(epochs=10, iters=4), "method.rampup")
    for step in range(1, 41):
        clock = Clock(step, (step - 1) // 4, 4, 40)
        t = min((step - 1) / 4 / 5, 1.0)  # epochs done before the step / ramp length
        assert ramp(clock) == pytest.approx(formula(t), abs=1e-12)
    assert ramp(Clock(1, 0, 4, 40)) == pytest.approx(formula(0.0))
    assert ramp(Clock(21, 5, 4, 40)) == 1.0
    assert RampUp.checked(kind, 0, _ctx(), "k")(Clock(1, 0, 4, 40)) == 1.0  # no ramp


def test_a_ramp_longer_than_the_run_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"method.rampup_epochs: ramp-up of 12 epochs .* train.epochs=10"
    ):
        RampUp.checked("sigmoid", 12, _ctx(epochs=10), "method.rampup_epochs")
    with pytest.raises(ValueError, match="unknown ramp-up 'exp'"):
        RampUp.checked("exp", 1, _ctx(), "method.rampup")


def test_mc_dropout_passes_are_independent_dropout_masks() -> None:
    net = nn.Sequential(nn.Identity(), nn.Dropout(0.25)).eval()
    x = torch.ones(2, 3, 8, 8)
    torch.manual_seed(3)
    out = mc_dropout(net, x, passes=4)
    torch.manual_seed(3)
    manual = torch.stack([nn.functional.dropout(x, 0.25, training=True) for _ in range(4)])
    assert out.shape == (4, 2, 3, 8, 8) and torch.equal(out, manual)
    assert out.unique().tolist() == [0.0, pytest.approx(1 / 0.75)]  # inverted dropout
    assert not net[1].training  # the network's own mode is restored
    with pytest.raises(ValueError, match="set model.dropout > 0"):
        mc_dropout(UNet(1, 2, base_width=4, depth=3), x[:, :1], 2)


def test_mixup_is_the_convex_combination_drawn_from_the_generator() -> None:
    g = torch.Generator().manual_seed(7)
    x, y = torch.rand(5, 1, 4, 4), torch.rand(5, 3, 4, 4)
    mx, my, lam, perm = mixup(x, y, 0.4, g)
    replay = torch.Generator().manual_seed(7)
    gammas = torch._standard_gamma(torch.full((2,), 0.4, dtype=torch.float64), generator=replay)
    want_lam = (gammas[0] / gammas.sum()).float()
    want_perm = torch.randperm(5, generator=replay)
    assert torch.equal(lam, want_lam) and torch.equal(perm, want_perm)
    assert lam.device.type == "cpu" and lam.ndim == 0
    # Beta(alpha, alpha) moments: mean 1/2, variance 1 / (4 (2 alpha + 1))
    draws = torch.stack([mixup(x, y, 0.4, g)[2] for _ in range(4000)]).double()
    assert float(draws.mean()) == pytest.approx(0.5, abs=0.02)
    assert float(draws.var()) == pytest.approx(1 / (4 * 1.8), abs=0.01)
    torch.testing.assert_close(mx, lam * x + (1 - lam) * x[perm])
    torch.testing.assert_close(my, lam * y + (1 - lam) * y[perm])
    with pytest.raises(ValueError, match="alpha must be > 0"):
        mixup(x, y, 0.0, g)


def test_two_stream_is_one_pass_with_shared_batch_statistics() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)).train()
    lab, unl = torch.randn(2, 1, 4, 4), torch.randn(3, 1, 4, 4) + 2.0
    out_l, out_u = two_stream(net, lab, unl)
    joint = net(torch.cat([lab, unl]))
    assert torch.equal(out_l, joint[:2]) and torch.equal(out_u, joint[2:])
    assert not torch.allclose(out_l, net(lab))  # separate passes would normalise differently


def test_an_eval_mode_teacher_s_batchnorm_statistics_follow_the_student() -> None:
    """A teacher that always runs in eval mode never updates its own running statistics: they
    are averaged from the student's like its weights (else they stay the initial ones)."""
    torch.manual_seed(0)
    student = UNet(1, 2, base_width=4, depth=3).train()
    teacher = EMATeacher(student, decay=0.9, bn="eval")
    t0 = {k: v.clone() for k, v in teacher.net.named_buffers()}
    student(torch.randn(4, 1, 32, 32) * 3 + 2)  # moves the student's running statistics
    teacher.update(student)
    for name, s in student.named_buffers():
        got = dict(teacher.net.named_buffers())[name]
        if s.is_floating_point():
            torch.testing.assert_close(got, 0.9 * t0[name] + 0.1 * s)
        else:  # num_batches_tracked
            assert torch.equal(got, s)
    assert any(not torch.equal(t0[n], b) for n, b in teacher.net.named_buffers())
