"""Dry-run cost: FLOPs per iteration from a calibration run equal an independent count, the
estimate's arithmetic, the cache, and the printout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from segssl.config import RunConfig, config_hash
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


def test_cost_signature_ignores_the_lr_schedule(tmp_path: Path) -> None:
    """The schedule sets learning rates only, not the arithmetic: cosine and constant trials
    share one calibration."""
    plan = plan_sweep(parse_sweep(_spec()), source="c.yaml", storage=tmp_path / "s", root=tmp_path)
    cfg = plan.trials["base"][0].config
    constant = cfg.model_copy(
        update={"optim": cfg.optim.model_copy(update={"schedule": "constant"})}
    )
    assert cost_signature(constant) == cost_signature(cfg)
    assert "schedule" not in cost_signature(cfg)["optim"]


def _old_calibration(cfg: RunConfig, tmp_path: Path) -> float:
    """The calibration as it was before the cache's version 2, written out here as the
    reference: ``train`` with 1 and with 3 iterations under the counter (validation, test and
    checkpoints included), half the difference, scaled from the calibration side by pixels."""
    from segssl.data import synthesize
    from segssl.engine import train
    from segssl.orchestrate.cost import _phantom_config, calibration_side, trained_pixels

    side = calibration_side(cfg)
    phantoms = synthesize(cfg.data.dataset, tmp_path / "old-phantoms", scans=6, size=max(32, side))
    flops = {}
    for iters in (1, 3):
        counter = FlopCounterMode(display=False)
        with counter:
            train(_phantom_config(cfg, phantoms, iters), None, workdir=tmp_path / f"old{iters}")
        flops[iters] = float(counter.get_total_flops())
    return (flops[3] - flops[1]) / 2 * trained_pixels(cfg) / side**2


@pytest.mark.parametrize(
    ("stage", "size"),
    [
        ({"config": {"stage": "finetune", "method": {"name": "baseline"}}}, 96),
        (
            {"config": {"stage": "semi", "method": {"name": "mean_teacher", "rampup_epochs": 1.0}}},
            32,
        ),
    ],
    ids=["baseline-96px", "mean_teacher-32px"],
)
def test_one_counted_step_equals_the_old_two_run_difference(
    stage: dict, size: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calibration counts one step after an uncounted one (no validation, test or
    ``last.pt``): two steps in all, where the old one trained 1 + 3 steps and validated and
    tested twice; the FLOPs per iteration are the old ones (a 96 px trial measured at 64 px
    and scaled; an EMA-teacher method, whose first step differs)."""
    from segssl.engine import loop

    raw = _spec()
    raw["base"]["data"]["preprocess"]["size"] = [size, size]
    raw["base"]["augment"]["crop"] = 0
    raw["stages"]["base"] = stage
    plan = plan_sweep(parse_sweep(raw), source="c.yaml", storage=tmp_path / "s", root=tmp_path)
    want = _old_calibration(plan.trials["base"][0].config, tmp_path)
    steps, evaluated = [], []
    step, evaluate = loop._Run._step, loop.evaluate
    monkeypatch.setattr(loop._Run, "_step", lambda self, *a: steps.append(a) or step(self, *a))
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: evaluated.append(1) or evaluate(*a, **k))
    (c,) = estimate_plan(plan, tmp_path / "cost.json")
    assert len(steps) == 2 and evaluated == []
    assert c.flops_per_iter == pytest.approx(want, rel=1e-9)


def test_configs_whose_steps_have_the_same_shapes_share_one_calibration(tmp_path: Path) -> None:
    """Slice sizes above the calibration side, datasets with the same class count, targets,
    seeds, learning rates and weights other than 0 change no tensor shape of the calibration
    step: one calibration for all of them (the old signature, of the trial's own config, needed
    one per size and dataset), each trial's FLOPs scaled to its pixels. A weight of 0 removes
    its term: that configuration is calibrated on its own and costs less."""
    raw = _spec()
    raw["base"]["augment"]["crop"] = 0
    raw["base"]["model"] = {"base_width": 4}
    raw["base"]["data"].update(unlabeled_batch_size=2)
    raw["stages"] = {
        "semi": {
            "config": {"stage": "semi", "method": {"name": "gmi"}},
            "zip": [
                {"data.dataset": ["acdc", "promise12"], "data.target": ["lv", "prostate"]},
            ],
            "grid": {
                "data.preprocess.size": [[96, 96], [128, 128]],
                "optim.lr": [1.0e-3, 1.0e-2],
                "method.w_cons": [0.0, 5.0, 10.0],
            },
        }
    }
    plan = plan_sweep(parse_sweep(raw), source="c.yaml", storage=tmp_path / "s", root=tmp_path)
    sigs = {str(cost_signature(t.config)) for t in plan.trials["semi"]}
    assert len(sigs) == 2  # w_cons = 0 and w_cons > 0
    calls: list[str] = []
    cache = tmp_path / "cost.json"
    (c,) = estimate_plan(plan, cache, log=calls.append)
    assert len(calls) == 2
    entries = json.loads(cache.read_text())["entries"]
    assert {e["measured_px"] for e in entries.values()} == {64}
    off, on = sorted(e["flops_measured"] for e in entries.values())
    assert off < on  # the consistency term's forward passes are gone
    n = len(plan.trials["semi"])  # 2 datasets x 2 sizes x 2 lr x 3 w_cons x 2 seeds
    iters = 21
    want = sum(
        (off if t.config.method.w_cons == 0 else on)
        * t.config.data.preprocess.size[0] ** 2
        / 64**2
        * iters
        for t in plan.trials["semi"]
    )
    assert (c.trials, c.iters) == (n, iters)
    assert c.gpu_hours == pytest.approx(want / 10e12 / 3600)
    assert c.flops_per_iter == pytest.approx(on * 128**2 / 64**2)


def test_the_cost_cache_is_versioned(tmp_path: Path) -> None:
    """A cache of the first format (a flat map of trial-config signatures to FLOPs already
    scaled) is not read as the second: the dry run calibrates and rewrites it with its format
    and version."""
    plan = plan_sweep(parse_sweep(_spec()), source="c.yaml", storage=tmp_path / "s", root=tmp_path)
    cache = tmp_path / "cost.json"
    key = config_hash(cost_signature(plan.trials["base"][0].config))
    cache.write_text(json.dumps({key: {"flops_per_iter": 1.0, "cpu_s_per_iter": 1.0}}))
    calls: list[str] = []
    (c,) = estimate_plan(plan, cache, log=calls.append)
    assert len(calls) == 1 and c.flops_per_iter > 1.0
    body = json.loads(cache.read_text())
    assert (body["format"], body["version"]) == ("segssl-cost-cache", 2)
    assert set(body["entries"]) == {key}


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


def test_a_non_square_slice_calibrates_at_a_side_the_model_accepts(tmp_path: Path) -> None:
    """[64, 48] px without a crop: the square root of its pixels, 55, is no multiple of the
    U-Net's 16, so the calibration config was refused and the dry run printed 'no cost
    estimate'; it now calibrates at 64 px and scales the FLOPs by 64 x 48 / 64^2."""
    from segssl.config import parse_run_config
    from segssl.orchestrate.cost import _phantom_config, calibration_side, step_flops

    cfg = parse_run_config(
        {
            "stage": "finetune",
            "method": {"name": "baseline"},
            "data": {"preprocess": {"size": [64, 48]}},
            "augment": {"crop": 0},
            "model": {"base_width": 4},
        }
    )
    side = calibration_side(cfg)
    assert side == 64
    assert tuple(_phantom_config(cfg, tmp_path, 1, side=side).data.preprocess.size) == (64, 64)
    entry = {"flops_measured": 4096.0, "measured_px": side}
    assert step_flops(cfg, entry) == pytest.approx(64 * 48)


@pytest.mark.parametrize(
    "train",
    [
        {"amp": "on"},
        {"amp": "on", "amp_dtype": "bfloat16"},
        {"amp": "on", "grad_scaler": "sync_free"},
        {"channels_last": "on"},
    ],
)
def test_cuda_only_settings_are_calibrated_on_the_cpu_as_the_default(
    train: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calibration runs on the planning machine's CPU, where the engine refuses ``amp: on``
    and ``channels_last: on``; neither changes a step's FLOPs, so a GPU trial with them is
    calibrated as the default (same signature, one calibration, same estimate), not left
    without an estimate."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    raw = {**_spec(), "resources": {"gpu": 1}}
    default = plan_sweep(parse_sweep(raw), storage=tmp_path / "s", root=tmp_path)
    raw["base"]["train"] = {**raw["base"]["train"], **train}
    plan = plan_sweep(parse_sweep(raw), storage=tmp_path / "s", root=tmp_path)
    assert {getattr(t.config.train, k) for t in plan.trials["base"] for k in train} == set(
        train.values()
    )
    assert cost_signature(plan.trials["base"][0].config) == cost_signature(
        default.trials["base"][0].config
    )
    (c,) = estimate_plan(plan, tmp_path / "cost.json")
    (d,) = estimate_plan(default, tmp_path / "cost.json")
    assert c.flops_per_iter == d.flops_per_iter > 0
