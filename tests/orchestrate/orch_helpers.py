"""Helpers of the orchestration tests (a module with a unique name so that Ray workers can import
it through ``PYTHONPATH``): a fast stand-in for ``engine.train`` with the same contract.

``quick_train`` writes what the engine writes (config.yaml, split.json, result.json,
checkpoints/last.pt and best.pt), reports per-epoch ``val/dsc`` and the final metrics, resumes from
``checkpoints/last.pt`` (replaying its epochs to ``report.replay``), and can fail once (after
writing ``last.pt``) to exercise retries. Its val/test Dice is a known function of the config so
tests can check what reached MLflow.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def expected_dsc(cfg: Any) -> float:
    """The test Dice quick_train reports: depends on lr, labeled scans and seed only."""
    n = cfg.data.labeled_scans if isinstance(cfg.data.labeled_scans, int) else 1
    return round(0.5 + 0.01 * n + 0.001 * cfg.seed + min(cfg.optim.lr, 0.1), 6)


def _save_on_a_full_disk(path: Path) -> None:
    """``save_checkpoint`` as the engine calls it, on a disk that fills up mid-write."""
    from segssl.engine import checkpoint

    def full(tmp: Path, data: bytes) -> None:
        with open(tmp, "xb") as fh:
            fh.write(bytes(data)[:16])
        raise OSError(28, "No space left on device")

    real = checkpoint._write_bytes
    checkpoint._write_bytes = full
    try:
        checkpoint.save_checkpoint(path, {"epoch": 1})
    finally:
        checkpoint._write_bytes = real


def quick_train(
    cfg: Any,
    report: Callable[[dict[str, float], int], None] | None = None,
    *,
    workdir: str | Path,
    resume: bool = True,
) -> dict:
    """Engine stand-in: ``cfg.train.epochs`` epochs of ``SEGSSL_TEST_EPOCH_S`` seconds each."""
    wd = Path(workdir)
    (wd / "checkpoints").mkdir(parents=True, exist_ok=True)
    (wd / "config.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))
    (wd / "split.json").write_text(json.dumps({"fingerprint": "split-fp", "train": ["a"]}))
    last = wd / "checkpoints" / "last.pt"
    start, history = 0, []
    if resume and last.is_file():
        state = json.loads(last.read_text())
        start, history = state["epoch"], state.get("history", [])
    replay = getattr(report, "replay", None)
    for step, metrics in enumerate(history, start=1) if replay is not None else ():
        replay(metrics, step)  # as the engine: the checkpoint's epochs, the sink keeps new ones
    init = cfg.train.init_from
    if init is not None and not Path(init).is_file():
        raise FileNotFoundError(f"init_from {init} does not exist")
    if cfg.train.device == "bad-data":  # a deterministic input error: retrying cannot help
        from segssl.data.errors import DataError

        raise DataError("scan patient001 is unreadable")
    if cfg.train.device == "disk-full":  # the disk fills up while the engine saves last.pt
        _save_on_a_full_disk(wd / "checkpoints" / "last.pt")
    fail_marker = wd / "failed_once"
    epoch_s = float(os.environ.get("SEGSSL_TEST_EPOCH_S", "0"))
    dsc = expected_dsc(cfg)
    runs_file = wd / "epochs_run.json"  # every epoch any attempt ran, in order
    for epoch in range(start + 1, cfg.train.epochs + 1):
        time.sleep(epoch_s)
        history.append({"train/loss": 1.0 / epoch, "val/dsc": dsc - 0.01 / epoch})
        last.write_text(json.dumps({"epoch": epoch, "init_from": init, "history": history}))
        done = json.loads(runs_file.read_text()) if runs_file.is_file() else []
        runs_file.write_text(json.dumps([*done, epoch]))
        if report is not None:
            report(history[-1], epoch)
        if cfg.train.device == "fail-once" and not fail_marker.exists() and epoch == 1:
            fail_marker.write_text("x")
            raise RuntimeError("injected failure after epoch 1")
    (wd / "checkpoints" / "best.pt").write_text(json.dumps({"epoch": cfg.train.epochs}))
    final = {  # the engine's final metrics: the best validation epoch's val Dice and the test
        "best_epoch": float(cfg.train.epochs),
        "best_val/dsc": dsc - 0.01 / cfg.train.epochs,
        "test/dsc": dsc,
        "test/dsc/lv": dsc,
        "cost/wall_s": 0.01,
    }
    if report is not None:
        report(final, cfg.train.epochs)
    result = {
        "metrics": final,
        "best_epoch": cfg.train.epochs,
        "init": init,
        "data_fingerprint": "data-fp",
        "split_fingerprint": "split-fp",
    }
    (wd / "result.json").write_text(json.dumps(result))
    return result


class FakeJobClient:
    """In-memory stand-in for ``ray.job_submission.JobSubmissionClient``: a job table keyed by
    submission id that refuses a duplicate id as Ray's job server does, and keeps a copy of each
    submitted working directory (the real client uploads it during ``submit_job``)."""

    def __init__(self) -> None:
        self.jobs: dict[str, Any] = {}
        self.submitted: list[dict[str, Any]] = []
        self.files: dict[str, dict[str, str]] = {}
        self.logs: dict[str, list[str]] = {}
        self.stopped: list[str] = []

    def _job(self, sub_id: str) -> Any:
        if sub_id not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {sub_id} does not exist.")
        return self.jobs[sub_id]

    def submit_job(self, *, entrypoint: str, submission_id: str, **kw: Any) -> str:
        from types import SimpleNamespace

        if submission_id in self.jobs:
            raise RuntimeError(
                f"Request failed with status code 400: Job with submission_id {submission_id} "
                "already exists. Please use a different submission_id."
            )
        self.submitted.append({"entrypoint": entrypoint, "submission_id": submission_id, **kw})
        wd = Path(kw["runtime_env"]["working_dir"])
        self.files[submission_id] = {
            p.relative_to(wd).as_posix(): p.read_text() for p in wd.rglob("*") if p.is_file()
        }
        self.jobs[submission_id] = SimpleNamespace(
            submission_id=submission_id,
            status="PENDING",
            message="Job has not started yet.",
            metadata=kw.get("metadata") or {},
        )
        return submission_id

    def list_jobs(self) -> list[Any]:
        return list(self.jobs.values())

    def get_job_info(self, sub_id: str) -> Any:
        return self._job(sub_id)

    def get_job_logs(self, sub_id: str) -> str:
        return "".join(self.logs.get(sub_id, []))

    async def tail_job_logs(self, sub_id: str) -> Any:
        for chunk in self.logs.get(sub_id, []):
            yield chunk

    def stop_job(self, sub_id: str) -> bool:
        job = self._job(sub_id)
        self.stopped.append(sub_id)
        running = job.status in ("PENDING", "RUNNING")
        if running:
            job.status = "STOPPED"
        return running
