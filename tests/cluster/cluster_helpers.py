"""Helpers of the cluster tests (a module with a unique name: ``conftest`` is ambiguous across
test folders): the running stack, tiny sweep files, MLflow and Ray job queries."""

from __future__ import annotations

import itertools
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import loopback_stack as stack
import yaml

ADMIN = "admin"
PG_PASSWORD = "pg-" + secrets.token_hex(8)


@dataclass
class Stack:
    """The running services and what a client needs to use them."""

    base: Path
    pg: stack.Postgres
    mlflow: stack.MlflowServer
    ray: stack.RayCluster
    password: str
    data_root: Path

    @property
    def creds_env(self) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_URI": self.mlflow.uri,
            "MLFLOW_TRACKING_USERNAME": ADMIN,
            "MLFLOW_TRACKING_PASSWORD": self.password,
        }

    def client_env(self) -> dict[str, str]:
        """The submitter's environment: credentials in env, nothing of Ray's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDR"))}
        return {**env, **self.creds_env}

    def segssl(self, *args: str, timeout: float = 600, cwd: Path | None = None) -> Any:
        """``segssl ARGS`` in a subprocess with the submitter's environment."""
        return subprocess.run(
            [sys.executable, "-m", "segssl.cli", *args],
            env=self.client_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or self.base,
        )


def sweep_yaml(
    st: Stack,
    name: str,
    *,
    labeled: tuple[int, ...] = (1, 2),
    seeds: tuple[int, ...] = (0, 1),
    epochs: int = 1,
    max_failures: int = 2,
    grid: dict[str, list[Any]] | None = None,
) -> Path:
    """A tiny real sweep (baseline, 32 px, width 4, 2 iterations an epoch) with one table,
    its storage on the stack's shared directory; 1 CPU a trial, so two run at once, one on each
    node.

    ``grid`` adds axes to the stage's grid, outermost: the planner orders trials by grid
    combination, then seed, and Tune launches them in that order, so every trial of the first
    value of ``grid``'s first key starts before any of the second value's. The table gets one
    row per ``grid`` combination, so no cell holds two configurations of one seed.
    """
    extra = dict(grid or {})
    rows: dict[str, dict[str, Any]] = {"Baseline": {"method.name": "baseline"}}
    if extra:
        rows = {
            "Baseline " + " ".join(f"{k}={v}" for k, v in zip(extra, combo, strict=True)): {
                "method.name": "baseline",
                **dict(zip(extra, combo, strict=True)),
            }
            for combo in itertools.product(*extra.values())
        }
    raw = {
        "name": name,
        "seeds": list(seeds),
        "max_concurrent": 2,
        "max_failures": max_failures,
        "resources": {"cpu": 1, "gpu": 0},
        "storage": str(st.base / "storage" / name),
        "base": {
            "data": {
                "dataset": "acdc",
                "root": str(st.data_root),
                "preprocess": {"size": [32, 32], "spacing": None, "fit": "resize"},
                "split": {"unit": "scan", "sizes": [8, 2, 2]},
                "target": "lv",
                "batch_size": 2,
                "unlabeled_batch_size": 2,
            },
            "augment": {"crop": 32},
            "model": {"base_width": 4},
            "optim": {"lr": 0.001, "warmup_factor": 2, "warmup_epochs": 1},
            "train": {"epochs": epochs, "iters_per_epoch": 2, "progress": False, "pictures": 0},
        },
        "stages": {
            "baseline": {
                "config": {"stage": "finetune", "method": {"name": "baseline"}},
                "grid": {**extra, "data.labeled_scans": list(labeled)},
            }
        },
        "tables": [
            {
                "name": name,
                "title": "tiny cluster sweep",
                "metric": "test/dsc",
                "rows": rows,
                "columns": [{"label": "ACDC-LV", "by": "data.labeled_scans"}],
            }
        ],
    }
    path = st.base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def mlflow_client(st: Stack) -> Any:
    """An MlflowClient with the admin credentials (set in this process for the client only)."""
    os.environ["MLFLOW_TRACKING_USERNAME"] = ADMIN
    os.environ["MLFLOW_TRACKING_PASSWORD"] = st.password
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=st.mlflow.uri)


def trial_runs(st: Stack, name: str) -> list[Any]:
    client = mlflow_client(st)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], "tags.`segssl.kind` = 'trial'", max_results=500)
    return list(runs)


def wait_runs(
    st: Stack, name: str, pred: Any, timeout: float, what: str, every: float = 2.0
) -> list[Any]:
    """Poll the sweep's trial runs every ``every`` seconds until ``pred(runs)``."""
    return stack.wait_for(
        lambda: (lambda r: r if pred(r) else None)(trial_runs(st, name)), timeout, what, every
    )


def job_client(st: Stack) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(st.ray.job_address)


def finished_once_per_key(runs: list[Any], n: int) -> dict[str, Any]:
    """Assert exactly one FINISHED trial run per trial key and ``n`` keys; return them."""
    by_key: dict[str, list[Any]] = {}
    for r in runs:
        if r.info.status == "FINISHED":
            by_key.setdefault(r.data.tags["segssl.trial_key"], []).append(r)
    assert len(by_key) == n, {k: len(v) for k, v in by_key.items()}
    dup = {k: len(v) for k, v in by_key.items() if len(v) != 1}
    assert not dup, f"trial keys with more than one FINISHED run: {dup}"
    return {k: v[0] for k, v in by_key.items()}


def elapsed(t0: float) -> str:
    return f"{time.time() - t0:.0f} s"
