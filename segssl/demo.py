"""``segssl demo``: the main job on embedded defaults, from nothing to a table.

1. synthesise a small ACDC phantom archive (the real on-disk layout) in ``<workdir>/data/acdc``;
2. run a small real sweep (:func:`demo_spec`; the same file ships as
   ``experiments/sweeps/demo.yaml``) on a local Ray instance, with MLflow on SQLite in
   ``<workdir>/segssl-runs/demo/mlflow.db``: the baseline (labeled scans only) against bim
   pre-training then fine-tuning at 1 and 4 labeled scans, full supervision as the upper bound,
   3 seeds, a tiny U-Net, 10 x 50 iterations, CE + Dice;
3. print the table (mean +- std over the 3 seeds, n per cell, the paired test against the
   baseline, Holm-corrected, with the probability of improvement; also written with the learning
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


PHANTOM_PATIENTS = 20  # 40 scans: 24 train / 4 val / 12 test (split by patient)


def demo_spec(
    data_root: str = "data/acdc",
    epochs: int = 10,
    iters: int = 50,
    seeds: int = 3,
) -> dict[str, Any]:
    """The demo sweep as a plain mapping (``experiments/sweeps/demo.yaml`` holds the same).

    The recipe converges on the phantoms (10 x 50 iterations leave RAdam's own rectification
    behind; CE + Dice suits LV's ~1 % of the pixels) and reads enough seeds and test scans that
    one scan or one seed does not decide a cell: baseline at 1 and 4 labeled scans, full
    supervision as the upper bound, bim pre-training then fine-tuning at 1 and 4 scans, a paired
    test against the baseline with the probability of improvement.

    Args:
        data_root: the synthetic ACDC archive (relative paths resolve against the workdir).
        epochs: epochs of every stage.
        iters: iterations per epoch.
        seeds: seeds 0..seeds-1 (3 at least for the paired statistics to mean something).
    """
    train = {"epochs": epochs, "iters_per_epoch": iters, "progress": False, "pictures": 2}
    supervised = {"name": "baseline", "w_dice": 1.0}
    scans = [1, 4]
    return {
        "name": DEMO_NAME,
        "description": "baseline vs bim pre-train -> fine-tune on synthetic ACDC (LV), tiny",
        "seeds": list(range(seeds)),
        "max_concurrent": 2,
        "max_failures": 1,
        "resources": {"cpu": 1, "gpu": 0},
        "base": {
            "data": {
                "dataset": "acdc",
                "root": data_root,
                "preprocess": {"size": [64, 64], "spacing": None, "fit": "resize"},
                "split": {"unit": "subject", "sizes": [12, 2, 6]},
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
                "config": {"stage": "finetune", "method": supervised},
                "grid": {"data.labeled_scans": list(scans)},
            },
            "full": {"config": {"stage": "finetune", "method": {**supervised, "name": "full"}}},
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
                    "method": {**supervised, "name": "finetune"},
                    "train": {"init_exclude": ["Conv_1x1"]},
                },
                "grid": {"data.labeled_scans": list(scans)},
            },
        },
        "profiles": {
            "paper": {},
            "smoke": {"phantoms": {"dataset": "acdc", "scans": PHANTOM_PATIENTS, "size": 64}},
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
                    "Full supervision": {"method.name": "full", "data.labeled_scans": "100%"},
                },
                "rank_exclude": ["Full supervision"],
                "columns": [
                    {
                        "label": "ACDC-LV (synthetic)",
                        "by": "data.labeled_scans",
                        "values": list(scans),
                        "labels": {"1": "1 scan", "4": "4 scans"},
                    }
                ],
                "paired_test": {"reference": "Baseline"},
                "stats": {"prob_improvement": True},
            }
        ],
    }


def _reading(spec: Any, tracking_uri: str) -> str:
    """The honest one-line reading of the demo table (bim against the baseline)."""
    from segssl.report import build_tables
    from segssl.report.reading import paired_reading

    (_, agg), *_ = build_tables(spec.name, list(spec.tables), tracking_uri)
    return paired_reading(agg, "bim (pre-train) + fine-tune", "Baseline")


def table_command(tracking_uri: str) -> str | None:
    """The ``segssl table`` command that prints the demo's table again from the current
    directory (the shipped ``experiments/sweeps/demo.yaml`` with the demo's own store), or None
    when the sweep file is not beside the installed package."""
    sweep = Path(__file__).resolve().parents[1] / "experiments" / "sweeps" / "demo.yaml"
    if not sweep.is_file():
        return None
    rel = Path(os.path.relpath(sweep))
    shown = rel if not str(rel).startswith("..") else sweep
    return f"segssl table {shown} --tracking-uri {tracking_uri}"


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
    iters: int = 50,
    seeds: int = 3,
    ray_init_kwargs: dict[str, Any] | None = None,
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
        n = PHANTOM_PATIENTS
        console.print(f"synthesising {n} ACDC phantom patients ({2 * n} scans, 64 px) in {data}")
        synthesize("acdc", data, scans=n, size=64, seed=0)
    raw = demo_spec(str(data), epochs=epochs, iters=iters, seeds=seeds)
    spec = parse_sweep(raw, source="segssl demo")
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
        ray_init_kwargs=ray_init_kwargs or {"log_to_driver": False},
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
    if table and not outcome.failed:  # the reading needs every cell
        table += "\n" + _reading(spec, outcome.tracking_uri) + "\n"
    if table:
        (report / "demo.md").write_text(table)
        console.print(f"table and learning curves (val Dice vs epoch) in {report}", highlight=False)
        again = table_command(outcome.tracking_uri)
        if again:
            console.print(f"the table again, from this directory: {again}", highlight=False)
    if outcome.failed:
        raise DemoIncomplete(
            f"{outcome.failed} demo trial(s) did not finish (their MLflow runs say why); "
            "rerun `segssl demo` to retry them",
            table,
            ui,
        )
    return table, ui
