"""Runner: planned trials -> one Ray Tune ``Tuner`` per stage, in dependency order.

Order of work for ``segssl sweep``:

1. validate the spec and every trial config (planner);
2. resolve and check the tracking server (fail fast, before any trial);
3. get or create the experiment (refuse a name used by a different spec unless ``extend``);
4. mark RUNNING runs left by a dead driver as KILLED;
5. skip trials whose key already has a FINISHED run;
6. start or join Ray, check that some node can hold one trial of every stage;
7. per stage, a Tuner over the remaining trial keys (grid) or an Optuna search; a trial whose
   parent did not finish is not launched (it is reported as blocked).

Idempotence lives in MLflow (FINISHED runs by trial key) and in the trial workdirs on the sweep
storage (``<storage>/trials/<key>``, where the engine resumes from ``checkpoints/last.pt``); each
invocation therefore starts fresh Tuners and never needs ``Tuner.restore``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from segssl.config import flatten
from segssl.orchestrate import tracking
from segssl.orchestrate.plan import Plan, plan_sweep, search_probe
from segssl.orchestrate.progress import SweepProgress, make_tune_callback
from segssl.orchestrate.spec import Resources, SpecError, SweepSpec, load_sweep, spec_hash
from segssl.orchestrate.trainable import SweepContext, run_trial, task_from_trial

__all__ = [
    "ResourceError",
    "StageOutcome",
    "SweepOutcome",
    "check_resources",
    "print_plan",
    "run_sweep",
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
    console.print(f"storage: {plan.storage}\ntracking: {tracking_uri}", highlight=False)
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


def _tune_stage(
    *,
    stage: str,
    plan: Plan,
    keys: list[str] | None,
    ctx: SweepContext,
    train_fn: Callable[..., dict] | None,
    progress: SweepProgress,
    tick: Callable[[], None],
    run_tag: str,
) -> Any:
    from ray import tune

    spec = plan.spec
    res = spec.stage_resources(stage)
    resources = {"cpu": res.cpu, "gpu": res.gpu}
    callbacks = [make_tune_callback(progress, stage, tick)]
    run_config = tune.RunConfig(
        name=f"{stage}-{run_tag}",
        storage_path=str(plan.storage / "ray"),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=callbacks,
        verbose=0,
    )
    if keys is not None:
        by_key = plan.by_key()
        log_ckpt = spec.stages[stage].log_checkpoint
        tasks = {k: task_from_trial(by_key[k], ctx, log_ckpt) for k in keys}
        trainable = tune.with_parameters(run_trial, ctx=ctx, tasks=tasks, train_fn=train_fn)
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space={"trial_key": tune.grid_search(keys)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=spec.max_concurrent, reuse_actors=True
            ),
            run_config=run_config,
        )
        return tuner.fit()
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    search = plan.searches[stage]
    s = search.search
    space: dict[str, Any] = {}
    for key, dim in s.space.items():
        if dim.uniform is not None:
            space[key] = tune.uniform(*dim.uniform)
        elif dim.loguniform is not None:
            space[key] = tune.loguniform(*dim.loguniform)
        else:
            space[key] = tune.choice(list(dim.choice or []))
    scfg = SweepContext(**{**ctx.__dict__, "search_metric": s.metric, "search_mode": s.mode})
    trainable = tune.with_parameters(run_trial, ctx=scfg, search=search, train_fn=train_fn)
    import optuna

    sampler = optuna.samplers.TPESampler(seed=s.seed)
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            num_samples=s.num_samples,
            max_concurrent_trials=spec.max_concurrent,
            reuse_actors=True,
            search_alg=OptunaSearch(sampler=sampler, seed=s.seed),
            scheduler=ASHAScheduler(
                # max_t beyond the last epoch: finishing is not an early stop
                grace_period=s.grace_period,
                max_t=search.epochs + 1,
                time_attr="segssl/step",
            )
            if s.scheduler == "asha"
            else None,
        ),
        run_config=run_config,
    )
    return tuner.fit()


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
) -> SweepOutcome:
    """Plan and run a sweep; idempotent (FINISHED trial keys are skipped).

    Args:
        spec: a validated spec or the path of a sweep YAML file.
        source: the file name used in messages (default: the path).
        train_fn: the trainable's train function, ``segssl.engine.train`` when None; any
            replacement takes ``(cfg, report, *, workdir, resume)`` and returns a dict.
        address: an existing Ray cluster (``auto``, ``ray://host:10001``, ``host:6379``);
            default: a local Ray instance (reused when already initialised in this process).
        tracking_uri: MLflow tracking URI (default ``MLFLOW_TRACKING_URI``, else SQLite in the
            sweep storage).
        storage: where trial workdirs and Ray results live (default ``spec.storage`` or
            ``./segssl-runs/<name>``); on a cluster it must be shared by all nodes.
        extend: log into an experiment created by a different spec.
        dry_run: print the plan and stop.
        num_cpus: CPUs of a local Ray instance (default ``spec.num_cpus``, else all cores).
        console: where the plan and progress go.
        live: draw the live progress table.
        ray_init_kwargs: extra ``ray.init`` keyword arguments (tests).
        root: directory relative paths are resolved against (default: the current directory).

    Raises:
        SpecError: invalid spec or trial config, or a stage no node can hold.
        TrackingError: tracking server unreachable, or the name is used by another spec.
    """
    console = console or Console(stderr=True)
    if not isinstance(spec, SweepSpec):
        source = source or str(spec)
        spec = load_sweep(spec)
    source = source or f"<sweep {spec.name}>"
    plan = plan_sweep(spec, source=source, storage=storage, root=root)
    check_plan_tables(plan)
    uri = tracking.resolve_tracking_uri(tracking_uri, plan.storage)
    tracking.check_tracking(uri)
    shash = spec_hash(spec)
    outcome = SweepOutcome(spec.name, uri, None, plan.storage, dry_run=dry_run)
    if dry_run:
        exp_id, finished = _peek(uri, spec.name, shash, extend)
        counts = print_plan(plan, finished, console, uri)
        for stage, (n, todo) in counts.items():
            outcome.stages[stage] = StageOutcome(planned=n, skipped=n - todo)
        outcome.experiment_id = exp_id
        return outcome
    plan.storage.mkdir(parents=True, exist_ok=True)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    exp_id = tracking.ensure_experiment(uri, spec.name, shash, extend=extend)
    outcome.experiment_id = exp_id
    outcome.stale_marked = tracking.mark_stale_runs(uri, exp_id)
    other_drivers = tracking.live_sweep_runs(uri, exp_id)
    if other_drivers:  # two drivers on one sweep would train the same trials twice
        tags = other_drivers[0].data.tags
        raise tracking.TrackingError(
            f"sweep {spec.name!r} is being run right now by another driver ("
            f"{tags.get(tracking.TAG_HOST)}:{tags.get(tracking.TAG_PID)}, MLflow run "
            f"{other_drivers[0].info.run_id}); wait for it to end or stop it, then run this again"
        )
    finished = tracking.finished_runs(uri, exp_id)
    todo = {
        s: [t.key for t in plan.trials[s] if t.key not in finished]
        for s in plan.order
        if s not in plan.searches
    }
    launching = [s for s in plan.order if s in plan.searches or todo.get(s)]
    for s in plan.order:
        n = plan.searches[s].search.num_samples if s in plan.searches else len(plan.trials[s])
        outcome.stages[s] = StageOutcome(
            planned=n, skipped=0 if s in plan.searches else n - len(todo[s])
        )
    if not launching:
        console.print(
            f"sweep {spec.name}: all {sum(len(v) for v in plan.trials.values())} "
            "trials already FINISHED; nothing to run.",
            highlight=False,
        )
        return outcome

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the old reporter honours verbose=0
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's own INFO/WARNING chatter (result files, snapshot timing) would drown the live table;
    # trial errors are still logged at ERROR and reported in the summary.
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    started_ray = _ray_init(spec, address, num_cpus, ray_init_kwargs)
    try:
        import ray

        check_resources(plan, launching, ray.nodes())
        run_id = tracking.start_sweep_run(uri, exp_id, spec.name, shash, source)
        outcome.sweep_run_id = run_id
        ctx = SweepContext(
            sweep=spec.name,
            tracking_uri=uri,
            experiment_id=exp_id,
            sweep_run_id=run_id,
            storage=str(plan.storage),
            git_sha=tracking.git_sha(),
        )
        beat = _Heartbeat(uri, run_id)
        run_tag = time.strftime("%Y%m%d-%H%M%S")
        status = "FINISHED"
        progress = SweepProgress(spec.name, spec.max_concurrent, console, live=live)
        for s in plan.order:
            so = outcome.stages[s]
            progress.add_stage(s, so.planned, so.skipped)
        by_key = plan.by_key()
        try:
            with progress:
                for stage in plan.order:
                    so = outcome.stages[stage]
                    if stage in plan.searches:
                        keys = None
                    else:
                        parent = spec.stages[stage].from_
                        ok_parents = set(finished)
                        keys = []
                        for k in todo[stage]:
                            tr = by_key[k]
                            if parent is None or tr.parent_key in ok_parents:
                                keys.append(k)
                            else:
                                so.blocked += 1
                        progress.stages[stage].failed += so.blocked
                        if not keys:
                            continue
                    so.launched = len(keys) if keys is not None else so.planned
                    grid = _tune_stage(
                        stage=stage,
                        plan=plan,
                        keys=keys,
                        ctx=ctx,
                        train_fn=train_fn,
                        progress=progress,
                        tick=beat.tick,
                        run_tag=run_tag,
                    )
                    by_status = tracking.close_stage_runs(uri, exp_id, run_id, stage)
                    failed = set(by_status.get("FAILED", set()))
                    errors = [r for r in grid if r.error is not None]
                    if keys is not None:  # a trial that died before its run existed failed too
                        failed |= {str((r.config or {}).get("trial_key")) for r in errors}
                    so.failed = max(len(failed), len(errors))
                    so.finished = len(by_status.get("FINISHED", ()))
                    so.stopped = len(by_status.get("KILLED", ()))
                    finished = tracking.finished_runs(uri, exp_id)
        except BaseException:
            status = "KILLED"
            raise
        finally:
            if status != "KILLED" and outcome.failed:
                status = "FAILED"
            beat.stop()
            _end_sweep_run(uri, run_id, outcome, status)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return outcome


def _peek(uri: str, name: str, shash: str, extend: bool) -> tuple[str | None, dict[str, Any]]:
    """Read-only view of an existing experiment for ``--dry-run``."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        return None, {}
    from segssl.orchestrate import sqlite_store

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
            f"sweep name {name!r} is already used at {uri} by a different spec (spec hash {old}, "
            f"this spec {shash}); rename the sweep or pass --extend"
        )


def _end_sweep_run(uri: str, run_id: str, outcome: SweepOutcome, status: str) -> None:
    from mlflow.entities import Metric

    client = tracking._client(uri)
    now = int(time.time() * 1000)
    metrics = []
    for stage, so in outcome.stages.items():
        for k in ("planned", "skipped", "launched", "finished", "failed", "blocked", "stopped"):
            metrics.append(Metric(f"sweep/{stage}/{k}", float(getattr(so, k)), now, 0))
    client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id, status=status)


class _Heartbeat:
    """Refreshes the sweep run's heartbeat tag at most once a minute (from Tune callbacks) and
    from a daemon thread (so long trials without results keep the driver marked alive)."""

    def __init__(self, uri: str, run_id: str, every: float = 60.0) -> None:
        self.uri, self.run_id, self.every = uri, run_id, every
        self.last = time.time()
        self._stop = threading.Event()
        t = threading.Thread(target=self._loop, daemon=True, name="segssl-heartbeat")
        t.start()

    def tick(self) -> None:
        if time.time() - self.last >= self.every:
            self.last = time.time()
            with contextlib.suppress(Exception):  # a missed heartbeat is harmless
                tracking.touch_sweep_run(self.uri, self.run_id)

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.tick()
