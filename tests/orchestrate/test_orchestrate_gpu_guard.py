"""GPU packing guard, on CPU by construction: fake torch.cuda and Ray runtime contexts record the
calls; a simulated OOM goes through the real trainable into MLflow."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from torch import OutOfMemoryError  # CUDA's OOM type; constructible on a CPU build

from segssl.orchestrate import gpu_guard
from segssl.orchestrate.gpu_guard import GpuGuard, GpuMemoryError

GIB = 2**30


class FakeCuda:
    """torch.cuda with ``n`` visible devices of ``total`` bytes; records the fraction calls."""

    def __init__(self, n: int = 1, total: int = 80 * GIB, available: bool = True) -> None:
        self.n, self.total, self.available = n, total, available
        self.calls: list[tuple[float, int]] = []

    def is_available(self) -> bool:
        return self.available

    def device_count(self) -> int:
        return self.n

    def set_per_process_memory_fraction(self, fraction: float, device: int) -> None:
        self.calls.append((fraction, device))

    def get_device_properties(self, device: int) -> Any:
        return SimpleNamespace(total_memory=self.total)


class FakeRayContext:
    def __init__(self, resources: dict[str, float], gpus: list[str] | None = None) -> None:
        self.resources, self.gpus = resources, gpus or []

    def get_assigned_resources(self) -> dict[str, float]:
        return self.resources

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        return {"GPU": self.gpus}

    def get_node_id(self) -> str:
        return "node-abc"


TORCH_OOM = (
    "CUDA out of memory. Tried to allocate 3.50 GiB. GPU 0 has a total capacity of 79.10 GiB "
    "of which 1.20 GiB is free. Of the allocated memory 18.00 GiB is allocated by PyTorch"
)


@pytest.mark.parametrize("share", [0.25, 0.5])
def test_fraction_set_at_the_ray_share(share: float) -> None:
    cuda = FakeCuda()
    guard = gpu_guard.guard_from_ray(
        FakeRayContext({"CPU": 1.0, "GPU": share}, ["0"]), SimpleNamespace(cuda=cuda)
    )
    assert cuda.calls == [(share, 0)]
    assert guard.fraction == share
    assert guard.cap_bytes == int(80 * GIB * share)


@pytest.mark.parametrize(
    ("share", "available"), [(0.0, True), (1.0, True), (2.0, True), (0.25, False)]
)
def test_no_cap_for_cpu_whole_gpu_or_no_cuda(share: float, available: bool) -> None:
    cuda = FakeCuda(n=2, available=available)
    guard = gpu_guard.apply_memory_guard(share, SimpleNamespace(cuda=cuda))
    assert cuda.calls == []
    assert guard.fraction is None and guard.cap_bytes is None


def test_placement_tags_name_node_gpu_and_share() -> None:
    ctx = FakeRayContext({"GPU": 0.25}, ["3"])
    guard = GpuGuard(share=0.25, fraction=0.25, devices=(0,), cap_bytes=20 * GIB, total_bytes=0)
    tags = gpu_guard.placement_tags(guard, ctx)
    assert tags["segssl.node_id"] == "node-abc"
    assert tags["segssl.gpu_ids"] == "3"
    assert tags["segssl.gpu_share"] == "0.25"
    assert tags["segssl.gpu_mem_cap_bytes"] == str(20 * GIB)


def test_oom_mapped_to_a_report_naming_trial_bytes_and_fraction() -> None:
    guard = GpuGuard(0.25, 0.25, (0,), cap_bytes=20 * GIB, total_bytes=80 * GIB)
    exc = OutOfMemoryError(TORCH_OOM)
    assert gpu_guard.is_oom(exc) and not gpu_guard.is_oom(RuntimeError(TORCH_OOM))
    assert gpu_guard.requested_bytes(TORCH_OOM) == int(3.5 * GIB)
    err = gpu_guard.oom_report(exc, "k123", guard)
    msg = str(err)
    assert isinstance(err, GpuMemoryError)
    assert "trial k123 ran out of GPU memory" in msg
    assert "3.50 GiB" in msg  # what it asked for
    assert "cap of 0.25 of the GPU (20.00 GiB of 80.00 GiB" in msg
    assert "resources.gpu=0.25" in msg


def test_only_torchs_oom_is_a_gpu_oom() -> None:
    """Ray's memory monitor raises its own ``OutOfMemoryError`` (host RAM, a killed worker):
    reporting it as "ran out of GPU memory" and refusing the retry would mislead."""
    import ray.exceptions

    assert gpu_guard.is_oom(OutOfMemoryError(TORCH_OOM))
    assert not gpu_guard.is_oom(
        ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.")
    )

    class OutOfMemoryErrorElsewhere(RuntimeError):
        pass

    OutOfMemoryErrorElsewhere.__name__ = "OutOfMemoryError"
    assert not gpu_guard.is_oom(OutOfMemoryErrorElsewhere(TORCH_OOM))


def test_requested_bytes_units() -> None:
    assert gpu_guard.requested_bytes("Tried to allocate 20.00 MiB") == 20 * 2**20
    assert gpu_guard.requested_bytes("Tried to allocate 512 bytes") == 512
    assert gpu_guard.requested_bytes("no size here") is None


def test_trainable_reports_oom_as_a_failed_trial_without_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real ``run_trial`` with Ray's pieces faked: the memory cap is set from the assigned
    share before training, placement tags land on the run, an OOM ends the run FAILED with the
    clear report (not retryable) and is not re-raised to Tune."""
    from ray import tune

    from segssl.orchestrate import trainable
    from segssl.orchestrate.tracking import _client, ensure_experiment

    cuda = FakeCuda(total=40 * GIB)
    ctx_ray = FakeRayContext({"CPU": 1.0, "GPU": 0.25}, ["1"])
    real_guard, real_tags = gpu_guard.guard_from_ray, gpu_guard.placement_tags
    fake_torch = SimpleNamespace(cuda=cuda)
    monkeypatch.setattr(gpu_guard, "guard_from_ray", lambda: real_guard(ctx_ray, fake_torch))
    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", lambda m, checkpoint=None: reports.append(dict(m)))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(gpu_guard, "placement_tags", lambda g: real_tags(g, ctx_ray))
    monkeypatch.setattr(trainable, "_release_cuda_cache", lambda: None)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = ensure_experiment(uri, "oom", "h")
    task = trainable.TrialTask(
        key="kOOM",
        stage="s",
        name="oom trial",
        config=None,  # type: ignore[arg-type]
        workdir=str(tmp_path / "trials" / "kOOM"),
        tags={"segssl.trial_key": "kOOM", "segssl.stage": "s"},
        params={"seed": 0},
    )
    ctx = trainable.SweepContext("oom", uri, exp, None, str(tmp_path), "sha")

    def train(cfg: Any, report: Any, *, workdir: Path, resume: bool) -> dict:
        assert cuda.calls == [(0.25, 0)], "the cap must be set before training starts"
        raise OutOfMemoryError(TORCH_OOM)

    trainable.run_trial({"trial_key": "kOOM"}, ctx=ctx, tasks={"kOOM": task}, train_fn=train)
    run = _client(uri).search_runs([exp])[0]
    assert run.info.status == "FAILED"
    reason = run.data.tags["segssl.end_reason"]
    assert "trial kOOM ran out of GPU memory" in reason and "3.50 GiB" in reason
    assert "cap of 0.25 of the GPU (10.00 GiB of 40.00 GiB" in reason
    assert run.data.tags["segssl.retryable"] == "false"
    assert run.data.tags["segssl.gpu_share"] == "0.25"
    assert run.data.tags["segssl.gpu_ids"] == "1"
    assert reports and reports[-1].get("segssl/failed") == 1.0
