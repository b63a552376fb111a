"""Cost up front: per stage and in total, trials and an estimate of GPU-hours, for ``--dry-run``.

The estimate comes from FLOP counts, measured rather than modelled: a short *calibration* runs
the engine's own ``train`` on a few phantom scans in the dataset's layout with the trial's model,
method, batch sizes and crop, once with 1 and once with 3 iterations, under
``torch.utils.flop_counter.FlopCounterMode``; the difference is the FLOPs of 2 training
iterations (forward, backward, every loss of the method), whatever the method computes. The
result is cached per *cost signature* (the resolved config less the seed, the labeled-scan count,
the target, paths, every float of ``method`` and ``optim`` and the lr schedule: loss weights and
learning rates do not change the arithmetic), so a stage whose trials differ only in such values
is calibrated once, and a second dry run costs nothing.

Slices larger than 64 x 64 px are calibrated at 64 x 64 (same model, method, batch sizes; or at
the smallest doubling the method accepts, :func:`calibration_side`) and the FLOPs scaled by the
ratio of pixels: convolutions and per-pixel losses grow linearly with the pixel count (a pooled
projector's few FLOPs do not, so the scaled figure is a slight overestimate); a 224 px bim step
would otherwise need minutes and gigabytes on a CPU.

GPU-hours = FLOPs per iteration x iterations per trial x trials / (sustained GPU throughput).
The throughput is an assumption (``--gpu-tflops``, 10 TFLOP/s by default: a fraction of a modern
GPU's peak, as small 2D U-Nets reach); validation and testing are not included. The printout
says both.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segssl.config import RunConfig, config_hash, keyed_dump

__all__ = ["StageCost", "calibrate", "cost_signature", "estimate_plan", "format_costs"]

_DROP = (
    "seed",
    "data.labeled_scans",
    "data.target",
    "data.root",
    "data.cache",
    "metrics",
    "optim.schedule",  # learning rates only, like the floats of optim
)
_PHANTOM_SUBJECTS = 6
CALIBRATION_PX = 64  # slices larger than this are measured at 64 x 64 and scaled by pixels


@dataclass
class StageCost:
    """The estimate of one stage."""

    stage: str
    trials: int
    iters: int  # training iterations per trial (the stage's largest)
    flops_per_iter: float
    gpu_hours: float


def cost_signature(cfg: RunConfig) -> dict[str, Any]:
    """What determines a training iteration's arithmetic (see the module docstring).

    Built from :func:`~segssl.config.keyed_dump`, so a config field added later at its default
    (``Section.key_neutral_defaults``) leaves the signatures, and the cost caches of earlier dry
    runs, valid."""
    data = keyed_dump(cfg)
    for key in _DROP:
        node = data
        *head, last = key.split(".")
        for part in head:
            node = node.get(part, {})
        node.pop(last, None)
    for extra in data["optim"].get("extra", {}).values():
        extra.pop("schedule", None)
    data["train"] = {k: v for k, v in data["train"].items() if k not in ("init_from",)}
    for section in ("method", "optim"):
        data[section] = {k: v for k, v in data[section].items() if not isinstance(v, float)}
    data["train"].pop("epochs", None)
    data["train"].pop("iters_per_epoch", None)
    return data


def _phantom_config(
    cfg: RunConfig,
    root: Path,
    iters: int,
    init_from: str | None = None,
    side: int | None = None,
) -> RunConfig:
    """The trial's config on a few phantom scans of ``side`` px (default
    :func:`calibration_side`), ``iters`` iterations; a derived trial starts from its parent's
    calibration checkpoint (``init_from``)."""
    raw = cfg.model_dump(mode="json")
    raw["data"].update(root=str(root), cache=None, num_workers=0)
    side = calibration_side(cfg) if side is None else side
    raw["data"]["preprocess"].update(size=[side, side], spacing=None, fit="resize")
    raw["augment"]["crop"] = side if cfg.augment.crop else 0
    raw["data"]["split"] = {"unit": "scan", "seed": 0, "sizes": None, "files": None}
    n_train = max(1, int(0.7 * _PHANTOM_SUBJECTS))
    if isinstance(raw["data"]["labeled_scans"], int):
        raw["data"]["labeled_scans"] = min(raw["data"]["labeled_scans"], n_train)
    _fit_schedules(raw["method"], cfg.train.epochs)
    raw["train"].update(
        epochs=1,
        iters_per_epoch=iters,
        init_from=init_from,
        progress=False,
        pictures=0,
        device="cpu",
        save_best=False,
    )
    return RunConfig.model_validate(raw)


def _fit_schedules(method: dict[str, Any], epochs: int) -> None:
    """Fit the method's epoch schedules (``*_epochs``: ramp-ups, teacher updates) into the
    1-epoch calibration: a float becomes the same fraction of one epoch as of the run, an int is
    capped at 1. Their values change no FLOPs of an iteration, only whether the run is valid."""
    for key, value in method.items():
        if not key.endswith("_epochs") or isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float):
            method[key] = value / max(1, epochs)
        elif isinstance(value, int):
            method[key] = min(value, 1)


def trained_pixels(cfg: RunConfig) -> int:
    """Pixels of one training slice: the crop, else the preprocessed size."""
    if cfg.augment.crop:
        return cfg.augment.crop**2
    h, w = cfg.data.preprocess.size
    return h * w


def calibration_side(cfg: RunConfig) -> int:
    """The slice side the calibration runs at: the trial's, at most :data:`CALIBRATION_PX`, or,
    where the method refuses so small an input (e.g. ``contrast_local``'s A regions of K x K
    must fit decoder block l's map: Chaitanya Table 6's l = 1, 3x3 needs 128 px on the depth-6
    U-Net), the smallest doubling of it (at most the trial's side) that the method accepts."""
    full = int(round(math.sqrt(trained_pixels(cfg))))
    side = min(CALIBRATION_PX, full)
    while side < full:
        try:
            _phantom_config(cfg, Path("phantoms"), 1, side=side)
            return side
        except ValueError:  # pydantic's ValidationError: the config refused at this side
            side = min(2 * side, full)
    return side


def calibrate(cfg: RunConfig, workdir: Path, init_from: str | None = None) -> dict[str, float]:
    """FLOPs (and this machine's CPU seconds) of one training iteration of ``cfg``; its last
    checkpoint stays in ``workdir/run3`` for the stages derived from it."""
    from torch.utils.flop_counter import FlopCounterMode

    from segssl.data import synthesize
    from segssl.engine import train

    phantoms = workdir / "phantoms"
    side = calibration_side(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    if not (phantoms / ".complete").is_file():
        synthesize(cfg.data.dataset, phantoms, scans=_PHANTOM_SUBJECTS, size=max(32, side))
        (phantoms / ".complete").write_text("ok\n")
    out: dict[int, tuple[float, float]] = {}
    for iters in (1, 3):
        run_cfg = _phantom_config(cfg, phantoms, iters, init_from)
        shutil.rmtree(workdir / f"run{iters}", ignore_errors=True)
        counter = FlopCounterMode(display=False)
        t = time.process_time()
        with counter:
            train(run_cfg, None, workdir=workdir / f"run{iters}", resume=False)
        out[iters] = (float(counter.get_total_flops()), time.process_time() - t)
    ratio = trained_pixels(cfg) / side**2  # per-pixel arithmetic: linear in pixels
    return {
        "flops_per_iter": max(0.0, (out[3][0] - out[1][0]) / 2) * ratio,
        "cpu_s_per_iter": max(0.0, (out[3][1] - out[1][1]) / 2),
        "measured_px": side,
    }


def _cache(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def estimate_plan(
    plan: Any, cache_file: Path, gpu_tflops: float = 10.0, log: Any = None
) -> list[StageCost]:
    """Per stage of ``plan``: trials, iterations, FLOPs per iteration, GPU-hours.

    Calibrates every cost signature not in ``cache_file`` (and stores it there).
    """
    if not gpu_tflops > 0:
        raise ValueError(f"--gpu-tflops must be positive, got {gpu_tflops}")
    cache = _cache(cache_file)
    runs = cache_file.parent / "calibration"
    by_key = plan.by_key()

    def ensure(cfg: RunConfig, parent: Any, stage: str) -> str:
        key = config_hash(cost_signature(cfg))
        ckpt = runs / key / "run3" / "checkpoints" / "last.pt"
        if key in cache and ckpt.is_file():
            return key
        init = None
        if parent is not None:
            pkey = ensure(parent.config, by_key.get(parent.parent_key), parent.stage)
            init = str(runs / pkey / "run3" / "checkpoints" / "last.pt")
        if log is not None:
            log(f"calibrating stage {stage!r} (cost signature {key}) ...")
        cache[key] = calibrate(cfg, runs / key, init)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cache, indent=1, sort_keys=True))
        return key

    out = []
    for stage in plan.order:
        if stage in plan.searches:
            from segssl.orchestrate.plan import search_probe

            probe = search_probe(plan.searches[stage], plan.source)
            trials = [(probe, None, plan.searches[stage].search.num_samples)]
        else:
            trials = [(t.config, by_key.get(t.parent_key), 1) for t in plan.trials[stage]]
        total_flops, n, iters_max, per_iter = 0.0, 0, 0, 0.0
        for cfg, parent, count in trials:
            key = ensure(cfg, parent, stage)
            iters = cfg.train.epochs * cfg.train.iters_per_epoch
            per_iter = max(per_iter, cache[key]["flops_per_iter"])
            total_flops += cache[key]["flops_per_iter"] * iters * count
            iters_max = max(iters_max, iters)
            n += count
        hours = total_flops / (gpu_tflops * 1e12) / 3600
        out.append(StageCost(stage, n, iters_max, per_iter, hours))
    return out


def format_costs(costs: list[StageCost], gpu_tflops: float) -> str:
    """The cost table of a dry run, with how it was estimated."""
    lines = [
        "estimated cost (training iterations only; FLOPs counted by torch.utils.flop_counter",
        f"on a cached calibration run at <= {CALIBRATION_PX} px, scaled by pixels; GPU-h at an "
        f"assumed {gpu_tflops:g} TFLOP/s sustained, --gpu-tflops):",
        f"  {'stage':<14}{'trials':>8}{'iters/trial':>13}{'GFLOP/iter':>12}{'GPU-h':>10}",
    ]
    for c in costs:
        lines.append(
            f"  {c.stage:<14}{c.trials:>8}{c.iters:>13}{c.flops_per_iter / 1e9:>12.1f}"
            f"{_h(c.gpu_hours):>10}"
        )
    total = sum(c.gpu_hours for c in costs)
    lines.append(f"  {'total':<14}{sum(c.trials for c in costs):>8}{'':>13}{'':>12}{_h(total):>10}")
    return "\n".join(lines)


def _h(hours: float) -> str:
    if math.isnan(hours):
        return "?"
    return f"{hours:.3g}" if hours < 100 else f"{hours:.0f}"
