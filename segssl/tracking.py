"""MLflow adapter for single runs (``segssl train --tracking-uri``).

Turns the engine's ``report(metrics, step)`` callable into MLflow logging of the DESIGN.md record:
tags (``segssl.stage``, ``segssl.trial_key``, ``segssl.parent_key``, ``segssl.git_sha``,
``segssl.data_fingerprint``, ``segssl.split_fingerprint``), the flattened resolved config as
params, per-epoch and final metrics, the resolved config and ``result.json`` as artifacts.

Only the CLI and orchestration import this module (the engine never imports mlflow).
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segssl.config import RunConfig, config_hash, flatten

__all__ = ["MlflowRunReporter", "git_sha", "parent_key"]

_PARAMS_PER_CALL = 100
_METRICS_PER_CALL = 1000


def git_sha() -> str:
    """The current commit of the segssl checkout, or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def parent_key(cfg: RunConfig) -> str | None:
    """Trial key of the run whose checkpoint ``train.init_from`` points at (if recorded)."""
    if not cfg.train.init_from:
        return None
    from segssl.engine import load_checkpoint

    return load_checkpoint(cfg.train.init_from).get("config_hash")


class MlflowRunReporter:
    """One MLflow run; call the instance as the engine's ``report``; then :meth:`finish`.

    Args:
        tracking_uri: MLflow tracking URI (``sqlite:///...``, ``file:...``, ``http://...``).
        experiment: experiment name (created when missing).
        cfg: the resolved run config (params, stage, trial key).
        run_name: readable run name.
    """

    def __init__(self, tracking_uri: str, experiment: str, cfg: RunConfig, run_name: str) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        tags = {
            "segssl.stage": cfg.stage,
            "segssl.trial_key": config_hash(cfg),
            "segssl.git_sha": git_sha(),
            "mlflow.runName": run_name,
        }
        pkey = parent_key(cfg)
        if pkey:
            tags["segssl.parent_key"] = pkey
        self.run_id = self.client.create_run(exp_id, tags=tags, run_name=run_name).info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(cfg).items())]
        for i in range(0, len(params), _PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[i : i + _PARAMS_PER_CALL])

    def __call__(self, metrics: Mapping[str, float], step: int) -> None:
        """Log ``metrics`` at ``step`` (non-finite values are logged as NaN)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v) if math.isfinite(float(v)) else float("nan"), now, int(step))
            for k, v in metrics.items()
        ]
        for i in range(0, len(items), _METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=items[i : i + _METRICS_PER_CALL])

    def finish(self, result: Mapping[str, Any] | None, workdir: Path, status: str) -> None:
        """Set the fingerprint tags, log artifacts and terminate the run with ``status``."""
        if result:
            for key in ("data_fingerprint", "split_fingerprint"):
                if result.get(key):
                    self.client.set_tag(self.run_id, f"segssl.{key}", str(result[key]))
            for name in ("config.yaml", "result.json"):
                if (workdir / name).exists():
                    self.client.log_artifact(self.run_id, str(workdir / name))
            for pic in result.get("pictures") or []:
                self.client.log_artifact(self.run_id, pic, artifact_path="pictures")
        self.client.set_terminated(self.run_id, status=status)
