"""Training engine: ``train(cfg, report, workdir=..., resume=...)`` and its pieces.

Never imports ray or mlflow: progress goes to ``report(metrics, step)``, which orchestration adapts.
"""

from segssl.engine.checkpoint import (
    CheckpointError,
    compare_state,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
)
from segssl.engine.loop import NonFiniteLossError, Report, check_run, profile_step, train
from segssl.engine.runtime import EngineConfigError, Runtime, resolve_runtime, seed_everything
from segssl.engine.schedule import build_optimizer, build_scheduler, lr_at

__all__ = [
    "CheckpointError",
    "EngineConfigError",
    "NonFiniteLossError",
    "Report",
    "Runtime",
    "build_optimizer",
    "build_scheduler",
    "check_run",
    "compare_state",
    "load_checkpoint",
    "load_model_weights",
    "lr_at",
    "profile_step",
    "resolve_runtime",
    "save_checkpoint",
    "seed_everything",
    "train",
]
