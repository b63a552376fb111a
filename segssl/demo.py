"""``segssl demo``: the main job on embedded defaults, from nothing to a table.

1. synthesise a small ACDC phantom archive (the real on-disk layout) in ``<workdir>/data/acdc``;
2. run a small real sweep (:func:`demo_spec`; the same file ships as
   ``experiments/sweeps/demo.yaml``) on a local Ray instance, with MLflow on SQLite in
   ``<workdir>/segssl-runs/demo/mlflow.db``: the baseline (labeled scans only) against bim
   pre-training then fine-tuning, 1 and 2 labeled scans, 2 seeds, a tiny U-Net, a few epochs;
3. print the table (mean +- std over the 2 seeds, n per cell; also written with the learning
   curves to ``<workdir>/report/``) and the command that opens the MLflow UI on these runs.

The demo is idempotent like every sweep: running it again reuses the data and skips FINISHED
trials. Its hyperparameters are scaled down (64 px, base width 8, a handful of short epochs, a
larger learning rate) so that it completes in minutes on two CPU cores; the paper's settings are
in ``experiments/sweeps/bim_*.yaml``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["DEMO_NAME", "DemoIncomplete", "demo_spec", "run_demo"]

DEMO_NAME = "demo"


def demo_spec(data_root: str = "data/acdc", epochs: int = 10, iters: int = 16) -> dict[str, Any]:
    """The demo sweep as a plain mapping (``experiments/sweeps/demo.yaml`` holds the same).

    Args:
        data_root: the synthetic ACDC archive (relative paths resolve against the workdir).
        epochs: fine-tuning epochs (pre-training runs the same number).
        iters: iterations per epoch.
    """
    train = {"epochs": epochs, "iters_per_epoch": iters, "progress": False, "pictures": 2}
    return {
        "name": DEMO_NAME,
        "description": "baseline vs bim pre-train -> fine-tune on synthetic ACDC (LV), tiny",
        "seeds": [0, 1],
        "max_concurrent": 2,
        "max_failures": 1,
        "resources": {"cpu": 1, "gpu": 0},
        "base": {
            "data": {
                "dataset": "acdc",
                "root": data_root,
                "preprocess": {"size": [64, 64], "spacing": None, "fit": "resize"},
                "split": {"unit": "scan", "sizes": [14, 3, 3]},
                "target": "lv",
                "batch_size": 4,
                "unlabeled_batch_size": 4,
            },
            "augment": {"crop": 64},
            "model": {"base_width": 8},
            "optim": {"name": "radam", "lr": 5.0e-3, "warmup_factor": 2, "warmup_epochs": 1},
            "train": train,
        },
        "stages": {
            "baseline": {
                "config": {"stage": "finetune", "method": {"name": "baseline"}},
                "grid": {"data.labeled_scans": [1, 2]},
            },
            "pretrain": {
                "config": {
                    "stage": "pretrain",
                    "data": {"target": "all"},
                    "model": {"freeze": ["Conv_1x1"]},
                    "method": {"name": "bim", "k": 10},
                },
            },
            "finetune": {
                "from": "pretrain",
                "checkpoint": "last",
                "config": {
                    "stage": "finetune",
                    "method": {"name": "finetune"},
                    "train": {"init_exclude": ["Conv_1x1"]},
                },
                "grid": {"data.labeled_scans": [1, 2]},
            },
        },
        "tables": [
            {
                "name": "demo",
                "title": "Synthetic ACDC-LV, test 3D Dice (%): baseline vs bim pre-train",
                "metric": "test/dsc",
                "scale": 100,
                "rows": {
                    "Baseline": {"method.name": "baseline"},
                    "bim (pre-train) + fine-tune": {"method.name": "finetune"},
                },
                "columns": [
                    {
                        "label": "ACDC-LV (synthetic)",
                        "by": "data.labeled_scans",
                        "values": [1, 2],
                        "labels": {"1": "1 scan", "2": "2 scans"},
                        "mean": True,
                    }
                ],
            }
        ],
    }


class DemoIncomplete(RuntimeError):
    """Some demo trials did not finish; ``table`` holds what the finished ones give (or "")."""

    def __init__(self, message: str, table: str, ui: str) -> None:
        super().__init__(message)
        self.table = table
        self.ui = ui


def run_demo(
    workdir: str | Path = "segssl-demo",
    *,
    num_cpus: int | None = None,
    live: bool = True,
    console: Any = None,
    epochs: int = 10,
    iters: int = 16,
) -> tuple[str, str]:
    """Run the demo in ``workdir``; return ``(table_markdown, mlflow_ui_command)``.

    Raises:
        SpecError, TrackingError, DataError: as ``segssl sweep`` and ``segssl data synth``.
        DemoIncomplete: some trials failed (the table of the finished ones is attached).
    """
    from rich.console import Console

    from segssl.data import synthesize
    from segssl.orchestrate.mlflow_ui import ui_command
    from segssl.orchestrate.runner import run_sweep
    from segssl.orchestrate.spec import parse_sweep
    from segssl.report import ReportError, render_tables

    console = console or Console(stderr=True)
    wd = Path(workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    data = wd / "data" / "acdc"
    if not (data / "training").is_dir():
        console.print(f"synthesising 10 ACDC phantom patients (20 scans, 64 px) in {data}")
        synthesize("acdc", data, scans=10, size=64, seed=0)
    spec = parse_sweep(demo_spec(str(data), epochs=epochs, iters=iters), source="segssl demo")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    storage = wd / "segssl-runs" / spec.name
    outcome = run_sweep(
        spec,
        source="segssl demo",
        storage=storage,
        tracking_uri=f"sqlite:///{storage / 'mlflow.db'}",
        num_cpus=num_cpus or min(2, os.cpu_count() or 1),
        console=console,
        live=live,
        root=wd,
        ray_init_kwargs={"log_to_driver": False},
    )
    report = wd / "report"
    report.mkdir(exist_ok=True)
    ui = ui_command(outcome.tracking_uri, outcome.experiment_id)
    try:
        table = render_tables(spec, outcome.tracking_uri, "md", curves_dir=report)
    except ReportError:
        if not outcome.failed:
            raise
        table = ""  # no finished run to tabulate: the failure below says why
    if table:
        (report / "demo.md").write_text(table)
        console.print(f"table and learning curves (val Dice vs epoch) in {report}", highlight=False)
    if outcome.failed:
        raise DemoIncomplete(
            f"{outcome.failed} demo trial(s) did not finish (their MLflow runs say why); "
            "rerun `segssl demo` to retry them",
            table,
            ui,
        )
    return table, ui
