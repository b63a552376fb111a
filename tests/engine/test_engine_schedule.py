"""LR schedule (warm-up then cosine, per epoch), optimiser choice and runtime decisions."""

from __future__ import annotations

import math

import pytest
import torch

from segssl.config import OptimConfig, TrainConfig
from segssl.engine import EngineConfigError, build_optimizer, build_scheduler, lr_at
from segssl.engine.runtime import Runtime, resolve_runtime


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


def test_constant_schedule_per_step_and_after_warmup() -> None:
    """Chaitanya et al.: Adam at a constant lr; a warm-up, if any, still rises to the peak."""
    flat = OptimConfig(name="adam", lr=1e-3, warmup_factor=1, warmup_epochs=0, schedule="constant")
    assert _lrs(flat, 5) == pytest.approx([1e-3] * 5, rel=1e-12)
    warm = OptimConfig(lr=1e-4, warmup_factor=10, warmup_epochs=2, schedule="constant")
    lrs = _lrs(warm, 6)
    assert lrs == pytest.approx([1e-4, 5.5e-4, 1e-3, 1e-3, 1e-3, 1e-3], rel=1e-9)
    assert lrs == pytest.approx([lr_at(warm, e, 6) for e in range(6)], rel=1e-12)
    # the cosine default is unchanged by the new key
    assert _lrs(OptimConfig(lr=1e-4, warmup_factor=10, warmup_epochs=2), 6)[3] < 1e-3


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_schedule_resumes_from_its_state(schedule: str, tmp_path) -> None:
    """The scheduler state checkpoints with ``weights_only`` and continues where it stopped."""
    cfg = OptimConfig(lr=1e-4, warmup_factor=10, warmup_epochs=2, schedule=schedule)
    whole = _lrs(cfg, 8)
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))])
    sched = build_scheduler(cfg, opt, 8)
    for _ in range(3):
        opt.step()
        sched.step()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    opt2 = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))])
    sched2 = build_scheduler(cfg, opt2, 8)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    rest = []
    for _ in range(5):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert rest == pytest.approx(whole[3:], rel=1e-12)


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
        # amp: auto is fp32 on CUDA too: the fastest measured (bench/README.md, H200)
        (True, "auto", "auto", ("cuda", False, True)),
        (True, "on", "auto", ("cuda", True, True)),
        (True, "off", "auto", ("cuda", False, True)),
        (True, "auto", "off", ("cuda", False, False)),
        (False, "off", "off", ("cpu", False, False)),
    ],
)
def test_runtime_decisions(cuda: bool, amp: str, cl: str, expect: tuple) -> None:
    rt = resolve_runtime(TrainConfig(amp=amp, channels_last=cl), cuda_available=cuda)
    assert (rt.device.type, rt.amp, rt.channels_last) == expect


@pytest.mark.parametrize(
    ("dtype", "scaler", "expect"),
    [
        ("float16", "stock", (torch.float16, True, False)),
        ("float16", "sync_free", (torch.float16, True, True)),
        ("bfloat16", "stock", (torch.bfloat16, False, False)),
    ],
)
def test_runtime_amp_dtype_scaler_and_capturable(dtype, scaler, expect, monkeypatch) -> None:
    """On a (faked) Ampere-or-newer GPU with amp: on: autocast's dtype, whether losses go
    through an enabled scaler (float16 only) and whether Adam/RAdam are built capturable (only
    for the sync-free scaler, which needs their step counters on the device)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    cfg = TrainConfig(amp="on", amp_dtype=dtype, grad_scaler=scaler)
    rt = resolve_runtime(cfg, cuda_available=True)
    assert (rt.amp_dtype, rt.scaled, rt.capturable) == expect
    assert rt.grad_scaler == scaler
    # the same settings on a CPU runtime (forced, as the engine tests do) never capture
    cpu = Runtime(torch.device("cpu"), True, False, rt.amp_dtype, rt.grad_scaler)
    assert not cpu.capturable


def test_bf16_amp_is_refused_on_a_gpu_without_it(monkeypatch) -> None:
    """Before Ampere bfloat16 is emulated (``torch.cuda.is_bf16_supported()`` says yes by
    default): refused before any work, naming the key; float16 and fp32 are fine there."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    bf16 = TrainConfig(amp="on", amp_dtype="bfloat16")
    with pytest.raises(EngineConfigError, match=r"train.amp_dtype=bfloat16 .*capability 7\.5"):
        resolve_runtime(bf16, cuda_available=True)
    assert resolve_runtime(TrainConfig(amp="on"), cuda_available=True).amp_dtype == torch.float16
    assert not resolve_runtime(TrainConfig(), cuda_available=True).amp


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
