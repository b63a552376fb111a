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


if __name__ == "__main__":  # pragma: no cover
    app()
