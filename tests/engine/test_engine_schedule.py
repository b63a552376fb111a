"""LR schedule (warm-up then cosine, per epoch), optimiser choice and runtime decisions."""

from __future__ import annotations

import math

import pytest
import torch

from segssl.config import OptimConfig, TrainConfig
from segssl.engine import EngineConfigError, build_optimizer, build_scheduler, lr_at
from segssl.engine.runtime import resolve_runtime


def _lrs(cfg: OptimConfig, epochs: int) -> list[float]:
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))])
    sched = build_scheduler(cfg, opt, epochs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_paper_schedule_known_values() -> None:
    cfg = OptimConfig()  # BIM App. F ACDC pre-training: 5e-7, x400 over 10 epochs, 50 epochs
    lrs = _lrs(cfg, 50)
    assert lrs[0] == pytest.approx(5e-7, rel=1e-9)
    assert lrs[5] == pytest.approx(5e-7 + (2e-4 - 5e-7) * 0.5, rel=1e-9)  # half-way warm-up
    assert lrs[10] == pytest.approx(2e-4, rel=1e-9)  # peak lr * N
    assert lrs[30] == pytest.approx(1e-4, rel=1e-9)  # half-way through the cosine
    assert lrs[49] == pytest.approx(2e-4 * (1 + math.cos(math.pi * 39 / 40)) / 2, rel=1e-9)
    assert lrs[49] < 1e-6  # ~0 at the end
    assert lrs == pytest.approx([lr_at(cfg, e, 50) for e in range(50)], rel=1e-9)


def test_finetune_schedule_and_no_warmup() -> None:
    cfg = OptimConfig(lr=1e-7, warmup_factor=200)
    assert _lrs(cfg, 50)[10] == pytest.approx(2e-5, rel=1e-9)
    flat = OptimConfig(lr=1e-3, warmup_factor=1, warmup_epochs=0)
    lrs = _lrs(flat, 4)
    assert lrs == pytest.approx(
        [
            1e-3,
            1e-3 * (1 + math.cos(math.pi / 4)) / 2,
            5e-4,
            1e-3 * (1 + math.cos(3 * math.pi / 4)) / 2,
        ],
        rel=1e-9,
    )


def test_optimizers() -> None:
    p = [torch.nn.Parameter(torch.zeros(1))]
    assert type(build_optimizer(OptimConfig(), p)).__name__ == "RAdam"
    assert type(build_optimizer(OptimConfig(name="adam"), p)).__name__ == "Adam"
    sgd = build_optimizer(OptimConfig(name="sgd", momentum=0.5), p)
    assert sgd.param_groups[0]["momentum"] == 0.5
    frozen = [torch.nn.Parameter(torch.zeros(1), requires_grad=False)]
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(OptimConfig(), frozen)


@pytest.mark.parametrize(
    ("cuda", "amp", "cl", "expect"),
    [
        (False, "auto", "auto", ("cpu", False, False)),
        (True, "auto", "auto", ("cuda", True, True)),
        (True, "off", "auto", ("cuda", False, True)),
        (True, "auto", "off", ("cuda", True, False)),
        (False, "off", "off", ("cpu", False, False)),
    ],
)
def test_runtime_decisions(cuda: bool, amp: str, cl: str, expect: tuple) -> None:
    rt = resolve_runtime(TrainConfig(amp=amp, channels_last=cl), cuda_available=cuda)
    assert (rt.device.type, rt.amp, rt.channels_last) == expect


def test_runtime_errors() -> None:
    with pytest.raises(EngineConfigError, match="train.amp=on needs a CUDA device"):
        resolve_runtime(TrainConfig(amp="on"), cuda_available=False)
    with pytest.raises(EngineConfigError, match="train.channels_last=on"):
        resolve_runtime(TrainConfig(channels_last="on"), cuda_available=False)
    with pytest.raises(EngineConfigError, match="CUDA is not available"):
        resolve_runtime(TrainConfig(device="cuda:0"), cuda_available=False)
    with pytest.raises(EngineConfigError, match="train.device='gpu7'"):
        resolve_runtime(TrainConfig(device="gpu7"), cuda_available=False)
    # explicit cpu with amp auto stays off even when CUDA exists
    rt = resolve_runtime(TrainConfig(device="cpu"), cuda_available=True)
    assert (rt.device.type, rt.amp, rt.channels_last) == ("cpu", False, False)
