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
from segssl.record import (
    TAG_GIT_SHA,
    TAG_KEY,
    TAG_PARENT_KEY,
    TAG_RESUMED,
    TAG_RETRYABLE,
    TAG_SEED,
    TAG_STAGE,
    TAG_SWEEP,
    TAG_VARIANT,
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
        TAG_SWEEP: ctx.sweep,
        TAG_STAGE: trial.stage,
        TAG_KEY: trial.key,
        TAG_GIT_SHA: ctx.git_sha,
        TAG_SEED: str(trial.seed),
        **ctx.extra_tags,
    }
    if trial.parent_key:
        tags[TAG_PARENT_KEY] = trial.parent_key
    if trial.variant:
        tags[TAG_VARIANT] = trial.variant
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
        TAG_SWEEP: ctx.sweep,
        TAG_STAGE: search.stage,
        TAG_KEY: key,
        TAG_GIT_SHA: ctx.git_sha,
        TAG_SEED: str(search.seed),
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


def _report_finished_sample(task: TrialTask, ctx: SweepContext) -> bool:
    """A search sample that FINISHED in an earlier invocation: report its result to the searcher
    (its best epoch, as for a trained sample) instead of training it again; True if it did."""
    from mlflow import MlflowClient
    from ray import tune

    from segssl.orchestrate.tracking import finished_runs

    done = finished_runs(ctx.tracking_uri, ctx.experiment_id).get(task.key)
    if done is None:
        return False
    out = {**done.data.metrics, "segssl/skipped": 1.0}
    metric = ctx.search_metric
    if metric:
        client = MlflowClient(ctx.tracking_uri)
        hist = [m.value for m in client.get_metric_history(done.info.run_id, metric)]
        if hist:
            out[metric] = max(hist) if ctx.search_mode == "max" else min(hist)
    tune.report(out)
    return True


class _TuneReporter:
    """The engine's ``report(metrics, step)``: one MLflow batch and one ``tune.report`` each, with
    a pointer checkpoint to the trial's workdir; tracks the best value of the search metric.

    ``replay`` (the epochs of a resumed checkpoint) logs to MLflow only the steps the trial's run
    lacks (an epoch whose report a killed attempt never sent) and reports nothing to Tune: its
    values count towards the best value the next report carries.
    """

    def __init__(self, task: TrialTask, ctx: SweepContext, recorder: Any) -> None:
        self.task, self.ctx, self.recorder = task, ctx, recorder
        self.seen: dict[str, float] = {}
        self.best: float | None = None

    def _track(self, metrics: Mapping[str, Any]) -> None:
        """Remember the latest values and the best value of the search metric."""
        self.seen.update({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        metric = self.ctx.search_metric
        if metric and metric in metrics:
            v = float(metrics[metric])
            better = self.best is None or (
                v > self.best if self.ctx.search_mode == "max" else v < self.best
            )
            self.best = v if better else self.best

    def replay(self, metrics: dict[str, float], step: int) -> None:
        self.recorder.log_metrics(metrics, step)
        self._track(metrics)

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        from ray import tune
        from ray.tune import Checkpoint

        self.recorder.log_metrics(metrics, step)
        self._track(metrics)
        out = dict(self.seen)
        metric = self.ctx.search_metric
        if metric and metric in metrics:
            out[metric] = self.best  # the searcher and ASHA see the best epoch so far
        out["segssl/step"] = float(step)
        with tempfile.TemporaryDirectory() as tmp:
            pointer = {"trial_key": self.task.key, "workdir": self.task.workdir, "step": step}
            (Path(tmp) / "pointer.json").write_text(json.dumps(pointer))
            tune.report(out, checkpoint=Checkpoint.from_directory(tmp))


def _end_failed(exc: BaseException, recorder: Any, seen: Mapping[str, float]) -> bool:
    """Record how an attempt ended with ``exc``; True when the failure is final (not retried).

    A non-retryable error (bad config or data, incompatible checkpoint, a full disk, NaN loss,
    out of GPU memory) ends the run FAILED with ``segssl.retryable=false`` and is reported to
    Tune as a result, so Tune does not retry it; anything else ends the attempt (KILLED when
    stopped) and is re-raised.
    """
    from ray import tune

    killed = isinstance(exc, KeyboardInterrupt | SystemExit) or "Stop" in type(exc).__name__
    reason: str | None = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if isinstance(exc, SystemExit):  # how Ray Tune ends a function trial it stops
        # why it was stopped (an early stop, the sweep's Ctrl-C) only the driver knows: it writes
        # the reason when it closes the stage (tracking.close_stage_runs), whichever ends first
        reason = None
    if not killed and isinstance(exc, (*_non_retryable(), gpu_guard.GpuMemoryError)):
        recorder.set_tags({TAG_RETRYABLE: "false"})
        recorder.end("FAILED", reason)
        # the reason reaches the console's per-trial line (Ray's own output goes to a log file)
        tune.report({**seen, "segssl/failed": 1.0, "segssl/reason": reason.splitlines()[-1][:300]})
        return True
    recorder.end("KILLED" if killed else "FAILED", reason, keep_reason=killed)
    return False


def _end_finished(
    task: TrialTask,
    result: Mapping[str, Any] | None,
    reporter: _TuneReporter,
    t0: float,
) -> None:
    """Log what the engine did not report, the fingerprints and the files; end FINISHED and
    give Tune the final result."""
    from ray import tune

    from segssl.orchestrate.tracking import fingerprint_tags

    recorder, seen, workdir = reporter.recorder, reporter.seen, Path(task.workdir)
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
    if reporter.ctx.search_metric and reporter.best is not None:
        out[reporter.ctx.search_metric] = reporter.best
    tune.report({**out, "segssl/done": 1.0})


def _in_ray_worker() -> bool:
    """This process is a Ray worker (a trial's), not a driver or a test calling :func:`run_trial`
    itself: only a trial process may exit on a swallowed ``SystemExit``
    (:mod:`segssl.orchestrate.shutdown`)."""
    import ray

    try:
        return bool(ray._private.worker.global_worker.mode == ray.WORKER_MODE)
    except AttributeError:  # a Ray without these internals: do not install the hook
        return False


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
    from ray import tune

    from segssl.orchestrate.shutdown import finish_lost_exits
    from segssl.orchestrate.tracking import TrialRecorder, redact, redact_logging

    if _in_ray_worker():  # a trial process: Ray's SIGTERM must not print a swallowed SystemExit
        finish_lost_exits()
    if redact(ctx.tracking_uri) != ctx.tracking_uri:
        redact_logging()
    if train_fn is None:
        from segssl.engine import train as train_fn  # noqa: PLC0415
    if tasks is not None:
        task = tasks[param_config["trial_key"]]
    else:
        assert search is not None
        task = _search_task(param_config, search, ctx)
        if _report_finished_sample(task, ctx):
            return
    workdir = Path(task.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    recorder = TrialRecorder(ctx.tracking_uri, ctx.experiment_id, ctx.sweep_run_id, workdir)
    recorder.start(task.name, task.tags, task.params)
    guard = gpu_guard.guard_from_ray()  # a fractional GPU share caps this process's memory
    recorder.set_tags(gpu_guard.placement_tags(guard))
    reporter = _TuneReporter(task, ctx, recorder)
    t0 = time.time()
    if tune.get_checkpoint() is not None:
        recorder.set_tags({TAG_RESUMED: "true"})
    try:
        result = train_fn(task.config, reporter, workdir=workdir, resume=True)
    except BaseException as exc:
        if gpu_guard.is_oom(exc):  # the same trial asks for the same memory again: no retry
            exc = gpu_guard.oom_report(exc, task.key, guard)
            _release_cuda_cache()
        if _end_failed(exc, recorder, reporter.seen):
            return
        raise
    _end_finished(task, result, reporter, t0)
