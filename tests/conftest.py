"""Shared test set-up: small CPU-only settings, Ray without token auth, no network; a tiny
synthetic ACDC archive (real layout, read by the real data layer) with tiny run configs; and a
guard that fails any test leaving files in the repository root (tests write under tmp_path)."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from segssl.config import RunConfig, parse_run_config  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """No test may leave files in the checkout (see tests/repo_guard.py)."""
    from repo_guard import RepoGuard

    config.pluginmanager.register(RepoGuard(REPO), "segssl-repo-guard")


@pytest.fixture(scope="session")
def acdc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from segssl.data import synthesize

    return synthesize("acdc", tmp_path_factory.mktemp("acdc"), scans=6, size=48, seed=0)


def tiny_raw(root: Path, name: str, stage: str, **sections: Any) -> dict:
    """A tiny CPU run config (32 px, base width 4) on the synthetic archive."""
    raw: dict[str, Any] = {
        "seed": 0,
        "stage": stage,
        "data": {
            "root": str(root),
            "preprocess": {"size": [32, 32], "spacing": None, "fit": "resize"},
            "split": {"unit": "scan", "sizes": [8, 2, 2]},
            "batch_size": 3,
            "unlabeled_batch_size": 3,
        },
        "augment": {"crop": 32},
        "model": {"base_width": 4},
        "method": {"name": name},
        "optim": {"lr": 1e-3, "warmup_factor": 2, "warmup_epochs": 1},
        "train": {"epochs": 2, "iters_per_epoch": 2, "progress": False, "pictures": 2},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


@pytest.fixture(scope="session")
def tiny(acdc_root: Path):
    """``tiny(method, stage, **sections) -> RunConfig`` on the synthetic archive."""

    def make(name: str, stage: str, **sections: Any) -> RunConfig:
        return parse_run_config(tiny_raw(acdc_root, name, stage, **sections))

    return make


@pytest.fixture(scope="session")
def tiny_yaml(acdc_root: Path):
    """``tiny_yaml(method, stage, **sections) -> dict`` (unvalidated, for YAML files)."""

    def make(name: str, stage: str, **sections: Any) -> dict:
        return tiny_raw(acdc_root, name, stage, **sections)

    return make


# run-config sections a method needs beyond the tiny defaults: UA-MT's Monte-Carlo dropout
# needs dropout layers in the model
METHOD_SECTIONS: dict[str, dict[str, Any]] = {"uamt": {"model": {"dropout": 0.1}}}


@pytest.fixture(scope="session")
def tiny_method(tiny):
    """``tiny_method(name, **sections) -> RunConfig`` for any registered method: the stage its
    batches imply and every method setting measured in epochs (ramp-up lengths, ``*_epochs``)
    set to 1 so that it fits a tiny run (derived from the method's config, not listed), plus
    the sections it needs (``METHOD_SECTIONS``)."""
    from segssl.methods import get_method

    stages = {(True, False): "finetune", (False, True): "pretrain", (True, True): "semi"}

    def make(name: str, **sections: Any) -> RunConfig:
        cls = get_method(name)
        fit = {k: 1 for k in cls.Config.model_fields if k.endswith("_epochs")}
        sections["method"] = {"name": name, **fit, **sections.get("method", {})}
        for key, value in METHOD_SECTIONS.get(name, {}).items():
            sections[key] = {**value, **sections.get(key, {})}
        return tiny(name, stages[(cls.uses_labeled, cls.uses_unlabeled)], **sections)

    return make


@pytest.fixture(scope="session")
def engine_optimizers():
    """``engine_optimizers(cfg, method) -> main optimiser``, built as the engine builds them;
    the optimisers a method owns (``Method.optimizers``) are stepped by its ``optimizer_step``."""
    from segssl.engine import build_optimizer
    from segssl.engine.loop import optimizer_params

    def make(cfg: RunConfig, method: torch.nn.Module) -> torch.optim.Optimizer:
        groups = optimizer_params(cfg, method)
        opts = {k: build_optimizer(s, named) for k, (s, named) in groups.items()}

        def own_step(key: str, loss: torch.Tensor) -> None:
            opts[key].zero_grad(set_to_none=True)
            loss.backward()
            opts[key].step()

        method._stepper = own_step
        return opts["main"]

    return make
