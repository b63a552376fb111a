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


@pytest.mark.slow
def test_gpu_engine_check_cpu_mode_reports_every_field(tmp_path: Path) -> None:
    """The end-to-end check trains the real engine (``segssl train`` subprocesses) on a
    synthesised phantom; on CPU the auto variant trains and reports every field, and the AMP
    variants are refused by the engine before any work, reported as expected refusals."""
    check = _load("gpu_engine_check")
    out = tmp_path / "engine.json"
    report = check.main(["--cpu", "--json", str(out), "--variants", "auto", "bf16"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["failed"] == [] and report["device"] == "cpu"
    rows = {(r["method"], r["variant"]): r for r in report["runs"]}
    assert set(rows) == {(m, v) for m in ("baseline", "bim") for v in ("auto", "bf16")}
    for method in ("baseline", "bim"):
        r = rows[(method, "auto")]
        assert r["ok"] and r["problems"] == []
        assert (
            r["runtime"]
            == r["expected_runtime"]
            == {
                "device": "cpu",
                "amp": False,
                "amp_dtype": None,
                "grad_scaler": None,
                "channels_last": False,
            }
        )
        assert r["epochs"] == 3 and len(r["epoch_s"]) == 3
        assert r["wall_s"] > 0 and r["iters_per_s"] > 0 and r["peak_mem_mb"] > 0
        assert math.isfinite(r["final_train_loss"])
        refused = rows[(method, "bf16")]
        assert not refused["ok"] and refused["refused_as_expected"]
        assert "train.amp=on needs a CUDA device" in refused["error"]
        assert "runtime" not in refused
    assert 0.0 <= rows[("baseline", "auto")]["best_val_dsc"] <= 1.0
    assert rows[("bim", "auto")]["best_val_dsc"] is None  # pre-training has no validation


def test_gpu_engine_check_flags_failures_and_wrong_runtime(tmp_path: Path, monkeypatch) -> None:
    """A crashed run, a run whose resolved runtime is not the variant's and a non-finite loss
    are failures (the script exits 1); they do not stop the other runs."""
    check = _load("gpu_engine_check")
    s = check.sizes(cpu=False)
    want = check.expected_runtime("fp16-stock", cpu=False)
    assert want == {
        "device": "cuda",
        "amp": True,
        "amp_dtype": "float16",
        "grad_scaler": "stock",
        "channels_last": True,
    }
    assert check.expected_runtime("bf16", cpu=False)["grad_scaler"] is None

    def fake_cli(*args, timeout):
        workdir = Path(args[args.index("--workdir") + 1])
        if "bim-" in workdir.name:
            return check.subprocess.CompletedProcess(args, 1, "", "Traceback\nCUDA error: boom\n")
        workdir.mkdir(parents=True)
        # epoch 1 warms up, epoch 4 validates: only epochs 2-3 (2 s and 3 s) time the steps
        times = (10.0, 2.0, 3.0, 20.0)
        history = [
            {"epoch": e + 1, "train/loss": 0.5, "time/epoch_s": t} for e, t in enumerate(times)
        ]
        if "bf16" in workdir.name:
            history[-1]["train/loss"] = float("nan")
        result = {
            "history": history,
            "metrics": {"best_val/dsc": 0.7, "cost/peak_mem_mb": 900.0, "cost/wall_s": 9.0},
            "stage": "finetune",
            "runtime": {**want, "amp": False},  # not what fp16-stock configures
        }
        (workdir / "result.json").write_text(json.dumps(result))
        return check.subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(check, "_cli", fake_cli)
    data = cache = tmp_path
    rows = {
        (m, v): check.run_one(m, v, s, data, cache, tmp_path, False, 60.0)
        for m, v in (("baseline", "fp16-stock"), ("baseline", "bf16"), ("bim", "auto"))
    }
    wrong = rows[("baseline", "fp16-stock")]
    assert not wrong["ok"] and "runtime" in wrong["problems"][0]
    assert wrong["iters_per_s"] == pytest.approx(30 * 2 / 5.0)  # epochs 2-3: 60 iters in 5 s
    nan = rows[("baseline", "bf16")]
    assert any("not finite" in p for p in nan["problems"])
    crashed = rows[("bim", "auto")]
    assert not crashed["ok"] and not crashed["refused_as_expected"]
    assert "CUDA error: boom" in crashed["error"]
