"""Runner: planned trials -> one Ray Tune ``Tuner`` per wave of stages, in dependency order.

Order of work for ``segssl sweep`` (each step refuses bad input before the next spends anything):

1. count the trials from the axis lengths (refused above ``max_trials``); plan them and validate
   every trial config; check the sweep's tables against the planned trials;
2. resolve and check the tracking server; read (never create) the experiment: a name used by
   another spec is refused, and with a local Ray instance some node must hold one trial of
   every stage left to run (the dry run's check);
3. refuse a sweep another live driver holds (read-only: the claim itself comes in 4);
   ``prepare`` (the CLI writes a smoke profile's phantoms), check the plan's data
   (:mod:`segssl.orchestrate.datacheck`); ``on_start`` (the CLI opens its log file): nothing is
   written to the storage before this point, so a refused sweep leaves none behind;
4. claim the sweep storage (``driver.lock``, :mod:`segssl.orchestrate.claim`): one driver per
   sweep, refused drivers are told who owns it; write ``<storage>/plan.json``;
5. get or create the experiment, mark runs of dead drivers KILLED, skip FINISHED trial keys;
6. start or join Ray, check that some node can hold one trial of every stage;
7. per wave (:func:`stage_waves`: the grid stages of one depth of the ``from`` tree share one
   Tuner, so independent stages fill each other's idle cores instead of waiting at a barrier
   after every stage; a search stage is a wave of its own), a Tuner over the remaining trial
   keys (grid) or an Optuna search; a trial whose parent did not finish is not launched (it is
   reported as blocked). SIGINT/SIGTERM stop launching and stop the running trials
   (:mod:`segssl.orchestrate.interrupt`); when the signal took Ray down too (sent to the
   driver's whole process group), the sweep ends without Ray (:func:`_end_without_ray`).

Idempotence lives in MLflow (FINISHED runs by trial key) and in the trial workdirs on the sweep
storage (``<storage>/trials/<key>``, where the engine resumes from ``checkpoints/last.pt``); each
invocation therefore starts fresh Tuners and never needs ``Tuner.restore``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from segssl.config import flatten
from segssl.orchestrate import mlflow_ui, tracking
from segssl.orchestrate.claim import ClaimKeeper, SweepClaim, check_unclaimed, claim_sweep
from segssl.orchestrate.datacheck import DataCheckError, check_plan_data
from segssl.orchestrate.interrupt import (
    Interrupt,
    SweepInterrupted,
    catch_signals,
    make_stopper,
    raise_on_signals,
    tcp_reachable,
    watch_cluster,
)
from segssl.orchestrate.plan import (
    PLAN_FILE,
    Plan,
    SearchStage,
    check_trial_count,
    count_trials,
    plan_sweep,
    read_plan,
    search_probe,
    write_plan,
)
from segssl.orchestrate.progress import SweepProgress, make_tune_callback
from segssl.orchestrate.spec import Resources, SpecError, SweepSpec, load_sweep, spec_hash
from segssl.orchestrate.tracking import redact
from segssl.orchestrate.trainable import SweepContext, run_trial, task_from_trial

__all__ = [
    "ResourceError",
    "StageOutcome",
    "SweepOutcome",
    "check_resources",
    "print_plan",
    "run_sweep",
    "stage_waves",
    "wave_name",
]


class ResourceError(SpecError):
    """No node of the Ray cluster can hold one trial of a stage."""


@dataclass
class StageOutcome:
    """What happened to one stage in one invocation."""

    planned: int
    skipped: int
    launched: int = 0
    finished: int = 0
    failed: int = 0
    blocked: int = 0  # parent trial did not finish
    stopped: int = 0  # stopped early by the scheduler (ASHA): run KILLED, not FINISHED


@dataclass
class SweepOutcome:
    """Summary of one ``run_sweep`` invocation."""

    name: str
    tracking_uri: str
    experiment_id: str | None
    storage: Path
    stages: dict[str, StageOutcome] = field(default_factory=dict)
    sweep_run_id: str | None = None
    stale_marked: int = 0
    dry_run: bool = False
    interrupted: SweepInterrupted | None = None  # stopped by SIGINT/SIGTERM
    tracking_error: str | None = None  # the end of the sweep run could not be recorded
    # dry run: what would stop a run here (missing data, no node big enough); the plan and its
    # cost stand regardless (planning does not need the resources to run)
    not_runnable: list[str] = field(default_factory=list)
    # FAILED trial runs of this invocation by reason: {reason: {"retryable", "runs"}}
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def launched(self) -> int:
        return sum(s.launched for s in self.stages.values())

    @property
    def failed(self) -> int:
        return sum(s.failed + s.blocked for s in self.stages.values())


def check_resources(plan: Plan, stages: list[str], nodes: list[dict[str, Any]]) -> None:
    """Raise :class:`ResourceError` when no alive node can hold one trial of a stage.

    Args:
        plan: the plan (for the per-stage resources and the file name).
        stages: the stages that will launch trials.
        nodes: ``ray.nodes()``.
    """
    alive = [n for n in nodes if n.get("Alive", n.get("alive", True))]
    caps = [
        (float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0))) for n in alive
    ]
    for stage in stages:
        res: Resources = plan.spec.stage_resources(stage)
        if not any(cpu >= res.cpu and gpu >= res.gpu for cpu, gpu in caps):
            have = ", ".join(f"(CPU {c:g}, GPU {g:g})" for c, g in caps) or "none"
            raise ResourceError(
                f"{plan.source}: stages.{stage} asks for cpu={res.cpu:g}, gpu={res.gpu:g} per "
                f"trial but no node of the Ray cluster has that much; nodes: {have}. Lower "
                f"'resources' (per stage or sweep-wide) or add a node."
            )


def check_plan_tables(plan: Plan) -> None:
    """Check the sweep's ``tables:`` against the planned trials before anything runs: every
    key they group or filter by is a param of the trials, and the paper's table has every row
    and column (the report's own preflight).

    Raises:
        SpecError: naming the sweep file and the table.
    """
    if not plan.spec.tables:
        return
    from segssl.report import ReportError, check_tables

    src = Path(plan.source)
    base_dirs = [src.resolve().parent] if src.is_file() else []
    trials = [(t.stage, t.params()) for t in plan.all_trials()]
    for name, stage in plan.searches.items():  # its trials exist once it runs: use the probe
        trials.append((name, flatten(search_probe(stage, plan.source))))
    try:
        check_tables(plan.spec.tables, trials, name=plan.spec.name, base_dirs=base_dirs)
    except ReportError as exc:
        raise SpecError(f"{plan.source}: tables: {exc}") from None


def print_plan(
    plan: Plan, finished: dict[str, Any], console: Console, tracking_uri: str
) -> dict[str, tuple[int, int]]:
    """Print the plan table; return ``{stage: (planned, to_run)}``."""
    t = Table(title=f"sweep {plan.spec.name}: plan")
    for col in ("stage", "from", "trials", "finished (skip)", "to run", "cpu/trial", "gpu/trial"):
        t.add_column(col, justify="left" if col in ("stage", "from") else "right")
    out: dict[str, tuple[int, int]] = {}
    for stage in plan.order:
        st = plan.spec.stages[stage]
        res = plan.spec.stage_resources(stage)
        if stage in plan.searches:
            n = plan.searches[stage].search.num_samples
            t.add_row(stage, "-", f"{n} (optuna)", "?", str(n), f"{res.cpu:g}", f"{res.gpu:g}")
            out[stage] = (n, n)
            continue
        trials = plan.trials[stage]
        done = sum(1 for tr in trials if tr.key in finished)
        out[stage] = (len(trials), len(trials) - done)
        t.add_row(
            stage,
            st.from_ or "-",
            str(len(trials)),
            str(done),
            str(len(trials) - done),
            f"{res.cpu:g}",
            f"{res.gpu:g}",
        )
    console.print(t)
    console.print(f"storage: {plan.storage}\ntracking: {redact(tracking_uri)}", highlight=False)
    return out


def _ray_init(
    spec: SweepSpec, address: str | None, num_cpus: int | None, init_kwargs: dict[str, Any] | None
) -> bool:
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "ignore_reinit_error": True}
    if address:
        kwargs["address"] = address
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        kwargs["num_cpus"] = num_cpus or spec.num_cpus or os.cpu_count() or 1
    kwargs.update(init_kwargs or {})
    ray.init(**kwargs)
    return True


def local_nodes(spec: SweepSpec, num_cpus: int | None) -> list[dict[str, Any]]:
    """The one node a local Ray instance would have (``ray.nodes()`` layout), without Ray.

    GPUs are counted as Ray counts them: the devices present, at most as many as
    ``CUDA_VISIBLE_DEVICES`` lists.
    """
    import torch

    cpus = float(num_cpus or spec.num_cpus or os.cpu_count() or 1)
    gpus = float(torch.cuda.device_count()) if torch.cuda.is_available() else 0.0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = min(gpus, float(len([d for d in visible.split(",") if d.strip()])))
    return [{"Alive": True, "Resources": {"CPU": cpus, "GPU": gpus}}]


def _cluster_nodes(
    spec: SweepSpec, address: str | None, num_cpus: int | None, init_kwargs: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Nodes of the cluster a run would use, for ``--dry-run``: the cluster's when ``address``
    names one or Ray already runs in this process, else the local machine's resources (what a
    local Ray instance would get), without starting Ray."""
    if address is None and not _ray_running():
        nodes = local_nodes(spec, num_cpus)
        if init_kwargs and init_kwargs.get("num_cpus") is not None:
            nodes[0]["Resources"]["CPU"] = float(init_kwargs["num_cpus"])
        if init_kwargs and init_kwargs.get("num_gpus") is not None:
            nodes[0]["Resources"]["GPU"] = float(init_kwargs["num_gpus"])
        return nodes
    import ray

    started = _ray_init(spec, address, num_cpus, init_kwargs)
    try:
        return list(ray.nodes())
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------- waves of stages
def _trial_steps(plan: Plan, stage: str) -> int:
    """Training iterations of a grid stage's longest trial (0 for none)."""
    return max(
        (t.config.train.epochs * t.config.train.iters_per_epoch for t in plan.trials[stage]),
        default=0,
    )


def stage_waves(plan: Plan) -> list[list[str]]:
    """The stages grouped into waves, each wave one Tune run, in launch order.

    A grid stage's wave is its depth in the ``from`` tree (root stages 0, their children 1, ...),
    split where the per-trial resources differ; a search stage is a wave of its own after the
    grid stages of its depth. All trials of a wave share the cluster: a root stage's short trials
    fill the cores a long stage leaves free instead of waiting behind a per-stage barrier, and a
    child stage still starts only once its parents' stage ended (its blocked trials are decided
    then). Within a wave, the stages that have children come first (their trials gate the next
    wave), then the stages with the longest trials (training iterations), so the short ones fill
    the gaps at the end; ties keep the sweep's order.
    """
    spec = plan.spec
    depth: dict[str, int] = {}
    for stage in plan.order:  # parents first
        parent = spec.stages[stage].from_
        depth[stage] = 0 if parent is None else depth[parent] + 1
    parents = {spec.stages[s].from_ for s in plan.order}
    waves: list[list[str]] = []
    for level in sorted(set(depth.values())):
        at = [s for s in plan.order if depth[s] == level]
        grid = [s for s in at if s not in plan.searches]
        groups: dict[tuple[float, float], list[str]] = {}
        for s in grid:
            res = spec.stage_resources(s)
            groups.setdefault((res.cpu, res.gpu), []).append(s)
        for stages in groups.values():
            rank = {s: i for i, s in enumerate(stages)}
            waves.append(
                sorted(stages, key=lambda s: (s not in parents, -_trial_steps(plan, s), rank[s]))
            )
        waves.extend([s] for s in at if s in plan.searches)
    return waves


# Tune's experiment folder: one path component (255 bytes at most) with '-<date>-<time>'
_WAVE_NAME_MAX = 200


def wave_name(stages: list[str]) -> str:
    """The name of a wave's Tune run (its folder under ``<storage>/ray``): its stages joined
    with ``+``; a wave of many stages (a wide sweep's root stages) is named by its first stage,
    how many others it holds and a hash of all their names, so the folder name stays short."""
    name = "+".join(stages)
    if len(name) <= _WAVE_NAME_MAX:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{stages[0][: _WAVE_NAME_MAX - 30]}+{len(stages) - 1}-more-{digest}"


# --------------------------------------------------------------------------- one wave in Tune
@dataclass
class _StageRun:
    """What every stage of one invocation shares while Tune runs it."""

    plan: Plan
    ctx: SweepContext
    train_fn: Callable[..., dict] | None
    progress: SweepProgress
    tick: Callable[[], None]
    run_tag: str
    outcome: SweepOutcome
    stopper: Any = None
    wave: dict[str, list[str] | None] = field(default_factory=dict)  # what Tune runs now


def _run_config(name: str, run: _StageRun, stage: str | dict[str, str]) -> Any:
    """Tune's run config of one wave: ``stage`` is the stage of every trial, or a map trial key
    -> stage when the wave holds several stages."""
    from ray import tune

    spec = run.plan.spec
    return tune.RunConfig(
        name=f"{name}-{run.run_tag}",
        storage_path=str(run.plan.storage / "ray"),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=[make_tune_callback(run.progress, stage, run.tick)],
        stop=run.stopper,
        verbose=0,
    )


def _grid_tuner(keys: dict[str, list[str]], run: _StageRun) -> Any:
    """One Tuner over the given trial keys of one wave's grid stages (``{stage: keys}``, in
    launch order; the stages of a wave ask for the same resources per trial)."""
    from ray import tune

    spec = run.plan.spec
    stages = list(keys)
    res = spec.stage_resources(stages[0])
    by_key = run.plan.by_key()
    tasks = {
        k: task_from_trial(by_key[k], run.ctx, spec.stages[s].log_checkpoint)
        for s, ks in keys.items()
        for k in ks
    }
    ordered = [k for ks in keys.values() for k in ks]  # Tune launches grid trials in this order
    stage_of: str | dict[str, str] = (
        stages[0] if len(stages) == 1 else {k: s for s, ks in keys.items() for k in ks}
    )
    trainable = tune.with_parameters(run_trial, ctx=run.ctx, tasks=tasks, train_fn=run.train_fn)
    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": res.cpu, "gpu": res.gpu}),
        param_space={"trial_key": tune.grid_search(ordered)},
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent, reuse_actors=True),
        run_config=_run_config(wave_name(stages), run, stage_of),
    )


def _search_space(search: SearchStage) -> dict[str, Any]:
    """The Tune search space of a search stage."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, dim in search.search.space.items():
        if dim.uniform is not None:
            space[key] = tune.uniform(*dim.uniform)
        elif dim.loguniform is not None:
            space[key] = tune.loguniform(*dim.loguniform)
        else:
            space[key] = tune.choice(list(dim.choice or []))
    return space


def _search_tuner(stage: str, run: _StageRun) -> Any:
    """An Optuna (TPE, seeded) Tuner for a search stage, with ASHA when asked."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    spec = run.plan.spec
    res = spec.stage_resources(stage)
    search = run.plan.searches[stage]
    s = search.search
    ctx = SweepContext(**{**run.ctx.__dict__, "search_metric": s.metric, "search_mode": s.mode})
    trainable = tune.with_parameters(run_trial, ctx=ctx, search=search, train_fn=run.train_fn)
    scheduler = None
    if s.scheduler == "asha":  # max_t beyond the last epoch: finishing is not an early stop
        scheduler = ASHAScheduler(
            grace_period=s.grace_period, max_t=search.epochs + 1, time_attr="segssl/step"
        )
    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": res.cpu, "gpu": res.gpu}),
        param_space=_search_space(search),
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            num_samples=s.num_samples,
            max_concurrent_trials=spec.max_concurrent,
            reuse_actors=True,
            search_alg=OptunaSearch(sampler=optuna.samplers.TPESampler(seed=s.seed), seed=s.seed),
            scheduler=scheduler,
        ),
        run_config=_run_config(stage, run, stage),
    )


# --------------------------------------------------------------------------- the sweep
def _load(spec: SweepSpec | str | Path, source: str | None) -> tuple[SweepSpec, str]:
    if not isinstance(spec, SweepSpec):
        source = source or str(spec)
        spec = load_sweep(spec)
    return spec, source or f"<sweep {spec.name}>"


def _check_configs(plan: Plan) -> list[tuple[str, Any]]:
    """``(stage, config)`` of every planned trial and search probe (for the data checks)."""
    out: list[tuple[str, Any]] = [(t.stage, t.config) for t in plan.all_trials()]
    out += [(n, search_probe(s, plan.source)) for n, s in plan.searches.items()]
    return out


def _preflight_data(plan: Plan, console: Console) -> None:
    n = check_plan_data(_check_configs(plan), plan.source)
    console.print(f"data: {n} source(s) checked", highlight=False)


def _dry_run(
    plan: Plan,
    uri: str,
    extend: bool,
    outcome: SweepOutcome,
    console: Console,
    *,
    check_data: bool,
    nodes: Callable[[], list[dict[str, Any]]],
) -> SweepOutcome:
    """Print the plan, then check the data and the resources; their problems are recorded in
    ``outcome.not_runnable`` (a run here would be refused), not raised: a plan and its cost do
    not need the data or the GPUs at hand (e.g. planning on a laptop for a cluster)."""
    exp_id, finished = _peek(uri, plan.spec.name, spec_hash(plan.spec), extend)
    counts = print_plan(plan, finished, console, uri)
    for stage, (n, todo) in counts.items():
        outcome.stages[stage] = StageOutcome(planned=n, skipped=n - todo)
    outcome.experiment_id = exp_id
    if check_data:
        try:
            _preflight_data(plan, console)
        except DataCheckError as exc:
            outcome.not_runnable.append(str(exc))
    launching = [s for s, (_, todo) in counts.items() if todo]
    try:
        check_resources(plan, launching, nodes())
    except ResourceError as exc:
        outcome.not_runnable.append(str(exc))
    return outcome


@dataclass
class _Tracking:
    """The invocation's view of the tracking store once the sweep is claimed."""

    exp_id: str
    finished: dict[str, Any]
    todo: dict[str, list[str]]
    launching: list[str]


def _open_tracking(
    plan: Plan, uri: str, extend: bool, takeover: bool, outcome: SweepOutcome
) -> _Tracking:
    """Experiment, stale runs, live-driver check, and what is left to run."""
    spec = plan.spec
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    exp_id = tracking.ensure_experiment(uri, spec.name, spec_hash(spec), extend=extend)
    outcome.experiment_id = exp_id
    client = tracking._client(uri)  # the UI opens the study as an ML experiment on its runs
    mlflow_ui.tag_experiment(client, exp_id, client.get_experiment(exp_id).tags)
    outcome.stale_marked = tracking.mark_stale_runs(uri, exp_id, everyone=takeover)
    other_drivers = tracking.live_sweep_runs(uri, exp_id)
    if other_drivers:  # a driver on another storage, logging into the same experiment
        tags = other_drivers[0].data.tags
        raise tracking.TrackingError(
            f"sweep {spec.name!r} is being run right now by another driver ("
            f"{tags.get(tracking.TAG_HOST)}:{tags.get(tracking.TAG_PID)}, MLflow run "
            f"{other_drivers[0].info.run_id}); wait for it to end or stop it (or rerun with "
            "--takeover if you know it is gone), then run this again"
        )
    finished = tracking.finished_runs(uri, exp_id)
    todo = {
        s: [t.key for t in plan.trials[s] if t.key not in finished]
        for s in plan.order
        if s not in plan.searches
    }
    for s in plan.order:
        n = plan.searches[s].search.num_samples if s in plan.searches else len(plan.trials[s])
        skipped = 0 if s in plan.searches else n - len(todo[s])
        outcome.stages[s] = StageOutcome(planned=n, skipped=skipped)
    launching = [s for s in plan.order if s in plan.searches or todo.get(s)]
    return _Tracking(exp_id, finished, todo, launching)


def _quiet_tune() -> None:
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the old reporter honours verbose=0
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # the sweep's own handler (interrupt.py) decides what Ctrl-C does, not Tune's
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # Tune's own INFO/WARNING chatter (result files, snapshot timing) would drown the live table;
    # trial errors are still logged at ERROR and reported in the summary.
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")


def _stage_keys(
    stage: str, plan: Plan, tr: _Tracking, so: StageOutcome, progress: SweepProgress
) -> list[str] | None:
    """Keys to launch in a grid stage (children of unfinished parents are blocked); None for a
    search stage."""
    if stage in plan.searches:
        return None
    parent = plan.spec.stages[stage].from_
    by_key = plan.by_key()
    keys = []
    for k in tr.todo[stage]:
        if parent is None or by_key[k].parent_key in tr.finished:
            keys.append(k)
        else:
            so.blocked += 1
    progress.stages[stage].failed += so.blocked
    return keys


def _count_stage(
    stage: str,
    errors: list[Any],
    keys: list[str] | None,
    uri: str,
    tr: _Tracking,
    run: _StageRun,
    reason: str | None,
) -> None:
    """After a stage's Tuner returned: close its runs and count them in the outcome
    (``errors``: the Tune results with an error of this stage's trials)."""
    so = run.outcome.stages[stage]
    by_status = tracking.close_stage_runs(uri, tr.exp_id, run.ctx.sweep_run_id, stage, reason)
    failed = set(by_status.get("FAILED", set()))
    if keys is not None:  # a trial that died before its run existed failed too
        failed |= {str((r.config or {}).get("trial_key")) for r in errors}
    so.failed = max(len(failed), len(errors))
    so.finished = len(by_status.get("FINISHED", ()))
    so.stopped = len(by_status.get("KILLED", ()))


def _stage_errors(grid: Any, keys: list[str] | None) -> list[Any]:
    """Tune results with an error among ``keys`` (None: all of the grid's)."""
    errors = [r for r in grid if r.error is not None]
    if keys is None:
        return errors
    mine = set(keys)
    return [r for r in errors if str((r.config or {}).get("trial_key")) in mine]


def _run_stages(run: _StageRun, tr: _Tracking, uri: str, interrupt: Interrupt) -> None:
    """Every wave of stages (:func:`stage_waves`) in order, one Tune run each; stops launching
    once the sweep is interrupted."""
    plan = run.plan
    outcome = run.outcome
    with run.progress:
        for wave in stage_waves(plan):
            interrupt.check()
            todo: dict[str, list[str] | None] = {}
            for stage in wave:
                so = outcome.stages[stage]
                keys = _stage_keys(stage, plan, tr, so, run.progress)
                if keys is not None and not keys:
                    continue
                so.launched = len(keys) if keys is not None else so.planned
                todo[stage] = keys
            if not todo:
                continue
            grid_keys = {s: k for s, k in todo.items() if k is not None}
            run.wave = todo
            if grid_keys:
                grid = _grid_tuner(grid_keys, run).fit()
            else:  # a search stage is a wave of its own
                grid = _search_tuner(next(iter(todo)), run).fit()
            reason = f"sweep stopped by {interrupt.name}" if interrupt.event.is_set() else None
            for stage, keys in todo.items():
                _count_stage(stage, _stage_errors(grid, keys), keys, uri, tr, run, reason)
            run.wave = {}
            tr.finished = tracking.finished_runs(uri, tr.exp_id)
            interrupt.check()


def _start_run(
    plan: Plan, uri: str, tr: _Tracking, source: str, claim: SweepClaim, outcome: SweepOutcome
) -> SweepContext:
    run_id = tracking.start_sweep_run(uri, tr.exp_id, plan.spec.name, spec_hash(plan.spec), source)
    claim.set_run(run_id)
    outcome.sweep_run_id = run_id
    return SweepContext(
        sweep=plan.spec.name,
        tracking_uri=uri,
        experiment_id=tr.exp_id,
        sweep_run_id=run_id,
        storage=str(plan.storage),
        git_sha=tracking.git_sha(),
    )


def _launch(
    plan: Plan,
    uri: str,
    tr: _Tracking,
    outcome: SweepOutcome,
    claim: SweepClaim,
    opts: dict[str, Any],
    keeper: ClaimKeeper,
) -> None:
    """Start Ray, check resources, run the stages under the sweep run; end the run.

    ``keeper`` refreshes the claim (started when it was taken); it also refreshes the sweep
    run's heartbeat while the run is open.
    """
    console: Console = opts["console"]
    _quiet_tune()
    started_ray = _ray_init(plan.spec, opts["address"], opts["num_cpus"], opts["ray_init_kwargs"])
    interrupt = Interrupt()
    interrupt.on_second = claim.release
    interrupt.notify = lambda msg: console.print(msg, highlight=False)
    try:
        import ray

        check_resources(plan, tr.launching, ray.nodes())
        ctx = _start_run(plan, uri, tr, opts["source"], claim, outcome)
        assert ctx.sweep_run_id is not None
        keeper.also = lambda: tracking.touch_sweep_run(uri, ctx.sweep_run_id)
        progress = SweepProgress(plan.spec.name, plan.spec.max_concurrent, console, opts["live"])
        progress.names = {t.key: t.name for t in plan.all_trials()}
        for s in plan.order:
            progress.add_stage(s, outcome.stages[s].planned, outcome.stages[s].skipped)
        run = _StageRun(
            plan,
            ctx,
            opts["train_fn"],
            progress,
            tick=lambda: None,
            run_tag=time.strftime("%Y%m%d-%H%M%S"),
            outcome=outcome,
            stopper=make_stopper(interrupt),
        )
        status, reason = "FINISHED", None
        ending, done = threading.Lock(), threading.Event()
        gcs = _gcs_address()
        if gcs is not None:
            end = (run, tr, uri, interrupt, ending, claim, keeper, opts)
            watch_cluster(
                interrupt, lambda: tcp_reachable(gcs), lambda: _end_without_ray(*end), done
            )
        try:
            with catch_signals(interrupt):
                _run_stages(run, tr, uri, interrupt)
        except SweepInterrupted as exc:
            status, reason = "KILLED", str(exc)
            outcome.interrupted = exc
        except BaseException as exc:
            status, reason = "KILLED", f"driver error: {type(exc).__name__}: {exc}"
            raise
        finally:
            done.set()
            ending.acquire()  # held for good when the sweep ended without Ray (the process exits)
            if status == "FINISHED" and outcome.failed:
                status = "FAILED"
            keeper.also = None  # the claim's heartbeat goes on until it is released
            _end_sweep_run(uri, ctx.sweep_run_id, outcome, status, reason, console)
            if outcome.failed:
                with contextlib.suppress(Exception):  # the summary is a courtesy
                    outcome.failures = tracking.failure_reasons(uri, tr.exp_id, ctx.sweep_run_id)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _gcs_address() -> str | None:
    """``HOST:PORT`` of the connected Ray cluster's GCS when the driver can watch it: None for
    a Ray client connection (``ray://``: the address is the GCS as the head node sees it, often
    not reachable from the client, and a signal to the client never stops that cluster) and for
    a GCS that does not accept a connection now (a watch would take it for a cluster gone)."""
    import ray

    try:
        if ray.util.client.ray.is_connected():
            return None
        address = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - no watch is the old behaviour, not an error
        return None
    if not (isinstance(address, str) and ":" in address):
        return None
    return address if tcp_reachable(address) else None


def _end_without_ray(
    run: _StageRun,
    tr: _Tracking,
    uri: str,
    interrupt: Interrupt,
    ending: threading.Lock,
    claim: SweepClaim,
    keeper: ClaimKeeper,
    opts: dict[str, Any],
) -> None:
    """After a signal that stopped Ray too (the driver's process group was signalled): what
    the graceful stop would do, without Ray. Closes the running wave's trial runs KILLED and
    counts them, ends the sweep run KILLED, releases the claim, hands the outcome to
    ``opts["on_abandon"]`` (the CLI prints its summary there) and exits the process with its
    status (default 128 + signal). Called from the watch thread while the main thread is stuck
    in a Ray call; does nothing when the main thread is already ending the sweep."""
    if not ending.acquire(blocking=False):
        return
    console: Console = opts["console"]
    outcome = run.outcome
    reason = f"sweep stopped by {interrupt.name}"
    exc = SweepInterrupted(interrupt.signum or 15, reason)
    outcome.interrupted = exc
    code = exc.code
    try:
        with contextlib.suppress(Exception):
            run.progress.__exit__(None, None, None)
        console.print(
            f"{interrupt.name} stopped Ray too (the whole process group was signalled): "
            "ending the sweep without it",
            highlight=False,
        )
        for stage, keys in run.wave.items():
            try:
                _count_stage(stage, [], keys, uri, tr, run, reason)
            except Exception as err:  # noqa: BLE001 - counted as unfinished, reported
                console.print(f"{stage}: could not count its runs: {err}", highlight=False)
        keeper.also = None
        _end_sweep_run(uri, run.ctx.sweep_run_id or "", outcome, "KILLED", reason, console)
        if outcome.failed:  # the summary names why, as after the graceful stop
            with contextlib.suppress(Exception):
                outcome.failures = tracking.failure_reasons(
                    uri, tr.exp_id, run.ctx.sweep_run_id or ""
                )
        keeper.stop()
        claim.release()
        if opts.get("on_abandon") is not None:
            code = opts["on_abandon"](outcome)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def run_sweep(
    spec: SweepSpec | str | Path,
    *,
    source: str | None = None,
    train_fn: Callable[..., dict] | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    storage: str | Path | None = None,
    extend: bool = False,
    dry_run: bool = False,
    num_cpus: int | None = None,
    console: Console | None = None,
    live: bool = True,
    ray_init_kwargs: dict[str, Any] | None = None,
    root: str | Path | None = None,
    takeover: bool = False,
    check_data: bool | None = None,
    on_abandon: Callable[[SweepOutcome], int] | None = None,
    prepare: Callable[[], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> SweepOutcome:
    """Plan and run a sweep; idempotent (FINISHED trial keys are skipped).

    Order of work: count the trials (refused above ``max_trials``), plan and validate every
    trial config, check the tables against the plan and the tracking URI; then (not for
    ``dry_run``) refuse a name another spec uses and (local Ray) stages no node can hold, call
    ``prepare``, check the data, call ``on_start``; only then write: claim the sweep storage
    (:mod:`segssl.orchestrate.claim`), write ``<storage>/plan.json``, open the experiment, start
    Ray, check resources and run the stages.
    ``dry_run`` prints the plan, then checks the data and the resources of the cluster it would
    use, records their problems in ``outcome.not_runnable`` (it does not raise on them: the plan
    and its cost stand without the data or the GPUs), and changes nothing.

    Args:
        spec: a validated spec or the path of a sweep YAML file.
        source: the file name used in messages (default: the path).
        train_fn: the trainable's train function, ``segssl.engine.train`` when None; any
            replacement takes ``(cfg, report, *, workdir, resume)`` and returns a dict.
        address: an existing Ray cluster (``auto``, ``ray://host:10001``, ``host:6379``);
            default: ``RAY_ADDRESS`` (a Ray job's driver), else a local Ray instance (reused
            when already initialised in this process).
        tracking_uri: MLflow tracking URI (default ``MLFLOW_TRACKING_URI``, else SQLite in the
            sweep storage); credentials in it are used and never printed.
        storage: where trial workdirs and Ray results live (default ``spec.storage`` or
            ``./segssl-runs/<name>``); on a cluster it must be shared by all nodes.
        extend: log into an experiment created by a different spec.
        dry_run: print the plan, check data and resources (problems recorded in
            ``outcome.not_runnable``), and stop.
        num_cpus: CPUs of a local Ray instance (default ``spec.num_cpus``, else all cores).
        console: where the plan and progress go.
        live: draw the live progress table.
        ray_init_kwargs: extra ``ray.init`` keyword arguments (tests).
        root: directory relative paths are resolved against (default: the current directory).
        takeover: take the sweep over from a driver that looks alive (its owner is known gone).
        check_data: resolve the plan's data before anything runs (default: when ``train_fn`` is
            the engine's, whose trials read that data).
        on_abandon: when a signal stopped Ray together with the driver (its process group was
            signalled), the sweep is ended without Ray and this process exits from another
            thread: called there with the outcome (``outcome.interrupted`` set), it reports it
            and returns the exit status (default: none, status 128 + signal).
        prepare: called once the spec, plan, tables, tracking URI and resources passed, before
            the data check (the CLI writes a smoke profile's phantoms there); not for a dry run.
        on_start: called once every check passed, before anything is written to the storage
            (the CLI opens its log file there); not for a dry run.

    Raises:
        SpecError: invalid spec, trial config, table or data; a stage no node can hold; the
            sweep is claimed by another driver (:class:`ClaimError`).
        TrackingError: tracking server unreachable, or the name is used by another spec.
    """
    console = console or Console(stderr=True)
    spec, source = _load(spec, source)
    address = _ray_address(address)
    if dry_run:  # the count first, even when it is refused
        n = sum(count_trials(spec).values())
        console.print(f"sweep {spec.name}: {n:,} trials", highlight=False)
    check_trial_count(spec, source)
    plan = plan_sweep(spec, source=source, storage=storage, root=root)
    check_plan_tables(plan)
    uri = tracking.resolve_tracking_uri(tracking_uri, plan.storage)
    if redact(uri) != uri:
        tracking.redact_logging()
    tracking.check_tracking(uri)
    outcome = SweepOutcome(spec.name, uri, None, plan.storage, dry_run=dry_run)
    check_data = train_fn is None if check_data is None else check_data
    if dry_run:
        return _dry_run(
            plan,
            uri,
            extend,
            outcome,
            console,
            check_data=check_data,
            nodes=lambda: _cluster_nodes(spec, address, num_cpus, ray_init_kwargs),
        )
    local = address is None and not _ray_running()
    _check_before_writing(
        plan,
        uri,
        extend,
        (lambda: _cluster_nodes(spec, None, num_cpus, ray_init_kwargs)) if local else None,
    )
    # a driver running this sweep now refuses this one before its data check and any write
    check_unclaimed(plan.storage, spec.name, takeover=takeover)
    with raise_on_signals():  # until the stages run: a signal ends the driver, claim released
        if prepare is not None:
            prepare()
        if check_data:
            _preflight_data(plan, console)
        if on_start is not None:
            on_start()
        claim = claim_sweep(
            plan.storage,
            spec.name,
            takeover=takeover,
            on_break=lambda msg: console.print(msg, highlight=False),
        )
        # the heartbeat runs from the claim on: a data check or a Ray start longer than the lease
        # must not let a second driver in
        keeper = ClaimKeeper(claim)
        try:
            _note_plan_change(plan, console)
            write_plan(plan)
            tr = _open_tracking(plan, uri, extend, takeover, outcome)
            if not tr.launching:
                console.print(
                    f"sweep {spec.name}: all {sum(len(v) for v in plan.trials.values())} "
                    "trials already FINISHED; nothing to run.",
                    highlight=False,
                )
                return outcome
            opts = {
                "console": console,
                "address": address,
                "num_cpus": num_cpus,
                "ray_init_kwargs": ray_init_kwargs,
                "source": source,
                "train_fn": train_fn,
                "live": live,
                "on_abandon": on_abandon,
            }
            _launch(plan, uri, tr, outcome, claim, opts, keeper)
        finally:
            keeper.stop()
            claim.release()
    return outcome


def _ray_address(address: str | None) -> str | None:
    """``address``, else ``RAY_ADDRESS`` (Ray sets it for a job's driver, and ``ray.init()``
    joins that cluster): the sweep is then checked against and run on that cluster, never on
    this machine's resources alone (the head of a cluster may have no GPU its workers have)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def _ray_running() -> bool:
    """Ray is initialised in this process (a sweep then runs on it, whatever it holds)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _check_before_writing(
    plan: Plan, uri: str, extend: bool, nodes: Callable[[], list[dict[str, Any]]] | None
) -> None:
    """What a run would otherwise refuse only after writing (the claim, ``plan.json``, the
    tracking store), checked read-only: the sweep's name used by another spec, and, given the
    ``nodes`` of a local Ray instance, a stage left to run that no node can hold.

    Raises:
        TrackingError: the experiment was made by another spec (without ``extend``).
        ResourceError: naming the stage, its resources and the nodes.
    """
    _, finished = _peek(uri, plan.spec.name, spec_hash(plan.spec), extend)
    if nodes is None:  # a cluster: checked once connected
        return
    launching = [
        s
        for s in plan.order
        if s in plan.searches or any(t.key not in finished for t in plan.trials[s])
    ]
    check_resources(plan, launching, nodes())


def _note_plan_change(plan: Plan, console: Console) -> None:
    """Say how the plan differs from the one the last invocation wrote (``plan.json``)."""
    path = plan.storage / PLAN_FILE
    if not path.is_file():
        return
    try:
        before = {t["key"] for t in read_plan(path)["trials"]}
    except (SpecError, KeyError, TypeError):
        return
    now = {t.key for t in plan.all_trials()}
    added, dropped = len(now - before), len(before - now)
    if added or dropped:
        console.print(
            f"plan: {added} trial(s) added and {dropped} no longer planned since {path}",
            highlight=False,
        )


def _peek(uri: str, name: str, shash: str, extend: bool) -> tuple[str | None, dict[str, Any]]:
    """Read-only view of an existing experiment for ``--dry-run``."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        return None, {}
    from segssl import sqlite_store

    try:  # a SQLite store is read directly (no MLflow import: a dry run answers in seconds)
        fast = sqlite_store.read_experiment(uri, name)
    except LookupError:
        return None, {}
    if fast is not None:
        old = fast[1].get(tracking.TAG_SPEC)
        _refuse_other_spec(uri, name, old, shash, extend)
        return fast[0], sqlite_store.finished_trials(uri, name) or {}
    exp = tracking._client(uri).get_experiment_by_name(name)
    if exp is None:
        return None, {}
    _refuse_other_spec(uri, name, exp.tags.get(tracking.TAG_SPEC), shash, extend)
    return str(exp.experiment_id), tracking.finished_runs(uri, str(exp.experiment_id))


def _refuse_other_spec(uri: str, name: str, old: str | None, shash: str, extend: bool) -> None:
    if old not in (None, shash) and not extend:
        raise tracking.TrackingError(
            f"sweep name {name!r} is already used at {redact(uri)} by a different spec (spec "
            f"hash {old}, this spec {shash}); rename the sweep or pass --extend"
        )


def _end_sweep_run(
    uri: str,
    run_id: str,
    outcome: SweepOutcome,
    status: str,
    reason: str | None,
    console: Console,
) -> None:
    """Log the per-stage counts and end the sweep run; a tracking failure here (a full disk
    under the store, a server gone) is reported, never raised over the sweep's own outcome."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics = []
    for stage, so in outcome.stages.items():
        for k in ("planned", "skipped", "launched", "finished", "failed", "blocked", "stopped"):
            metrics.append(Metric(f"sweep/{stage}/{k}", float(getattr(so, k)), now, 0))
    tags = [RunTag(tracking.TAG_END_REASON, reason[:5000])] if reason else []
    try:
        client = tracking._client(uri)
        client.log_batch(run_id, metrics=metrics, tags=tags)
        client.set_terminated(run_id, status=status)
    except Exception as exc:  # noqa: BLE001 - reported; the next run marks the run KILLED
        outcome.tracking_error = f"{type(exc).__name__}: {redact(str(exc)).splitlines()[0]}"
        console.print(
            f"could not record the end of sweep run {run_id} ({status}) at {redact(uri)}: "
            f"{outcome.tracking_error}; the next `segssl sweep` marks it",
            highlight=False,
        )
