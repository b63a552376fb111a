"""The bench scripts keep working: gpu_check.py's CPU smoke mode produces every field of the GPU
check; bench_methods.py records and replays the network passes of a method's step."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_check_cpu_mode_reports_every_field(tmp_path: Path) -> None:
    gpu_check = _load("gpu_check")
    out = tmp_path / "check.json"
    args = ["--cpu", "--json", str(out), "--start-delay", "4", "--pack-steps", "1"]
    result = gpu_check.main([*args, "--procs", "1", "2"])  # the GPU check runs 1, 2 and 4
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = {(r["step"], r["precision"], r["channels_last"]): r for r in result["variants"]}
    assert set(rows) == {
        (k, p, c)
        for k in ("bare", "baseline", "bim")
        for p in ("fp32", "bf16", "fp16", "fp16-stock")
        for c in (False, True)
    }
    for (kind, prec, cl), r in rows.items():
        assert r["ms_per_step"] > 0 and r["peak_mem_mb"] > 0
        fp32 = rows[(kind, "fp32", False)]["ms_per_step"]
        assert math.isclose(r["vs_fp32"], r["ms_per_step"] / fp32, rel_tol=1e-9)
        if kind == "bim":
            bare = rows[("bare", prec, cl)]["ms_per_step"]
            assert math.isclose(r["bim_over_bare"], r["ms_per_step"] / bare, rel_tol=1e-9)
        else:
            assert "bim_over_bare" not in r
    packing = result["packing"]
    assert [r["processes"] for r in packing] == [1, 2]
    assert packing[0]["vs_one_process"] == 1.0
    assert all(r["steps_per_s"] > 0 for r in packing)
    base = packing[0]["steps_per_s"]
    assert all(math.isclose(r["vs_one_process"], r["steps_per_s"] / base) for r in packing)
    assert result["device"] == "cpu"


def test_gpu_check_selected_precisions_keep_fp32_and_skip_packing(monkeypatch) -> None:
    """``--precisions`` measures fp32 (every ratio's reference) and the named ones, each with
    its own scaler: ``fp16`` SyncFreeGradScaler (grad_scaler: sync_free), ``fp16-stock`` PyTorch's;
    ``--procs`` with no count skips the packing measurement."""
    gpu_check = _load("gpu_check")
    from segssl.engine import amp

    built: list[str] = []
    for cls in (amp.SyncFreeGradScaler, gpu_check.torch.amp.GradScaler):
        monkeypatch.setattr(
            cls, "__init__", lambda self, *a, _c=cls, **k: built.append(_c.__name__) or None
        )
    monkeypatch.setattr(gpu_check, "_build_and_peak", lambda v, a, d: (lambda: None, 1.0))
    monkeypatch.setattr(gpu_check, "measure_packing", lambda a, d: pytest.fail("packing ran"))
    result = gpu_check.main(["--cpu", "--procs", "--precisions", "fp16-stock"])
    assert {(r["precision"], r["channels_last"]) for r in result["variants"]} == {
        (p, c) for p in ("fp32", "fp16-stock") for c in (False, True)
    }
    assert result["packing"] == []
    built.clear()
    args = gpu_check.argparse.Namespace(size=16, batch=2, width=4, k=4)
    for prec in ("fp16", "fp16-stock"):
        gpu_check.make_step("baseline", prec, False, args, gpu_check.torch.device("cpu"))
    assert built == ["SyncFreeGradScaler", "GradScaler"]


def test_gpu_check_without_cuda_asks_for_cpu_mode(monkeypatch) -> None:
    gpu_check = _load("gpu_check")
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device: run with --cpu"):
        gpu_check.main([])


def test_bench_methods_replays_every_network_pass(acdc_root: Path, monkeypatch) -> None:
    """bench_methods records the passes a step makes (a teacher's too) and times both sides."""
    import argparse

    monkeypatch.syspath_prepend(str(BENCH))
    bench = _load("bench_methods")
    args = argparse.Namespace(size=32, width=4, batch=3, repeats=1, warmup=0)
    bim = bench.bench_method("bim", args, acdc_root)
    assert bim["passes"] == 2  # s(x) and s(T(x))
    assert bim["bare_ms"] > 0 and bim["step_ms"] > 0
    assert math.isclose(bim["cpu_ratio"], bim["step_ms"] / bim["bare_ms"], rel_tol=1e-9)
    assert bench.bench_method("mean_teacher", args, acdc_root)["passes"] == 2  # + the teacher
    # a method with its own optimiser (the discriminator's step in after_step) runs as in the
    # engine; it raised "optimizer_step is only available inside the engine" before
    adv = bench.bench_method("adversarial", args, acdc_root)
    assert adv["passes"] >= 1 and adv["step_ms"] > 0


def test_bench_methods_records_feature_passes_with_their_decoder(monkeypatch) -> None:
    """``model.features(x, [decoder tap])`` is one recorded call replayed whole; it was recorded
    as the ``encode`` call inside it, so the replayed bare pass lacked the decoder blocks."""
    from segssl.models import UNet

    monkeypatch.syspath_prepend(str(BENCH))
    bench = _load("bench_methods")
    net = UNet(1, 3, base_width=4, depth=3)
    x = torch.rand(2, 1, 16, 16)
    with bench._Recorder([net]) as rec:
        net.features(x, ["decoder2"])
        net.encode(x)
    assert [c[1] for c in rec.calls] == ["features", "encode"]
    assert "features" not in vars(net) and "encode" not in vars(net)  # unwrapped again


def test_gpu_check_peak_memory_is_each_variants_own(monkeypatch) -> None:
    """On a GPU every variant stays resident for the interleaved timing: a variant's peak must
    be its own resident memory plus its step's transient peak, not the other variants' too."""
    import argparse

    import torch

    gpu_check = _load("gpu_check")
    mem = {"now": 0, "peak": 0}
    sizes: dict[tuple, tuple[int, int]] = {}  # variant -> (resident, transient) bytes

    def fake_make_step(kind, prec, cl, args, device):
        resident, transient = (len(sizes) + 1) * 2**20, (len(sizes) + 1) * 3 * 2**20
        sizes[(kind, prec, cl)] = resident, transient
        state = {"built": False}

        def step() -> None:
            if not state["built"]:  # weights, gradients, optimiser state stay after a step
                state["built"] = True
                mem["now"] += resident
            mem["peak"] = max(mem["peak"], mem["now"] + transient)

        return step

    def reset(device) -> None:
        mem["peak"] = mem["now"]

    monkeypatch.setattr(gpu_check, "make_step", fake_make_step)
    cuda = gpu_check.torch.cuda
    monkeypatch.setattr(cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(cuda, "memory_allocated", lambda device=None: mem["now"])
    monkeypatch.setattr(cuda, "max_memory_allocated", lambda device=None: mem["peak"])
    monkeypatch.setattr(cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(cuda, "is_bf16_supported", lambda: True)
    args = argparse.Namespace(warmup=1, rounds=1, steps=1, precisions=list(gpu_check.PRECISIONS))
    rows = gpu_check.measure_variants(args, torch.device("cuda"))
    assert len(rows) == 24
    for r in rows:
        resident, transient = sizes[(r["step"], r["precision"], r["channels_last"])]
        assert r["peak_mem_mb"] == (resident + transient) / 2**20
