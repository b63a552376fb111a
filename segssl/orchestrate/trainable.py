"""The Ray Tune function trainable: runs one trial through ``engine.train`` inside a Ray worker.

The engine knows nothing about Ray or MLflow; this adapter turns its ``report(metrics, step)``
calls into one MLflow ``log_batch`` and one ``ray.tune.report`` each. The Tune checkpoint attached
to every report is a small pointer to the trial's workdir on the sweep storage
(``<storage>/trials/<key>``), where the engine keeps ``checkpoints/last.pt``; a retried attempt
(``FailureConfig``) or a rerun after the driver died calls ``engine.train(..., resume=True)`` on
the same workdir and continues from ``last.pt``.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segssl.config import RunConfig, flatten
from segssl.orchestrate import gpu_guard
from segssl.orchestrate.plan import (
    SearchStage,
    deep_merge,
    resolve_trial_config,
    run_name,
    trial_key,
)

__all__ = ["SweepContext", "TrialTask", "run_trial", "task_from_trial"]

TrainFn = Callable[..., dict]


@dataclass(frozen=True)
class TrialTask:
    """Everything a worker needs to run one trial (picklable)."""

    key: str
    stage: str
    name: str
    config: RunConfig
    workdir: str
    tags: dict[str, str]
    params: dict[str, Any]
    log_checkpoint: bool = False


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep invocation shares."""

    sweep: str
    tracking_uri: str
    experiment_id: str
    sweep_run_id: str | None
    storage: str
    git_sha: str
    search_metric: str | None = None
    search_mode: str = "max"
    extra_tags: dict[str, str] = field(default_factory=dict)


def task_from_trial(trial: Any, ctx: SweepContext, log_checkpoint: bool = False) -> TrialTask:
    """Build the worker task of a planned :class:`segssl.orchestrate.plan.Trial`."""
    tags = {
        "segssl.sweep": ctx.sweep,
        "segssl.stage": trial.stage,
        "segssl.trial_key": trial.key,
        "segssl.git_sha": ctx.git_sha,
        "segssl.seed": str(trial.seed),
        **ctx.extra_tags,
    }
    if trial.parent_key:
        tags["segssl.parent_key"] = trial.parent_key
    if trial.variant:
        tags["segssl.variant"] = trial.variant
    return TrialTask(
        key=trial.key,
        stage=trial.stage,
        name=trial.name,
        config=trial.config,
        workdir=str(Path(ctx.storage) / "trials" / trial.key),
        tags=tags,
        params=trial.params(),
        log_checkpoint=log_checkpoint,
    )


def _search_task(sampled: Mapping[str, Any], search: SearchStage, ctx: SweepContext) -> TrialTask:
    raw = deep_merge(search.base, {**dict(sampled), "seed": search.seed})
    desc = ", ".join(f"{k}={v}" for k, v in sampled.items())
    cfg = resolve_trial_config(raw, f"stages.{search.stage} search sample ({desc})")
    key = trial_key(cfg, None)
    tags = {
        "segssl.sweep": ctx.sweep,
        "segssl.stage": search.stage,
        "segssl.trial_key": key,
        "segssl.git_sha": ctx.git_sha,
        "segssl.seed": str(search.seed),
        **ctx.extra_tags,
    }
    return TrialTask(
        key=key,
        stage=search.stage,
        name=run_name(cfg, dict(sampled)),
        config=cfg,
        workdir=str(Path(ctx.storage) / "trials" / key),
        tags=tags,
        params=flatten(cfg),
    )


def _non_retryable() -> tuple[type[BaseException], ...]:
    """Errors a retry cannot fix: bad config or data, incompatible checkpoint, NaN loss (a
    seeded run diverges again at the same step)."""
    from segssl.config import ConfigError
    from segssl.data.errors import DataError
    from segssl.engine import CheckpointError, EngineConfigError, NonFiniteLossError

    return (ConfigError, DataError, CheckpointError, EngineConfigError, NonFiniteLossError)


def _release_cuda_cache() -> None:
    """Give the cached blocks of a trial that ran out of GPU memory back to its neighbours."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_trial(
    param_config: dict[str, Any],
    *,
    ctx: SweepContext,
    tasks: Mapping[str, TrialTask] | None = None,
    search: SearchStage | None = None,
    train_fn: TrainFn | None = None,
) -> None:
    """Function trainable: run one trial, logging to MLflow live and reporting to Ray Tune.

    Args:
        param_config: ``{"trial_key": key}`` for a grid stage, or the sampled dotted keys of a
            search stage.
        ctx: the sweep's shared context (tracking URI, experiment, parent run, storage).
        tasks: the grid stage's tasks by key.
        search: the search stage (when ``tasks`` is None).
        train_fn: ``engine.train`` (default) or a replacement with the same signature.
    """
    from mlflow import MlflowClient
    from ray import tune
    from ray.tune import Checkpoint

    from segssl.orchestrate.tracking import TrialRecorder, fingerprint_tags, finished_runs

    if train_fn is None:
        from segssl.engine import train as train_fn  # noqa: PLC0415
    if tasks is not None:
        task = tasks[param_config["trial_key"]]
    else:
        assert search is not None
        task = _search_task(param_config, search, ctx)
        done = finished_runs(ctx.tracking_uri, ctx.experiment_id).get(task.key)
        if done is not None:  # the same sample finished in an earlier invocation
            out = {**done.data.metrics, "segssl/skipped": 1.0}
            metric = ctx.search_metric
            if metric:  # the searcher learns the run's best epoch, as for a trained sample
                hist = [
                    m.value
                    for m in MlflowClient(ctx.tracking_uri).get_metric_history(
                        done.info.run_id, metric
                    )
                ]
                if hist:
                    out[metric] = max(hist) if ctx.search_mode == "max" else min(hist)
            tune.report(out)
            return
    workdir = Path(task.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    recorder = TrialRecorder(ctx.tracking_uri, ctx.experiment_id, ctx.sweep_run_id, workdir)
    recorder.start(task.name, task.tags, task.params)
    guard = gpu_guard.guard_from_ray()  # a fractional GPU share caps this process's memory
    recorder.set_tags(gpu_guard.placement_tags(guard))
    seen: dict[str, float] = {}
    best: float | None = None
    t0 = time.time()

    def report(metrics: dict[str, float], step: int) -> None:
        nonlocal best
        recorder.log_metrics(metrics, step)
        seen.update({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        out = dict(seen)
        metric = ctx.search_metric
        if metric and metric in metrics:
            v = float(metrics[metric])
            better = best is None or (v > best if ctx.search_mode == "max" else v < best)
            best = v if better else best
            out[metric] = best  # the searcher and ASHA see the best epoch so far
        out["segssl/step"] = float(step)
        with tempfile.TemporaryDirectory() as tmp:
            pointer = {"trial_key": task.key, "workdir": task.workdir, "step": step}
            (Path(tmp) / "pointer.json").write_text(json.dumps(pointer))
            tune.report(out, checkpoint=Checkpoint.from_directory(tmp))

    resumed = tune.get_checkpoint() is not None
    if resumed:
        recorder.set_tags({"segssl.resumed_from_tune_checkpoint": "true"})
    try:
        result = train_fn(task.config, report, workdir=workdir, resume=True)
    except BaseException as exc:
        if gpu_guard.is_oom(exc):  # the same trial asks for the same memory again: no retry
            exc = gpu_guard.oom_report(exc, task.key, guard)
            _release_cuda_cache()
        killed = isinstance(exc, KeyboardInterrupt | SystemExit) or "Stop" in type(exc).__name__
        reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        if isinstance(exc, SystemExit):  # how Ray Tune ends a function trial it stops
            reason = "stopped by Ray Tune (early stop)"
        if not killed and isinstance(exc, (*_non_retryable(), gpu_guard.GpuMemoryError)):
            # the same config fails the same way again: no retry; the run says why
            recorder.set_tags({"segssl.retryable": "false"})
            recorder.end("FAILED", reason)
            tune.report({**seen, "segssl/failed": 1.0})
            return
        recorder.end("KILLED" if killed else "FAILED", reason)
        raise
    result = dict(result or {})
    metrics = result.get("metrics")
    metrics = metrics if isinstance(metrics, Mapping) else result
    final = {k: v for k, v in metrics.items() if k not in seen}  # not yet reported by the engine
    final["cost/trial_wall_s"] = time.time() - t0
    recorder.log_metrics(final, int(result.get("best_epoch", 0) or 0))
    recorder.set_tags(fingerprint_tags(workdir, result))
    recorder.log_outputs(workdir, task.log_checkpoint, result.get("split_path"))
    recorder.end("FINISHED")
    out = {**seen, **{k: float(v) for k, v in final.items() if isinstance(v, int | float)}}
    if ctx.search_metric and best is not None:
        out[ctx.search_metric] = best
    tune.report({**out, "segssl/done": 1.0})
