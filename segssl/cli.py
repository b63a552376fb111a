"""The ``segssl`` command line: data | train | sweep | submit | table | demo | methods.

Every command validates its inputs before any work starts and exits non-zero with a message that
names the file, key or value at fault. Implementations live in the packages below; this module
only parses arguments and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional  # noqa: F401  (typer options)

import typer
from rich.console import Console

from segssl import __version__

app = typer.Typer(
    name="segssl",
    help="Self- and semi-supervised medical image segmentation: one sweep YAML to paper tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Synthesise, prepare and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print an error message on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        console.print(f"segssl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Optional[bool] = typer.Option(  # noqa: UP007 - typer needs Optional
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """segssl command line."""


@app.command("methods")
def methods_cmd() -> None:
    """List the registered method names, one a line."""
    from segssl.methods import REGISTRY

    for name in sorted(REGISTRY):
        typer.echo(name)


@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="Run config YAML (see experiments/)."),
    override: list[str] = typer.Option(  # noqa: B006 - typer default
        [], "-o", "--override", help="key.path=value (YAML value), repeatable."
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
    from segssl.engine import CheckpointError, EngineConfigError, NonFiniteLossError, check_run

    try:
        cfg = load_run_config(config, override)
        check_run(cfg)
    except (ConfigError, EngineConfigError, CheckpointError, KeyError) as exc:
        fail(str(exc).strip("'\""))
    run_dir = workdir or Path("runs") / f"{cfg.method.name}-{cfg.stage}-{config_hash(cfg)}"
    reporter = None
    if tracking_uri:
        from segssl.tracking import MlflowRunReporter

        name = f"{cfg.method.name} {cfg.stage} | {cfg.data.labeled_scans} | seed {cfg.seed}"
        try:
            reporter = MlflowRunReporter(tracking_uri, experiment, cfg, name)
        except Exception as exc:  # noqa: BLE001 - any tracking failure is reported, not traced
            fail(f"--tracking-uri {tracking_uri}: cannot start an MLflow run: {exc}")
    from segssl.engine import train

    result, status = None, "FAILED"
    try:
        result = train(cfg, reporter, workdir=run_dir, resume=resume)
        status = "FINISHED"
    except NonFiniteLossError as exc:
        fail(str(exc), code=1)
    except (EngineConfigError, CheckpointError, ValueError) as exc:
        fail(str(exc), code=1)
    finally:
        if reporter is not None:
            reporter.finish(result, run_dir, status)
    metrics = result["metrics"]
    console.print(f"[bold]result[/] {run_dir / 'result.json'}")
    console.print(json.dumps(metrics, indent=1, sort_keys=True), highlight=False)


@app.command("table")
def table_cmd(
    sweep: Path = typer.Argument(..., help="The sweep YAML file (its 'tables:' are printed)."),
    fmt: str = typer.Option("md", "--format", "-f", help="md | latex | csv | html."),
    out: Optional[Path] = typer.Option(  # noqa: UP007, UP045
        None, "--out", "-o", help="Write the tables to this file instead of stdout."
    ),
    tracking_uri: Optional[str] = typer.Option(  # noqa: UP007, UP045
        None,
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the sweep's SQLite file).",
    ),
    curves: Optional[Path] = typer.Option(  # noqa: UP007, UP045
        None, "--curves", help="Also write <table>_curves.png (val Dice vs epoch) here."
    ),
    no_log: bool = typer.Option(
        False, "--no-log", help="Do not log the table as an artifact of the sweep's parent run."
    ),
) -> None:
    """Print the sweep's tables from its FINISHED MLflow runs (mean +- std over seeds)."""
    from segssl.config import ConfigError
    from segssl.orchestrate.spec import load_sweep
    from segssl.orchestrate.tracking import resolve_tracking_uri
    from segssl.report import FORMATS, ReportError, render_tables

    if fmt not in FORMATS:
        fail(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not sweep.is_file():
        fail(f"{sweep}: no such sweep file")
    try:
        spec = load_sweep(sweep)
    except ConfigError as exc:
        fail(str(exc))
    storage = Path(spec.storage) if spec.storage else Path("segssl-runs") / spec.name
    uri = resolve_tracking_uri(tracking_uri, storage.resolve())
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        fail(
            f"no MLflow database at {uri[len('sqlite:///') :]}: run `segssl sweep {sweep}` "
            "first (from the same directory), or pass --tracking-uri"
        )
    try:
        text = render_tables(
            spec,
            uri,
            fmt,
            base_dirs=[sweep.resolve().parent],
            log_artifact=not no_log,
            curves_dir=curves,
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
        err_console.print(f"learning curves in {curves}", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
