"""Dry-run cost: FLOPs per iteration from a calibration run equal an independent count, the
estimate's arithmetic, the cache, and the printout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from segssl.models import UNet
from segssl.orchestrate.cost import cost_signature, estimate_plan, format_costs
from segssl.orchestrate.plan import plan_sweep
from segssl.orchestrate.spec import parse_sweep


def _spec() -> dict:
    return {
        "name": "c",
        "seeds": [0, 1],
        "base": {
            "data": {
                "preprocess": {"size": [32, 32], "spacing": None, "fit": "resize"},
                "batch_size": 2,
                "target": "lv",
            },
            "augment": {"crop": 32},
            "model": {"base_width": 4},
            "train": {"epochs": 3, "iters_per_epoch": 7, "progress": False},
        },
        "stages": {
            "base": {
                "config": {"stage": "finetune", "method": {"name": "baseline"}},
                "grid": {"data.labeled_scans": [1, 2], "optim.lr": [1.0e-3, 1.0e-2]},
            }
        },
    }


def _unet_step_flops(batch: int, size: int, width: int) -> float:
    """Forward and backward of the bare U-Net on one batch (the bulk of a baseline step)."""
    model = UNet(1, 2, base_width=width)
    x = torch.randn(batch, 1, size, size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    return float(counter.get_total_flops())


def test_calibrated_flops_match_the_networks_and_the_estimate_adds_up(tmp_path: Path) -> None:
    spec = parse_sweep(_spec())
    plan = plan_sweep(spec, source="c.yaml", storage=tmp_path / "s", root=tmp_path)
    sigs = {str(cost_signature(t.config)) for t in plan.trials["base"]}
    assert len(sigs) == 1  # labeled scans, seed and learning rate do not change the arithmetic
    calls: list[str] = []
    cache = tmp_path / "cost.json"
    (c,) = estimate_plan(plan, cache, gpu_tflops=2.0, log=calls.append)
    assert len(calls) == 1 and cache.is_file()
    want = _unet_step_flops(2, 32, 4)
    assert c.flops_per_iter == pytest.approx(want, rel=0.05)
    assert (c.trials, c.iters) == (8, 21)
    assert c.gpu_hours == pytest.approx(c.flops_per_iter * 21 * 8 / 2e12 / 3600)
    calls.clear()
    (again,) = estimate_plan(plan, cache, gpu_tflops=4.0, log=calls.append)
    assert calls == [] and again.gpu_hours == pytest.approx(c.gpu_hours / 2)  # cached
    text = format_costs([c], 2.0)
    assert "assumed 2 TFLOP/s sustained" in text and "total" in text.splitlines()[-1]
    with pytest.raises(ValueError, match="--gpu-tflops must be positive"):
        estimate_plan(plan, cache, gpu_tflops=0)


def test_dry_run_prints_the_cost_per_stage_and_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml
    from typer.testing import CliRunner

    from segssl.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_spec()))
    res = CliRunner().invoke(
        app, ["sweep", str(path), "--dry-run", "--skip-data-check", "--gpu-tflops", "5"]
    )
    assert res.exit_code == 0, res.output
    assert "assumed 5 TFLOP/s sustained" in res.output
    row = next(ln for ln in res.output.splitlines() if ln.strip().startswith("base "))
    assert row.split()[1:3] == ["8", "21"]  # trials, iterations per trial
    assert (tmp_path / "segssl-runs" / "cost-cache.json").is_file()
    bad = CliRunner().invoke(app, ["sweep", str(path), "--dry-run", "--gpu-tflops", "0"])
    assert bad.exit_code == 2 and "--gpu-tflops 0.0: expected a positive" in bad.output


def test_large_slices_are_measured_small_and_scaled_by_pixels(tmp_path: Path) -> None:
    raw = _spec()
    raw["base"]["data"]["preprocess"]["size"] = [160, 160]
    raw["base"]["augment"]["crop"] = 128
    plan = plan_sweep(parse_sweep(raw), source="c.yaml", storage=tmp_path / "s", root=tmp_path)
    (c,) = estimate_plan(plan, tmp_path / "cost.json", gpu_tflops=1.0)
    assert c.flops_per_iter == pytest.approx(_unet_step_flops(2, 128, 4), rel=0.05)


def test_a_multi_epoch_ramp_up_is_scaled_into_the_one_epoch_calibration(tmp_path: Path) -> None:
    """mean_teacher's 10-epoch ramp-up over a 20-epoch run: the 1-epoch calibration keeps the
    ramp's fraction of the run (else RampUp refuses the ramp and the dry run has no estimate)."""
    spec = _spec()
    spec["base"]["train"]["epochs"] = 20
    spec["stages"]["base"] = {
        "config": {"stage": "semi", "method": {"name": "mean_teacher", "rampup_epochs": 10.0}},
    }
    plan = plan_sweep(parse_sweep(spec), storage=tmp_path / "s", root=tmp_path)
    costs = estimate_plan(plan, tmp_path / "cache.json")
    assert costs[0].flops_per_iter > 0
    assert costs[0].iters == 20 * 7


def test_dry_run_plans_and_costs_without_the_data_or_a_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning needs neither the data nor the resources to run: on a CPU-only machine, with the
    data absent, a sweep asking for GPUs still prints its plan and cost; the problems a run here
    would hit come after them, and the exit status says a run would be refused."""
    import yaml
    from typer.testing import CliRunner

    from segssl.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = _spec()
    raw["resources"] = {"cpu": 1, "gpu": 0.25}
    raw["base"]["data"]["root"] = "data/nowhere"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["sweep", str(path), "--dry-run", "--gpu-tflops", "5"])
    out = res.output
    row = next(ln for ln in out.splitlines() if ln.strip().startswith("base "))
    assert row.split()[1:3] == ["8", "21"]  # the cost per stage was printed
    assert "total" in out
    assert res.exit_code == 2
    refusal = out.index("a run here would be refused")
    assert out.index("total") < refusal
    assert "no such directory" in out[refusal:] and "gpu=0.25" in out[refusal:]
    assert "GPU 0" in out[refusal:]


def test_cost_signature_ignores_the_lr_schedule_and_keeps_earlier_cache_keys(tmp_path: Path):
    """The schedule sets learning rates only, not the arithmetic: cosine and constant trials
    share one calibration, and a signature written before ``optim.schedule`` existed (every
    cost cache of an earlier dry run) still matches."""
    from segssl.config import config_hash

    plan = plan_sweep(parse_sweep(_spec()), source="c.yaml", storage=tmp_path / "s", root=tmp_path)
    cfg = plan.trials["base"][0].config
    constant = cfg.model_copy(
        update={"optim": cfg.optim.model_copy(update={"schedule": "constant"})}
    )
    assert cost_signature(constant) == cost_signature(cfg)
    sig = cost_signature(cfg)
    assert "schedule" not in sig["optim"]
    # as the signature was before the field (the dump without it, less the same keys)
    before = cfg.model_dump(mode="json")
    before["optim"].pop("schedule")
    old = {k: v for k, v in before["optim"].items() if not isinstance(v, float)}
    assert config_hash(sig["optim"]) == config_hash(old)


def test_calibration_runs_at_a_side_the_method_accepts(tmp_path: Path) -> None:
    """Chaitanya Table 6's l = 1 with 3x3 regions: decoder block 1 of the depth-6 U-Net is 4x4
    at the usual 64 px, too small for A = 13 regions, so the calibration config was refused and
    the whole dry run lost its cost estimate; it now calibrates at 128 px (8x8), and the FLOPs
    are scaled from there."""
    from segssl.config import parse_run_config
    from segssl.orchestrate.cost import _phantom_config, calibration_side

    def local(blocks: int) -> object:
        return parse_run_config(
            {
                "stage": "pretrain",
                "method": {"name": "contrast_local", "blocks": blocks, "region_size": 3},
                "data": {"preprocess": {"size": [192, 192]}},
                "augment": {"crop": 0},
                "model": {"base_width": 4, "depth": 6},
            }
        )

    assert calibration_side(local(3)) == 64  # decoder block 3: 16x16 at 64 px
    wide = local(1)
    assert calibration_side(wide) == 128
    run = _phantom_config(wide, tmp_path, 1)
    assert tuple(run.data.preprocess.size) == (128, 128)
