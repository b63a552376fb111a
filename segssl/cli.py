"""The ``segssl`` command line: data | train | sweep | submit | table | demo | methods.

Every command validates its inputs before any work starts and exits non-zero with a message that
names the file, key or value at fault. Implementations live in the packages below; this module
only parses arguments and prints.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional  # noqa: F401  (typer options)

import typer
from rich.console import Console


def _plain_help() -> None:
    """Help as Unix tools write it: ``Usage: segssl train [OPTIONS] CONFIG`` (typer writes a
    required argument as ``{config}``) and no ``<bool>`` type beside on/off flags."""
    from typer.core import TyperArgument, TyperOption

    def usage_name(self: TyperArgument) -> str:
        name = (self.metavar or self.name or "").upper()
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    show_type = TyperOption.display_type_rich

    def type_unless_flag(self: TyperOption, ctx: typer.Context) -> str | None:
        return None if self.is_bool_flag else show_type(self, ctx)

    TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]
    TyperOption.display_type_rich = type_unless_flag  # type: ignore[method-assign]


_plain_help()
app = typer.Typer(
    name="segssl",
    help="Self- and semi-supervised medical image segmentation: one sweep YAML to paper tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Synthesise, prepare and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
# soft_wrap: long lines (paths, the MLflow UI link) are never broken at 80 columns in a log file
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """Print an error message on stderr and exit with ``code`` (passwords in URIs redacted)."""
    from segssl.orchestrate.tracking import redact

    err_console.print(f"[bold red]error:[/] {redact(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        import segssl

        console.print(f"segssl {segssl.__version__}")
        raise typer.Exit()


_OPTIONS: dict[str, bool] = {"verbose": False}


@app.callback()
def main(
    version: Optional[bool] = typer.Option(  # noqa: UP007, UP045 - typer needs Optional
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(
        False,
        "-v",
        "--verbose",
        help="Also show Ray's and MLflow's log lines and the trials' own output on the console "
        "(by default they go to a log file in the sweep's storage).",
    ),
) -> None:
    """segssl command line."""
    _OPTIONS["verbose"] = verbose


def _library_logs(storage: Path) -> dict[str, bool]:
    """Route Ray's and MLflow's logs to a file in ``storage`` (printed) now; the ``ray.init``
    arguments that keep trial output off the console unless ``-v``."""
    _, open_file = _held_library_logs(storage)
    open_file()
    return _ray_log_kwargs()


def _ray_log_kwargs() -> dict[str, bool]:
    """``ray.init`` arguments: trial output reaches the console only with ``-v``."""
    return {"log_to_driver": _OPTIONS["verbose"]}


def _held_library_logs(storage: Path) -> tuple[Any, Callable[[], None]]:
    """Hold Ray's and MLflow's logs until ``open`` (called once the sweep's input passed every
    check) writes them to a file in ``storage`` (printed): a refused sweep writes nothing."""
    from segssl.orchestrate.logs import hold_library_logs

    logs = hold_library_logs(verbose=_OPTIONS["verbose"])

    def open_file() -> None:
        path = logs.open(storage)
        err_console.print(f"Ray and MLflow logs: {path}", highlight=False)

    return logs, open_file


def _sweep_storage(spec: Any, storage: str | None, root: Path | None) -> Path:
    """The storage folder ``run_sweep`` will use (see ``plan_sweep``)."""
    base = (root or Path.cwd()).resolve()
    where = storage or spec.storage
    if where and "://" in str(where):  # a remote storage: the log file stays local
        return base / "segssl-runs" / spec.name
    path = Path(where) if where else base / "segssl-runs" / spec.name
    return path if path.is_absolute() else base / path


@app.command("methods")
def methods_cmd() -> None:
    """List the registered methods, one a line: its name, then what it trains."""
    from segssl.method_manifest import METHODS  # plain data: no torch import

    width = max(len(name) for name in METHODS)
    for name in sorted(METHODS):
        typer.echo(f"{name:<{width}}  {METHODS[name]}")


# ----------------------------------------------------------------------------- data commands
@data_app.command("synth")
def data_synth_cmd(
    dataset: str = typer.Option(..., "--dataset", help="acdc, promise12, msd-prostate, ..."),
    out: Path = typer.Option(..., "--out", help="Directory to write the archive layout into."),
    scans: int = typer.Option(10, "--scans", help="Subjects (ACDC patients give 2 scans)."),
    size: int = typer.Option(128, "--size", help="In-plane matrix size in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """Write a synthetic dataset in the real on-disk layout of DATASET."""
    from segssl.data import DataError, synthesize

    try:
        synthesize(dataset, out, scans=scans, size=size, seed=seed)
    except DataError as exc:
        fail(str(exc))
    console.print(f"wrote synthetic {dataset} ({scans} subjects, {size} px) to {out}")


@data_app.command("prepare")
def data_prepare_cmd(
    dataset: str = typer.Option(..., "--dataset", help="Adapter name (see `segssl data info`)."),
    root: Path = typer.Option(..., "--root", help="The archive root as shipped."),
    out: Path = typer.Option(..., "--out", help="Cache directory to build (or reuse)."),
    override: list[str] = typer.Option(  # noqa: B006 - typer default
        [],
        "-o",
        "--override",
        metavar="KEY=VALUE",
        help="A data.preprocess setting (YAML value), repeatable: -o size=[64,64] "
        "-o spacing=null (native) -o fit=resize; keys as in a run config's data.preprocess.",
    ),
    modality: str = typer.Option("0", "--modality", help="Channel of 4D images: index or name."),
) -> None:
    """Build the preprocessed cache of an archive (reused when settings and sources match)."""
    from pydantic import ValidationError

    from segssl.config import (
        ConfigError,
        PreprocessConfig,
        apply_overrides,
        format_validation_error,
    )
    from segssl.data import DataError
    from segssl.data.preprocess import prepare_records, validate_cache

    items = [o.removeprefix("data.").removeprefix("preprocess.") for o in override]
    try:
        pcfg = PreprocessConfig.model_validate(apply_overrides({}, items))
    except ConfigError as exc:
        fail(str(exc))
    except ValidationError as exc:
        fail(format_validation_error(exc, "-o", "data.preprocess setting", model=PreprocessConfig))
    from segssl.data import get_adapter

    mod: int | str = int(modality) if modality.isdigit() else modality
    try:
        adapter = get_adapter(dataset, root, modality=mod)
        before = _manifest_fingerprint(out)
        manifest = prepare_records(adapter, adapter.list_scans(), out, pcfg, log=console.print)
        validate_cache(out)
    except DataError as exc:
        fail(str(exc))
    state = "reused" if before == manifest["fingerprint"] else "built"
    console.print(
        f"{state} cache {out}: {manifest['num_scans']} scans, {manifest['num_slices']} slices, "
        f"fingerprint {manifest['fingerprint']}"
    )


def _manifest_fingerprint(cache: Path) -> str | None:
    import json

    try:
        return json.loads((cache / "manifest.json").read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


@data_app.command("info")
def data_info_cmd(
    cache: Path = typer.Argument(
        ..., metavar="CACHE", help="A cache directory (with manifest.json)."
    ),
    split: Optional[Path] = typer.Option(  # noqa: UP007, UP045
        None, "--split", help="A split manifest (split.json of a run) to summarise as well."
    ),
) -> None:
    """Summarise a prepared cache: scans, slices, classes, spacing, split sizes."""
    import json

    from rich.table import Table

    from segssl.data import DataError
    from segssl.data.preprocess import validate_cache

    if not cache.is_dir():
        fail(f"{cache}: no such cache directory")
    subs = sorted(p for p in cache.iterdir() if (p / "manifest.json").is_file())
    if not (cache / "manifest.json").is_file() and subs:
        console.print(f"{cache} is a cache root holding {len(subs)} caches:")
        for p in subs:
            console.print(f"  {p}")
        return
    try:
        m = validate_cache(cache)
    except DataError as exc:
        fail(str(exc))
    sp = [s["spacing"] for s in m["scans"]]
    console.print(f"[bold]{cache}[/]  dataset {m['dataset']}  fingerprint {m['fingerprint']}")
    console.print(f"source root: {m['root']}")
    console.print(
        f"scans: {m['num_scans']}  slices: {m['num_slices']}  classes: "
        f"{', '.join(m['class_names'])}  (label values {m['label_values']})"
    )
    console.print(
        f"slice size: {m['settings']['size']}  spacing (mm): through-plane "
        f"{min(s[0] for s in sp):.2f}-{max(s[0] for s in sp):.2f}, in-plane "
        f"{min(s[1] for s in sp):.2f}-{max(s[1] for s in sp):.2f}"
    )
    console.print(f"settings: {json.dumps(m['settings'], sort_keys=True)}", highlight=False)
    size = sum(s["bytes"] for s in m["scans"])
    console.print(f"cache size: {size / 2**20:.1f} MiB")
    if split is not None:
        try:
            sm = json.loads(split.read_text())
            table = Table(title=f"split {split} ({sm['unit']} unit, seed {sm['seed']})")
            for col in ("set", "scans", "subjects"):
                table.add_column(col)
            for key in ("train", "val", "test"):
                table.add_row(key, str(len(sm[key])), str(len(sm["subjects"][key])))
            table.add_row("labeled", str(len(sm["labeled"])), f"(spec {sm['labeled_spec']})")
            table.add_row("unlabeled", str(len(sm["unlabeled"])), "")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            fail(f"--split {split}: not a segssl split manifest ({exc})")
        console.print(table)
        cached = {s["scan_id"] for s in m["scans"]}
        unknown = sorted(set(sm["train"] + sm["val"] + sm["test"]) - cached)
        if unknown:
            fail(f"--split {split}: scans {unknown[:5]} are not in cache {cache}")


class _Signalled(BaseException):
    """SIGINT or SIGTERM arrived during ``segssl train``."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signum)
        self.name = signal.Signals(signum).name
        self.code = 128 + signum


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`_Signalled` (the run then ends KILLED)."""
    import signal

    def handler(signum: int, _frame: Any) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):  # a second signal kills at once
            signal.signal(s, signal.SIG_DFL)
        raise _Signalled(signum)

    from segssl.orchestrate.interrupt import signal_handlers

    with signal_handlers(handler, (signal.SIGINT, signal.SIGTERM)):
        yield


def _finish(recorder: Any, run_dir: Path, result: Any, status: str, reason: str | None) -> None:
    """End the MLflow run of ``segssl train`` (if any) with ``status`` and ``reason``."""
    if recorder is None:
        return
    from segssl.orchestrate.tracking import finish_single_run

    try:
        finish_single_run(recorder, run_dir, result, status, reason)
    except Exception as exc:  # noqa: BLE001 - reported, the run's own outcome stands
        from segssl.orchestrate.tracking import redact

        err_console.print(
            f"could not record the end of the MLflow run ({status}): {redact(str(exc))}",
            highlight=False,
        )


@app.command("train")
def train_cmd(
    config: Path = typer.Argument(
        ..., metavar="CONFIG", help="Run config YAML (see experiments/)."
    ),
    override: list[str] = typer.Option(  # noqa: B006 - typer default
        [], "-o", "--override", metavar="KEY=VALUE", help="key.path=value (YAML value), repeatable."
    ),
    workdir: Optional[Path] = typer.Option(  # noqa: UP007, UP045
        None, "--workdir", help="Run directory (default runs/<method>-<stage>-<config hash>)."
    ),
    tracking_uri: Optional[str] = typer.Option(  # noqa: UP007, UP045
        None, "--tracking-uri", help="Log the run to this MLflow tracking URI."
    ),
    experiment: str = typer.Option("segssl-train", "--experiment", help="MLflow experiment."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from last.pt."),
) -> None:
    """Run one training run end to end: checkpoints, result.json, optional MLflow record."""
    import json

    from segssl.config import ConfigError, config_hash, load_run_config
    from segssl.data.errors import DataError
    from segssl.engine import CheckpointError, EngineConfigError, NonFiniteLossError, check_run

    try:
        cfg = load_run_config(config, override)
        check_run(cfg)
    except (ConfigError, EngineConfigError, CheckpointError, KeyError) as exc:
        fail(str(exc))
    run_dir = workdir or Path("runs") / f"{cfg.method.name}-{cfg.stage}-{config_hash(cfg)}"
    recorder = None
    if tracking_uri:
        from segssl.orchestrate.tracking import redact_logging, start_single_run

        redact_logging()
        name = f"{cfg.method.name} {cfg.stage} | {cfg.data.labeled_scans} | seed {cfg.seed}"
        try:
            recorder = start_single_run(tracking_uri, experiment, cfg, name, run_dir, reopen=resume)
        except Exception as exc:  # noqa: BLE001 - any tracking failure is reported, not traced
            fail(f"--tracking-uri {tracking_uri}: cannot start an MLflow run: {exc}")
    from segssl.engine import train

    result, status, reason = None, "FAILED", None
    try:
        with _signals_raise():
            result = train(cfg, recorder, workdir=run_dir, resume=resume)
            status = "FINISHED"
    except _Signalled as exc:  # SIGINT/SIGTERM: the run is KILLED, last.pt stays for --resume
        status, reason = "KILLED", f"stopped by {exc.name}"
        _finish(recorder, run_dir, result, status, reason)
        fail(f"{reason}; {run_dir / 'checkpoints' / 'last.pt'} is kept: rerun to resume", exc.code)
    except DataError as exc:  # bad data input, found before any training step
        _finish(recorder, run_dir, result, status, str(exc))
        fail(str(exc))
    except (NonFiniteLossError, EngineConfigError, CheckpointError, ValueError) as exc:
        _finish(recorder, run_dir, result, status, str(exc))
        fail(str(exc), code=1)
    except BaseException as exc:
        _finish(recorder, run_dir, result, status, f"{type(exc).__name__}: {exc}")
        raise
    _finish(recorder, run_dir, result, status, None)
    metrics = result["metrics"]
    console.print(f"[bold]result[/] {run_dir / 'result.json'}")
    console.print(json.dumps(metrics, indent=1, sort_keys=True), highlight=False)


@app.command("sweep")
def sweep_cmd(
    sweep: Path = typer.Argument(
        ..., metavar="SWEEP", help="The sweep YAML file (see experiments/sweeps/)."
    ),
    address: Optional[str] = typer.Option(  # noqa: UP007, UP045
        None, "--address", help="An existing Ray cluster (auto, HOST:6379, ray://HOST:10001)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and stop."),
    tracking_uri: Optional[str] = typer.Option(  # noqa: UP007, UP045
        None,
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else SQLite in the storage).",
    ),
    storage: Optional[str] = typer.Option(  # noqa: UP007, UP045
        None,
        "--storage",
        help="Trial workdirs and Ray results (default: spec or ./segssl-runs/NAME).",
    ),
    extend: bool = typer.Option(
        False, "--extend", help="Log into an experiment of the same name made by another spec."
    ),
    num_cpus: Optional[int] = typer.Option(  # noqa: UP007, UP045
        None, "--num-cpus", help="CPUs of the local Ray instance (default: spec, else all)."
    ),
    live: bool = typer.Option(True, "--live/--no-live", help="Live progress table."),
    root: Optional[Path] = typer.Option(  # noqa: UP007, UP045
        None,
        "--root",
        help="Directory relative data paths resolve against (default: the current directory).",
    ),
    takeover: bool = typer.Option(
        False,
        "--takeover",
        help="Take the sweep over from a driver that looks alive but is known to be gone.",
    ),
    skip_data_check: bool = typer.Option(
        False,
        "--skip-data-check",
        help="Do not check the data before running (e.g. planning where the data is not).",
    ),
    profile: Optional[str] = typer.Option(  # noqa: UP007, UP045
        None,
        "--profile",
        help="smoke (phantoms, tiny, minutes on a CPU) | paper (the real protocol; default).",
    ),
    gpu_tflops: float = typer.Option(
        10.0, "--gpu-tflops", help="--dry-run cost: sustained GPU TFLOP/s assumed per trial."
    ),
    cost: bool = typer.Option(
        True,
        "--cost/--no-cost",
        help="--dry-run: estimate GPU-hours (FLOPs of a short, cached calibration run).",
    ),
) -> None:
    """Plan and run a sweep through Ray Tune; every trial is an MLflow run. Idempotent.

    Ctrl-C (or SIGTERM) stops cleanly: nothing more is launched, running trials stop and keep
    their last checkpoint, the sweep run is marked KILLED; a second Ctrl-C exits at once.
    """
    from segssl.config import ConfigError
    from segssl.orchestrate.interrupt import SweepInterrupted
    from segssl.orchestrate.profiles import ensure_phantoms
    from segssl.orchestrate.runner import run_sweep
    from segssl.orchestrate.spec import load_sweep
    from segssl.orchestrate.tracking import TrackingError

    if not sweep.is_file():
        fail(f"{sweep}: no such sweep file")
    if not gpu_tflops > 0:
        fail(f"--gpu-tflops {gpu_tflops}: expected a positive throughput")
    logs = None
    try:
        spec = load_sweep(sweep, profile=profile)

        def phantoms() -> None:  # once the spec, plan and tracking passed: before the data check
            where = ensure_phantoms(spec.phantoms, root)
            err_console.print(f"profile {spec.profile}: phantoms in {where}", highlight=False)

        open_logs = None
        if not dry_run:  # the log file is opened once every check passed (nothing before)
            logs, open_logs = _held_library_logs(_sweep_storage(spec, storage, root))
        try:
            out = run_sweep(
                spec,
                source=str(sweep),
                ray_init_kwargs=None if dry_run else _ray_log_kwargs(),
                prepare=phantoms if spec.phantoms is not None else None,
                on_start=open_logs,
                address=address,
                tracking_uri=tracking_uri,
                storage=storage,
                extend=extend,
                dry_run=dry_run,
                num_cpus=num_cpus,
                console=err_console,
                live=live,
                root=root,
                takeover=takeover,
                # a smoke profile's phantoms are written by the run itself, not by a dry run
                check_data=not skip_data_check and not (dry_run and spec.phantoms is not None),
                on_abandon=_summary_status,
            )
        finally:  # refused before the log file opened: its warnings are shown, not lost
            for line in logs.unwritten() if logs is not None and logs.path is None else []:
                err_console.print(line, highlight=False, markup=False)
    except (ConfigError, TrackingError) as exc:
        fail(str(exc))
    except SweepInterrupted as exc:  # a signal before any trial ran
        fail(f"{exc} before any trial started; rerun the same command to run it", exc.code)
    except ConnectionError as exc:
        where = (
            f"--address {address}" if address else f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}"
        )
        fail(f"{where}: cannot connect to the Ray cluster: {exc}")
    except OSError as exc:  # e.g. a full disk under the storage or the tracking store
        fail(f"{exc}; the sweep stopped (a rerun resumes once this is fixed)", 1)
    except Exception as exc:
        if type(exc).__name__ != "MlflowException":
            raise
        fail(f"the tracking store failed: {str(exc).splitlines()[0]}; the sweep stopped", 1)
    if dry_run:
        if cost:
            _print_cost(spec, sweep, storage, root, gpu_tflops)
        if out.not_runnable:  # the plan and cost above stand; a run here would be refused
            fail(
                "the plan and its cost above stand, but a run here would be refused:\n  "
                + "\n  ".join(out.not_runnable)
            )
        return
    _sweep_summary(out)


def _summary_status(out: Any) -> int:
    """Print the summary of ``out`` and return the exit status it ends with (for a sweep that
    ends outside the main thread: Ray stopped by the same signal as the driver)."""
    try:
        _sweep_summary(out)
    except typer.Exit as exc:
        return exc.exit_code
    return 0


def _sweep_summary(out: Any) -> None:
    """Per-stage counts, failures grouped by reason, and the exit status of ``segssl sweep``."""
    from segssl.orchestrate.tracking import redact

    for stage, so in out.stages.items():
        console.print(
            f"{stage}: {so.planned} planned, {so.skipped} already finished, "
            f"{so.finished} finished now, {so.failed} failed, {so.blocked} blocked"
            + (f", {so.launched - so.finished - so.failed} stopped" if out.interrupted else ""),
            highlight=False,
        )
    for reason, info in out.failures.items():
        kind = "not retryable" if not info["retryable"] else "retryable"
        runs = info["runs"]
        shown = "; ".join(runs[:3]) + (f"; ... {len(runs) - 3} more" if len(runs) > 3 else "")
        err_console.print(
            f"[bold red]{len(runs)} trial(s) failed[/] ({kind}): {reason}\n  {shown}",
            highlight=False,
            soft_wrap=True,
        )
    from segssl.orchestrate.mlflow_ui import ui_command

    ui = ui_command(redact(out.tracking_uri), out.experiment_id)
    console.print(f"MLflow UI: {ui}", highlight=False)
    if out.interrupted is not None:
        unfinished = sum(so.planned - so.skipped - so.finished for so in out.stages.values())
        fail(
            f"{out.interrupted}: {unfinished} trial(s) unfinished; rerun the same command to "
            "resume them",
            out.interrupted.code,
        )
    if out.tracking_error:
        fail(f"the tracking store could not record the sweep's end: {out.tracking_error}", 1)
    if out.failed:
        fixable = [r for r, i in out.failures.items() if i["retryable"]]
        hint = (
            "rerun the same command to retry them"
            if fixable or not out.failures
            else "fix the reasons above; a rerun alone will fail the same way"
        )
        fail(f"{out.failed} trial(s) did not finish; {hint}", 1)


def _print_cost(
    spec: Any, sweep: Path, storage: str | None, root: Path | None, gpu_tflops: float
) -> None:
    """The dry run's cost estimate per stage and in total (see segssl.orchestrate.cost)."""
    from segssl.orchestrate.cost import estimate_plan, format_costs
    from segssl.orchestrate.plan import plan_sweep

    base = Path(root) if root is not None else Path.cwd()
    plan = plan_sweep(spec, source=str(sweep), storage=storage, root=base)
    cache = base / "segssl-runs" / "cost-cache.json"
    try:
        costs = estimate_plan(
            plan, cache, gpu_tflops, log=lambda m: err_console.print(m, highlight=False)
        )
    except Exception as exc:  # noqa: BLE001 - the plan is printed; the estimate is a bonus
        err_console.print(f"no cost estimate: the calibration run failed: {exc}", highlight=False)
        return
    err_console.print(format_costs(costs, gpu_tflops), highlight=False, soft_wrap=True)


@app.command("submit")
def submit_cmd(
    sweep: Path = typer.Argument(..., metavar="SWEEP", help="The sweep YAML file."),
    address: str = typer.Option(..., "--address", help="Ray job server, http://HEAD:8265."),
    tracking_uri: Optional[str] = typer.Option(  # noqa: UP007, UP045
        None, "--tracking-uri", help="Tracking server reachable from the cluster."
    ),
    storage: Optional[str] = typer.Option(  # noqa: UP007, UP045
        None, "--storage", help="Absolute storage path shared by every node."
    ),
    extend: bool = typer.Option(False, "--extend", help="Pass --extend to the remote sweep."),
    profile: Optional[str] = typer.Option(  # noqa: UP007, UP045
        None,
        "--profile",
        help="smoke (phantoms, tiny, minutes on a CPU) | paper (the real protocol; default).",
    ),
    status: bool = typer.Option(False, "--status", help="Print the sweep's job status."),
    logs: bool = typer.Option(False, "--logs", help="Print the sweep's job logs."),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="With --logs (or a submission): stream until the job ends."
    ),
    stop: bool = typer.Option(False, "--stop", help="Stop the sweep's running job."),
    ship_code: bool = typer.Option(
        True, "--ship-code/--no-ship-code", help="Upload this segssl package with the job."
    ),
    cluster_credentials: bool = typer.Option(
        False,
        "--cluster-credentials",
        help="Send no MLflow credentials: the cluster nodes' environment has them.",
    ),
) -> None:
    """Run `segssl sweep` as a Ray job on a remote cluster (idempotent: one job per sweep).

    Resubmitting a running sweep attaches to its job; a finished, failed or stopped one gets a
    new attempt that runs only the missing trials. --status, --logs [--follow] and --stop act on
    the sweep's latest job. Exit codes of --status, --logs and a followed submission are the
    job's outcome: 0 succeeded, 1 failed, 3 stopped, 4 pending or running; 2 is a usage error
    or no such job. --stop exits 0 once the job is no longer running.
    """
    import os

    from segssl.config import ConfigError
    from segssl.orchestrate import submit as sub
    from segssl.orchestrate.spec import load_sweep

    flags = (("--status", status), ("--logs", logs), ("--stop", stop))
    actions = [name for name, on in flags if on]
    if len(actions) > 1:
        fail(f"{' and '.join(actions)}: choose one")
    if not sweep.is_file():
        fail(f"{sweep}: no such sweep file")
    try:
        spec = load_sweep(sweep, profile=profile)
    except ConfigError as exc:
        fail(str(exc))
    if actions:
        _submit_action(sub, spec, address, actions[0], follow)  # exits with the job's outcome
    try:
        res = sub.submit_sweep(
            sweep,
            spec,
            address,
            tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
            storage,
            extend,
            ship_code=ship_code,
            cluster_credentials=cluster_credentials,
        )
    except (ConfigError, sub.SubmitError) as exc:
        fail(str(exc))
    except (ConnectionError, RuntimeError) as exc:
        fail(f"--address {address}: cannot reach the Ray job server: {exc}")
    verb = "attached to the running" if res.attached else "submitted"
    console.print(
        f"{verb} job {res.job_id} (attempt {res.attempt}, {res.status}) of sweep {spec.name}",
        highlight=False,
    )
    if follow:
        _submit_action(sub, spec, address, "--logs", True)
    console.print(
        f"follow it with: segssl submit {sweep} --address {address} --logs --follow",
        highlight=False,
    )


def _submit_action(sub: Any, spec: Any, address: str, action: str, follow: bool) -> None:
    """--status / --logs / --stop on the sweep's latest job; exits with its outcome's code."""
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
        attempt, job = sub.find_job(client, spec)
    except sub.SubmitError as exc:
        fail(str(exc))
    except (ConnectionError, RuntimeError) as exc:
        fail(f"--address {address}: cannot reach the Ray job server: {exc}")
    job_id = str(job.submission_id)
    state = str(getattr(job.status, "value", job.status))
    if action == "--logs":
        if follow:
            state = sub.follow_logs(client, job_id, _echo_raw)
        else:
            typer.echo(client.get_job_logs(job_id), nl=False)
    elif action == "--stop":
        if state in ("PENDING", "RUNNING"):
            state = sub.stop_job(client, job_id)
        err_console.print(f"job {job_id}: {state}", highlight=False)
        raise typer.Exit(0 if state in ("STOPPED", "SUCCEEDED", "FAILED") else 4)
    msg = f" ({job.message})" if action == "--status" and job.message else ""
    err_console.print(
        f"sweep {spec.name}: job {job_id} (attempt {attempt}) {state}{msg}", highlight=False
    )
    raise typer.Exit(sub.job_exit_code(state))


def _echo_raw(text: str) -> None:
    typer.echo(text, nl=False)


@app.command("demo")
def demo_cmd(
    workdir: Path = typer.Option(Path("segssl-demo"), "--workdir", help="Working directory."),
    num_cpus: Optional[int] = typer.Option(  # noqa: UP007, UP045
        None, "--num-cpus", help="CPUs for local Ray (default: up to 2)."
    ),
    live: bool = typer.Option(True, "--live/--no-live", help="Live progress table."),
) -> None:
    """Synthetic ACDC, a small real sweep (baseline vs bim pre-train -> fine-tune), the table."""
    from segssl.config import ConfigError
    from segssl.data.errors import DataError
    from segssl.demo import DemoIncomplete, run_demo
    from segssl.orchestrate.tracking import TrackingError
    from segssl.report import ReportError

    try:
        ray_kwargs = _library_logs(workdir.resolve() / "segssl-runs" / "demo")
        table, ui = run_demo(
            workdir,
            num_cpus=num_cpus,
            live=live,
            console=err_console,
            ray_init_kwargs=ray_kwargs,
        )
    except (ConfigError, TrackingError, DataError, ReportError) as exc:
        fail(str(exc))
    except DemoIncomplete as exc:
        if exc.table:
            typer.echo(exc.table)
        typer.echo(f"Open the runs in the MLflow UI:\n  {exc.ui}")
        fail(str(exc), 1)
    typer.echo(table)
    typer.echo(f"Open the runs in the MLflow UI:\n  {ui}")


def _missing_store(db: Path, name: str, sweep: Path, storage: Path | None) -> str:
    """The error for a missing SQLite store: where the sweep's runs are, when a store of that
    sweep lies nearby, and the exact command that shows them.

    Looked at first: the storage the sweep names (its ``storage:`` or ``--storage``), a
    relative one resolved against the directories a sweep is run from (here, the sweep file's
    folder and the folders above it); then ``segssl-runs/<name>`` in those folders or one level
    below them (``segssl demo`` keeps its store in ``segssl-demo/``).
    """
    bases = [Path.cwd(), *list(sweep.resolve().parents)[:4]]
    found = _own_stores(storage, bases) + _stores_of(name, bases)
    found = [f for f in dict.fromkeys(found) if f != db.resolve()]
    if found:
        where = "\n".join(f"  segssl table {sweep} --tracking-uri sqlite:///{f}" for f in found[:3])
        return (
            f"no MLflow database at {db} (the default for sweep {name!r} run from here); its "
            f"runs are in {found[0]}. Show them with:\n{where}"
        )
    return (
        f"no MLflow database at {db} (the default for sweep {name!r} run from here): run the "
        "table from the directory `segssl sweep` ran in, or pass --tracking-uri (the URI "
        f"`segssl sweep` printed); if the sweep has not run yet: segssl sweep {sweep}"
    )


def _own_stores(storage: Path | None, bases: list[Path]) -> list[Path]:
    """``<storage>/mlflow.db`` for the sweep's own storage: itself when absolute, else under
    each base folder."""
    if storage is None:
        return []
    paths = [storage] if storage.is_absolute() else [b / storage for b in bases]
    return [(p / "mlflow.db").resolve() for p in paths if (p / "mlflow.db").is_file()]


def _stores_of(name: str, bases: list[Path]) -> list[Path]:
    """``segssl-runs/<name>/mlflow.db`` in each base folder or one level below it."""
    found: dict[Path, None] = {}
    for base in dict.fromkeys(b.resolve() for b in bases):
        for pattern in (f"segssl-runs/{name}/mlflow.db", f"*/segssl-runs/{name}/mlflow.db"):
            for db in sorted(base.glob(pattern)):
                found.setdefault(db.resolve())
    return list(found)


@app.command("table")
def table_cmd(
    sweep: Path = typer.Argument(
        ..., metavar="SWEEP", help="The sweep YAML file (its 'tables:' are printed)."
    ),
    fmt: Optional[str] = typer.Option(  # noqa: UP007, UP045
        None,
        "--format",
        "-f",
        help="md | latex | csv | html (default: from the --out suffix, else md).",
    ),
    out: Optional[Path] = typer.Option(  # noqa: UP007, UP045
        None, "--out", "-o", help="Write the tables to this file instead of stdout."
    ),
    tracking_uri: Optional[str] = typer.Option(  # noqa: UP007, UP045
        None,
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the sweep's SQLite file).",
    ),
    curves: Optional[Path] = typer.Option(  # noqa: UP007, UP045
        None,
        "--curves",
        help="Also write figures here: <table>_curves.png|pdf (val Dice vs epoch) and "
        "<table>_figure.png|pdf (rows over columns, std bands, the paper's points).",
    ),
    no_log: bool = typer.Option(
        False, "--no-log", help="Do not log the table as an artifact of the sweep's parent run."
    ),
    advise_seeds: Optional[float] = typer.Option(  # noqa: UP007, UP045
        None,
        "--advise-seeds",
        help="Also print the seeds each cell needs to detect this difference (table units, "
        "e.g. 2 for 2 Dice points when the table scales Dice by 100).",
    ),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level of --advise-seeds."),
    power: float = typer.Option(0.8, "--power", help="Power wanted by --advise-seeds."),
    profile: Optional[str] = typer.Option(  # noqa: UP007, UP045
        None,
        "--profile",
        help="smoke (phantoms, tiny, minutes on a CPU) | paper (the real protocol; default).",
    ),
    storage_opt: Optional[str] = typer.Option(  # noqa: UP007, UP045
        None,
        "--storage",
        help="The sweep's storage, as given to `segssl sweep --storage` (default: the spec's "
        "storage, else ./segssl-runs/NAME).",
    ),
) -> None:
    """Print the sweep's tables from its FINISHED MLflow runs (mean +- std over seeds)."""
    from segssl.config import ConfigError
    from segssl.orchestrate.spec import load_sweep
    from segssl.orchestrate.tracking import resolve_tracking_uri
    from segssl.report import FORMATS, ReportError, render_tables

    if fmt is None:
        by_suffix = {".tex": "latex", ".csv": "csv", ".html": "html", ".htm": "html"}
        fmt = by_suffix.get(out.suffix.lower(), "md") if out is not None else "md"
    if fmt not in FORMATS:
        fail(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not sweep.is_file():
        fail(f"{sweep}: no such sweep file")
    if advise_seeds is not None and not advise_seeds > 0:
        fail(f"--advise-seeds {advise_seeds}: expected a positive difference (e.g. 2)")
    if not (0 < alpha < 1 and 0 < power < 1):
        fail(f"--alpha {alpha} / --power {power}: expected values in (0, 1)")
    try:  # the overrides were checked when the sweep ran; checking them imports torch
        spec = load_sweep(sweep, profile=profile, check_overrides=False)
    except ConfigError as exc:
        fail(str(exc))
    own = storage_opt or spec.storage
    if own and "://" in str(own):
        fail(f"--storage {own}: a remote storage has no local store; pass --tracking-uri")
    storage = Path(own) if own else Path("segssl-runs") / spec.name
    uri = resolve_tracking_uri(tracking_uri, storage.resolve())
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        db = Path(uri[len("sqlite:///") :])
        fail(_missing_store(db, spec.name, sweep, Path(own) if own else None))
    _check_tables_against_plan(spec, storage, sweep)
    try:
        text = render_tables(
            spec,
            uri,
            fmt,
            base_dirs=[sweep.resolve().parent],
            log_artifact=not no_log,
            curves_dir=curves,
            advise=(advise_seeds, alpha, power) if advise_seeds is not None else None,
        )
    except ReportError as exc:
        fail(str(exc))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        err_console.print(f"wrote {out}", highlight=False)
    else:
        typer.echo(text, nl=False)
    if curves is not None:
        err_console.print(f"learning curves and table figures in {curves}", highlight=False)


def _check_tables_against_plan(spec: Any, storage: Path, sweep: Path) -> None:
    """When the sweep's ``plan.json`` is there, check the tables against its planned trials (a
    row or column that matches no planned trial is an error, not an empty line)."""
    from segssl.orchestrate.plan import PLAN_FILE, read_plan
    from segssl.orchestrate.spec import SpecError
    from segssl.report import ReportError, check_tables

    if not (storage / PLAN_FILE).is_file():
        return
    try:
        plan = read_plan(storage / PLAN_FILE)
    except SpecError as exc:
        fail(str(exc))
    if plan.get("sweep") != spec.name:
        return  # another sweep's storage: nothing to compare with
    trials = [(t["stage"], t["params"]) for t in plan["trials"]]
    try:
        check_tables(spec.tables, trials, name=spec.name, base_dirs=[sweep.resolve().parent])
    except ReportError as exc:
        fail(f"{sweep}: tables (checked against {storage / PLAN_FILE}): {exc}")


if __name__ == "__main__":  # pragma: no cover
    app()
