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


if __name__ == "__main__":  # pragma: no cover
    app()
