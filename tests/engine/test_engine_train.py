"""End-to-end engine runs on a synthetic ACDC archive (tiny CPU settings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from segssl.config import MethodConfig
from segssl.engine import CheckpointError, EngineConfigError, NonFiniteLossError, train
from segssl.engine.checkpoint import load_checkpoint
from segssl.methods import REGISTRY
from segssl.methods.base import Method
from segssl.methods.baseline import Baseline


def _equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class _Stop(Exception):
    pass


@pytest.mark.parametrize(("name", "stage"), [("bim", "pretrain"), ("baseline", "finetune")])
def test_resume_gives_identical_weights(tiny, tmp_path: Path, name: str, stage: str) -> None:
    cfg = tiny(name, stage, train={"epochs": 3, "iters_per_epoch": 2})
    full = train(cfg, workdir=tmp_path / "full")

    def interrupt(metrics: dict, step: int) -> None:
        if step == 2 and "best_epoch" not in metrics:
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg, interrupt, workdir=tmp_path / "cut")
    assert load_checkpoint(tmp_path / "cut/checkpoints/last.pt")["epoch"] == 2
    seen: list[int] = []
    resumed = train(cfg, lambda m, s: seen.append(s), workdir=tmp_path / "cut")
    assert seen == [3, 3]  # epoch 3, then the final metrics
    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "cut/checkpoints/last.pt")
    _equal_states(a["model"], b["model"])
    _equal_states(a["method"], b["method"])
    drop = {"time/epoch_s"}
    hist = [
        [{k: v for k, v in h.items() if k not in drop} for h in r["history"]]
        for r in (full, resumed)
    ]
    assert hist[0] == hist[1]
    assert full["metrics"].get("test/dsc") == resumed["metrics"].get("test/dsc")


class _Sink:
    """A report with ``replay``: records what the engine sends it, live or replayed."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.live: list[tuple[int, dict]] = []
        self.replayed: list[tuple[int, dict]] = []
        self.stop_at = stop_at

    def __call__(self, metrics: dict, step: int) -> None:
        self.live.append((step, dict(metrics)))
        if step == self.stop_at and "best_epoch" not in metrics:
            raise _Stop  # the process dies: epoch ``stop_at`` is saved, its report never arrives

    def replay(self, metrics: dict, step: int) -> None:
        self.replayed.append((step, dict(metrics)))


def test_a_resumed_run_replays_the_epochs_of_its_checkpoint(tiny, tmp_path: Path) -> None:
    """last.pt is written before the epoch is reported: a resumed run hands every epoch it holds
    to ``report.replay`` (the metrics the epoch reported), before any further epoch."""
    cfg = tiny("baseline", "finetune", train={"epochs": 3, "iters_per_epoch": 1})
    first = _Sink(stop_at=2)
    with pytest.raises(_Stop):
        train(cfg, first, workdir=tmp_path)
    assert first.replayed == []  # a fresh run has nothing to replay
    second = _Sink()
    resumed = train(cfg, second, workdir=tmp_path)
    assert second.replayed == first.live  # epochs 1 and 2, as reported (or about to be)
    assert [s for s, _ in second.live] == [3, 3]
    assert second.replayed[1][1] == {
        k: v for k, v in resumed["history"][1].items() if k not in {"epoch", "time/epoch_s"}
    }
    third = _Sink()  # a finished run replays its whole history, then reports the final metrics
    train(cfg, third, workdir=tmp_path)
    assert [s for s, _ in third.replayed] == [1, 2, 3] and [s for s, _ in third.live] == [3]
    assert third.replayed[:2] == first.live and third.replayed[2] == second.live[0]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_continues_the_lr_schedule(tiny, tmp_path: Path, schedule: str) -> None:
    """The lr of every epoch (warm-up to 2e-3, then constant or a cosine) is the same whether
    the run was interrupted or not; a checkpoint of one schedule does not resume another."""
    optim = {"lr": 1e-3, "warmup_factor": 2, "warmup_epochs": 1, "schedule": schedule}
    cfg = tiny("baseline", "finetune", train={"epochs": 3, "iters_per_epoch": 1}, optim=optim)

    def interrupt(metrics: dict, step: int) -> None:
        if step == 2 and "best_epoch" not in metrics:
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg, interrupt, workdir=tmp_path / "cut")
    resumed = train(cfg, workdir=tmp_path / "cut")
    lrs = [h["train/lr"] for h in resumed["history"]]
    peak = 2e-3
    want = [1e-3, peak, peak] if schedule == "constant" else [1e-3, peak, peak * 0.5]
    assert lrs == pytest.approx(want, rel=1e-9)
    other = "cosine" if schedule == "constant" else "constant"
    swapped = tiny("baseline", "finetune", train={"epochs": 3, "iters_per_epoch": 1},
                   optim={**optim, "schedule": other})  # fmt: skip
    with pytest.raises(CheckpointError, match="written by a different config"):
        train(swapped, workdir=tmp_path / "cut")


def test_a_finished_run_is_not_retrained(tiny, tmp_path: Path) -> None:
    cfg = tiny("baseline", "finetune", train={"epochs": 1, "iters_per_epoch": 1})
    first = train(cfg, workdir=tmp_path)
    calls: list[int] = []
    again = train(cfg, lambda m, s: calls.append(s), workdir=tmp_path)
    assert calls == [1]  # only the final report: no epoch was re-run
    assert again["history"] == first["history"]


def test_resume_refuses_another_config(tiny, tmp_path: Path) -> None:
    train(tiny("baseline", "finetune", train={"epochs": 1, "iters_per_epoch": 1}), workdir=tmp_path)
    other = tiny("baseline", "finetune", train={"epochs": 1, "iters_per_epoch": 1}, seed=1)
    with pytest.raises(CheckpointError, match="written by a different config"):
        train(other, workdir=tmp_path)
    train(other, workdir=tmp_path, resume=False)  # explicit restart is fine


def test_result_metrics_and_reports(tiny, tmp_path: Path) -> None:
    cfg = tiny("baseline", "finetune", train={"epochs": 2, "iters_per_epoch": 2})
    reports: list[tuple[int, dict]] = []
    result = train(cfg, lambda m, s: reports.append((s, m)), workdir=tmp_path)
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk["metrics"].keys() == result["metrics"].keys()
    m = result["metrics"]
    for cls in ("RV", "Myo", "LV"):
        for key in ("dsc", "hd95", "asd"):
            assert f"test/{key}/{cls}" in m
        assert 0.0 <= m[f"test/dsc/{cls}"] <= 1.0
    assert m["test/dsc"] == pytest.approx(sum(m[f"test/dsc/{c}"] for c in ("RV", "Myo", "LV")) / 3)
    assert {"best_epoch", "cost/wall_s", "cost/gpu_s", "cost/peak_mem_mb"} <= m.keys()
    assert m["cost/gpu_s"] == 0.0 and m["cost/peak_mem_mb"] > 10 and m["cost/wall_s"] > 0
    assert [s for s, _ in reports] == [1, 2, 2]
    epoch1 = reports[0][1]
    assert {"train/loss", "train/ce", "train/lr", "val/dsc", "val/dsc/LV"} <= epoch1.keys()
    assert epoch1["train/lr"] == pytest.approx(1e-3)  # lr, then x2 after one warm-up epoch
    assert reports[1][1]["train/lr"] == pytest.approx(2e-3)
    best = max(r[1]["val/dsc"] for r in reports[:2])
    assert reports[[r[1]["val/dsc"] for r in reports[:2]].index(best)][0] == m["best_epoch"]
    assert (tmp_path / "config.yaml").read_text().startswith("seed: 0\nstage: finetune")
    assert load_checkpoint(tmp_path / "checkpoints/best.pt")["epoch"] == m["best_epoch"]
    assert result["split_fingerprint"] and result["data_fingerprint"]
    at_best = reports[int(m["best_epoch"]) - 1][1]  # the best epoch's validation metrics
    assert m["best_val/dsc"] == best and m["best_val/dsc/LV"] == at_best["val/dsc/LV"]
    assert {k[len("best_") :] for k in m if k.startswith("best_val/")} == {
        k for k in at_best if k.startswith("val/")
    }


def test_pretrain_then_finetune(tiny, tmp_path: Path) -> None:
    pre = train(
        tiny("bim", "pretrain", train={"epochs": 1, "iters_per_epoch": 2}), workdir=tmp_path / "pre"
    )
    assert "test/dsc" not in pre["metrics"] and pre["best_epoch"] == 1
    pics = {Path(p).name for p in pre["pictures"]}
    assert pics == {"clusters.png", "joint.png"}
    assert all(Path(p).stat().st_size > 1000 for p in pre["pictures"])
    ckpt = pre["checkpoints"]["best"]
    # binary LV task: 2 outputs instead of 4 -> Conv_1x1 differs and must be excluded explicitly
    ft = {"train": {"epochs": 1, "iters_per_epoch": 1, "init_from": ckpt}, "data": {"target": "lv"}}
    with pytest.raises(CheckpointError, match=r"Conv_1x1.weight: model \(2, 4, 1, 1\)"):
        train(tiny("finetune", "finetune", **ft), workdir=tmp_path / "ft0")
    ft["train"]["init_exclude"] = ["Conv_1x1"]
    out = train(tiny("finetune", "finetune", **ft), workdir=tmp_path / "ft")
    assert "Conv1.0.weight" in out["init"]["loaded"]
    assert not any(k.startswith("Conv_1x1") for k in out["init"]["loaded"])
    assert set(k.split("/")[-1] for k in out["metrics"] if k.startswith("test/dsc/")) == {"LV"}


def test_stage_and_init_errors(tiny, tmp_path: Path) -> None:
    with pytest.raises(EngineConfigError, match="stage='pretrain' does not fit method 'baseline'"):
        train(tiny("baseline", "pretrain"), workdir=tmp_path)
    with pytest.raises(EngineConfigError, match="expected stage 'pretrain'"):
        train(tiny("bim", "finetune"), workdir=tmp_path)
    with pytest.raises(EngineConfigError, match="set train.init_from"):
        train(tiny("finetune", "finetune"), workdir=tmp_path)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="not a segssl checkpoint"):
        train(tiny("finetune", "finetune", train={"init_from": str(plain)}), workdir=tmp_path)
    with pytest.raises(EngineConfigError, match="trains from random weights"):
        train(tiny("baseline", "finetune", train={"init_from": str(plain)}), workdir=tmp_path)
    assert not (tmp_path / "checkpoints").exists()  # nothing started


class _NanConfig(MethodConfig):
    name: str = "nan_probe"
    at_step: int = 3


class _NanProbe(Baseline):
    """Baseline whose loss turns NaN at a given step."""

    Config: ClassVar[type[MethodConfig]] = _NanConfig
    init = "optional"
    terms = {"ce": 1.0, "extra": 1.0}

    def training_step(self, labeled, unlabeled, clock):
        ce = torch.nn.functional.cross_entropy(self.model(labeled["image"]), labeled["label"])
        extra = ce * (float("nan") if clock.step == self.cfg.at_step else 0.0)
        return self.output({"ce": ce, "extra": extra})


def test_nan_loss_stops_with_step(tiny, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(REGISTRY, "nan_probe", _NanProbe)
    cfg = tiny("nan_probe", "finetune", train={"epochs": 3, "iters_per_epoch": 2})
    with pytest.raises(NonFiniteLossError) as exc:
        train(cfg, workdir=tmp_path)
    msg = str(exc.value)
    assert "epoch 2, iteration 1 (global step 3)" in msg
    assert "loss=nan" in msg and "extra=nan" in msg and "ce=" in msg
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["epoch"] == 1


class _SemiConfig(MethodConfig):
    name: str = "semi_probe"


class _SemiProbe(Method):
    """Records the batches it receives; CE on labeled + a mean penalty on unlabeled logits."""

    Config: ClassVar[type[MethodConfig]] = _SemiConfig
    uses_labeled = True
    uses_unlabeled = True
    seen: ClassVar[list] = []
    terms = {"ce": 1.0, "unl": 1.0}

    def training_step(self, labeled, unlabeled, clock):
        type(self).seen.append((labeled["label"].shape, "label" in unlabeled))
        ce = torch.nn.functional.cross_entropy(self.model(labeled["image"]), labeled["label"])
        unl = self.model(unlabeled["image"]).softmax(1)[:, 0].mean()
        return self.output({"ce": ce, "unl": unl})


def test_semi_stage_draws_both_batches(tiny, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(REGISTRY, "semi_probe", _SemiProbe)
    _SemiProbe.seen.clear()
    cfg = tiny("semi_probe", "semi", train={"epochs": 1, "iters_per_epoch": 2})
    result = train(cfg, workdir=tmp_path)
    assert _SemiProbe.seen == [(torch.Size([3, 32, 32]), False)] * 2
    assert {"train/ce", "train/unl"} <= result["history"][0].keys()


def test_grad_clipping_bounds_the_update(tiny, tmp_path: Path) -> None:
    """With plain SGD and an active clip c, one step moves the parameters by exactly lr * c
    along -g/|g|: two runs clipped at c and 2c (same seed) end lr * c apart."""

    def params(clip: float | None, where: str) -> dict[str, torch.Tensor]:
        optim = {"name": "sgd", "momentum": 0.0, "weight_decay": 0.0, "lr": 1.0}
        cfg = tiny(
            "baseline",
            "finetune",
            optim={**optim, "warmup_factor": 1, "grad_clip": clip},
            train={"epochs": 1, "iters_per_epoch": 1, "save_best": False},
        )
        train(cfg, workdir=tmp_path / where)
        state = load_checkpoint(tmp_path / where / "checkpoints/last.pt")["model"]
        return {k: v for k, v in state.items() if k.endswith(("weight", "bias"))}

    def dist(a: dict, b: dict) -> float:
        return sum(float((a[k] - b[k]).double().pow(2).sum()) for k in a) ** 0.5

    c1, c2, free = params(1e-3, "c1"), params(2e-3, "c2"), params(None, "free")
    assert dist(c1, c2) == pytest.approx(1.0 * 1e-3, rel=1e-3)
    assert dist(c1, free) > 100 * dist(c1, c2)  # the unclipped step is far larger
