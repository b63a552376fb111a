"""Cost up front: per stage and in total, trials and an estimate of GPU-hours, for ``--dry-run``.

The estimate comes from FLOP counts, measured rather than modelled: a *calibration* sets up the
engine's run of the trial's model, method, batch sizes and crop on a few phantom scans in the
dataset's layout, takes one training step uncounted (one-off work of a first step) and counts
the second under ``torch.utils.flop_counter.FlopCounterMode``
(:func:`segssl.engine.profile_step`): drawing and augmenting the batches, forward, backward,
every loss of the method, the optimiser step, whatever the method computes. No validation,
test or epoch bookkeeping runs (they are not part of a training iteration). This equals the
earlier calibration (``train`` with 1 and with 3 iterations, half the difference) at a third of
its steps and none of its evaluations.

The result is cached per *cost signature* (:func:`cost_signature`: the calibration config less
what changes no tensor shape of a step: seed, labeled-scan count, split, paths, the dataset and
target but their class count, every float of ``optim`` and the lr schedule, a float of
``method`` or ``augment`` kept only as whether it is 0), so trials that differ only in such
values, in any stage of any sweep sharing the cache, are calibrated once, and a second dry run
costs nothing. The cache (``<root>/segssl-runs/cost-cache.json``) is versioned
(:data:`CACHE_VERSION`); a cache of another version is ignored and rewritten.

Slices larger than 64 x 64 px are calibrated at 64 x 64 (same model, method, batch sizes; or at
the smallest doubling the method accepts, :func:`calibration_side`) and the FLOPs scaled by the
ratio of pixels (:func:`step_flops`): convolutions and per-pixel losses grow linearly with the
pixel count (a pooled projector's few FLOPs do not, so the scaled figure is a slight
overestimate); a 224 px bim step would otherwise need minutes and gigabytes on a CPU.

GPU-hours = FLOPs per iteration x iterations per trial x trials / (sustained GPU throughput).
The throughput is an assumption (``--gpu-tflops``, 10 TFLOP/s by default: a fraction of a modern
GPU's peak, as small 2D U-Nets reach); validation and testing are not included. The printout
says both.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segssl.config import RunConfig, config_hash, keyed_dump

__all__ = [
    "StageCost",
    "calibrate",
    "cost_signature",
    "estimate_plan",
    "format_costs",
    "step_flops",
]

CACHE_FORMAT = "segssl-cost-cache"
# 2: keys are signatures of the calibration config (v1: of the trial's config), entries hold the
# FLOPs measured at the calibration side (v1: already scaled to the trial's pixels)
CACHE_VERSION = 2
_DROP = (
    "seed",
    "data.labeled_scans",
    "data.target",  # its effect, the class count, is kept as "classes"
    "data.dataset",  # idem (the phantoms' content changes no tensor shape)
    "data.modality",
    "data.root",
    "data.cache",
    "data.split",
    "data.num_workers",
    "metrics",
    "optim.schedule",  # learning rates only, like the floats of optim
)
# train settings the calibration fixes itself or that change nothing a step computes
_TRAIN_KEEP_OUT = (
    "epochs",
    "iters_per_epoch",
    "device",
    "init_from",
    "init_strict",
    "init_only",
    "init_exclude",
    "val_every",
    "eval_batch_size",
    "save_best",
    "pictures",
    "progress",
    "deterministic",
    "cpu_allocator",
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
    """What determines the FLOPs the calibration of ``cfg`` measures (module docstring).

    The calibration config (:func:`_phantom_config` at :func:`calibration_side`) less what
    changes no tensor shape of a training step: seed, labeled-scan count, paths, the split, the
    dataset and target (their class count is kept), every float of ``optim`` and the lr
    schedule, the loop's bookkeeping, AMP and the memory format. A float of ``method`` (a loss
    weight, a temperature) or of ``augment`` (a rotation range) is kept only as whether it is 0:
    a zero weight removes its term (and its head) in several methods, a zero range its
    transform. Built from
    :func:`~segssl.config.keyed_dump`, so a config field added later at its default leaves the
    signatures, and the cache, valid."""
    side = calibration_side(cfg)
    data = keyed_dump(_phantom_config(cfg, Path("phantoms"), 2, side=side))
    for key in _DROP:
        node = data
        *head, last = key.split(".")
        for part in head:
            node = node.get(part, {})
        node.pop(last, None)
    for extra in data["optim"].get("extra", {}).values():
        extra.pop("schedule", None)
    data["optim"] = {k: v for k, v in data["optim"].items() if not isinstance(v, float)}
    for section in ("method", "augment"):
        data[section] = {k: _zero_or_not(v) for k, v in data[section].items()}
    data["train"] = {k: v for k, v in data["train"].items() if k not in _TRAIN_KEEP_OUT}
    classes = _class_count(cfg)
    data["classes"] = classes if classes is not None else f"all of {cfg.data.dataset}"
    return data


def _zero_or_not(value: Any) -> Any:
    """A float as whether it is 0 (a zero weight or range switches its term off); else as is."""
    if isinstance(value, float):
        return "zero" if value == 0 else "nonzero"
    return value


def _class_count(cfg: RunConfig) -> int | None:
    """Foreground classes the trial segments: 1 for a binary target, else the dataset's
    (None where only its files say: an MSD task's ``dataset.json``)."""
    from segssl.data.adapters import check_dataset_name

    if cfg.data.target.lower() != "all":
        return 1
    names = getattr(check_dataset_name(cfg.data.dataset), "class_names", ())
    return len(names) or None


def _phantom_config(
    cfg: RunConfig,
    root: Path,
    iters: int,
    init_from: str | None = None,
    side: int | None = None,
) -> RunConfig:
    """The trial's config on a few phantom scans of ``side`` px (default
    :func:`calibration_side`), ``iters`` iterations; a derived trial starts from its parent's
    calibration checkpoint (``init_from``). On the CPU, in fp32: ``train.amp``,
    ``amp_dtype``, ``grad_scaler`` and ``channels_last`` at their defaults."""
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
    # AMP and channels_last are CUDA-only (the engine refuses 'on' on the CPU) and change no
    # FLOPs: calibrated at their defaults (fp32, the default memory format on the CPU)
    for key in ("amp_dtype", "grad_scaler"):
        raw["train"].pop(key, None)
    raw["train"].update(
        amp="auto",
        channels_last="auto",
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
    U-Net), the smallest doubling of it that the method accepts. The trial's side is the square
    root of its pixels, which for a non-square slice (``[64, 48]``, no crop: 55) the model may
    refuse; the doublings then go up to the slice's longer side (64)."""
    full = int(round(math.sqrt(trained_pixels(cfg))))
    largest = max(full, cfg.augment.crop or 0, *cfg.data.preprocess.size)
    side = min(CALIBRATION_PX, full)
    while True:
        try:
            _phantom_config(cfg, Path("phantoms"), 1, side=side)
            return side
        except ValueError:  # pydantic's ValidationError: the config refused at this side
            if side >= largest:
                return min(CALIBRATION_PX, full)  # refused everywhere: the run reports why
            side = min(2 * side, largest)


def calibrate(
    cfg: RunConfig, workdir: Path, init_from: str | None = None, phantoms: Path | None = None
) -> dict[str, float]:
    """FLOPs (and this machine's CPU seconds) of one training step of ``cfg`` at its
    calibration side (not yet scaled to the trial's pixels: :func:`step_flops`), counted on
    the second step of a run on phantom scans (the first is uncounted: one-off work). The
    carried weights go to ``workdir/ckpt.pt`` for the stages derived from it.

    Args:
        cfg: the trial's config.
        workdir: the calibration's run directory.
        init_from: the parent's calibration checkpoint (a derived stage).
        phantoms: where the phantoms of ``cfg``'s dataset at the calibration side are (or are
            written); default ``workdir/phantoms``.
    """
    from segssl.engine import profile_step

    side = calibration_side(cfg)
    phantoms = ensure_calibration_phantoms(
        cfg.data.dataset, side, phantoms if phantoms is not None else workdir / "phantoms"
    )
    run_cfg = _phantom_config(cfg, phantoms, 2, init_from, side=side)
    shutil.rmtree(workdir / "run", ignore_errors=True)
    got = profile_step(run_cfg, workdir=workdir / "run", warmup=1, checkpoint=workdir / "ckpt.pt")
    return {"flops_measured": got["flops"], "cpu_s_per_iter": got["cpu_s"], "measured_px": side}


def ensure_calibration_phantoms(dataset: str, side: int, where: Path) -> Path:
    """The calibration phantoms of ``dataset`` (:data:`_PHANTOM_SUBJECTS` subjects of
    ``max(32, side)`` px) in ``where``, written once (to a temporary folder, then renamed)."""
    from segssl.data import synthesize

    if (where / ".complete").is_file():
        return where
    tmp = where.with_name(f"{where.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    synthesize(dataset, tmp, scans=_PHANTOM_SUBJECTS, size=max(32, side))
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(where, ignore_errors=True)
    tmp.rename(where)
    return where


def step_flops(cfg: RunConfig, entry: dict[str, float]) -> float:
    """FLOPs of one training iteration of ``cfg`` from its calibration ``entry``: scaled from
    the calibration side to the trial's pixels (per-pixel arithmetic is linear in pixels)."""
    return entry["flops_measured"] * trained_pixels(cfg) / entry["measured_px"] ** 2


def _cache(path: Path) -> dict[str, Any]:
    """The entries of the cost cache at ``path``; empty when absent, unreadable or of another
    version (a version-1 cache, keyed by the trial's config, is left to be overwritten)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("format") != CACHE_FORMAT:
        return {}
    if raw.get("version") != CACHE_VERSION or not isinstance(raw.get("entries"), dict):
        return {}
    return raw["entries"]


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "entries": entries}
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True))
    tmp.replace(path)


def estimate_plan(
    plan: Any, cache_file: Path, gpu_tflops: float = 10.0, log: Any = None
) -> list[StageCost]:
    """Per stage of ``plan``: trials, iterations, FLOPs per iteration, GPU-hours.

    Calibrates every cost signature not in ``cache_file`` (and stores it there): once per
    signature, however many trials (of however many stages) share it.
    """
    if not gpu_tflops > 0:
        raise ValueError(f"--gpu-tflops must be positive, got {gpu_tflops}")
    cache = _cache(cache_file)
    runs = cache_file.parent / "calibration"
    by_key = plan.by_key()
    keys: dict[str, str] = {}  # config hash of a trial config -> its cost signature's hash

    def key_of(cfg: RunConfig) -> str:
        h = config_hash(cfg)
        if h not in keys:
            keys[h] = config_hash(cost_signature(cfg))
        return keys[h]

    def ensure(cfg: RunConfig, parent: Any, stage: str) -> str:
        key = key_of(cfg)
        ckpt = runs / key / "ckpt.pt"
        if key in cache and ckpt.is_file():
            return key
        init = None
        if parent is not None:
            pkey = ensure(parent.config, by_key.get(parent.parent_key), parent.stage)
            init = str(runs / pkey / "ckpt.pt")
        if log is not None:
            log(f"calibrating stage {stage!r} (cost signature {key}) ...")
        side = calibration_side(cfg)
        phantoms = runs / "phantoms" / f"{cfg.data.dataset}-{max(32, side)}"
        cache[key] = calibrate(cfg, runs / key, init, phantoms=phantoms)
        _write_cache(cache_file, cache)
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
            flops = step_flops(cfg, cache[ensure(cfg, parent, stage)])
            iters = cfg.train.epochs * cfg.train.iters_per_epoch
            per_iter = max(per_iter, flops)
            total_flops += flops * iters * count
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
