"""Protocol details of the engine: frozen blocks, fine-tuning initialisation, resume edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import segssl.engine.loop as loop
from segssl.engine import train
from segssl.engine.amp import SCALERS, SyncFreeGradScaler
from segssl.engine.checkpoint import load_checkpoint
from segssl.methods import REGISTRY


class _Stop(Exception):
    pass


def _spy_initial_weights(monkeypatch) -> tuple[dict, list]:
    """Record the freshly built model's state and the tensors handed to the optimiser."""
    init: dict[str, torch.Tensor] = {}
    optimised: list[torch.Tensor] = []
    build_model, build_optimizer = loop.build_model, loop.build_optimizer

    def model_spy(*args, **kwargs):
        model = build_model(*args, **kwargs)
        init.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    def optim_spy(cfg, params, **kwargs):
        params = list(params)
        optimised.extend(p for _, p in params)
        return build_optimizer(cfg, params, **kwargs)

    monkeypatch.setattr(loop, "build_model", model_spy)
    monkeypatch.setattr(loop, "build_optimizer", optim_spy)
    return init, optimised


@pytest.mark.parametrize(
    ("name", "stage", "freeze"),
    [("bim", "pretrain", ["Conv1", "Conv_1x1"]), ("baseline", "finetune", ["Conv1"])],
)
def test_frozen_blocks_stay_bit_identical(tiny, tmp_path: Path, monkeypatch, name, stage, freeze):
    init, optimised = _spy_initial_weights(monkeypatch)
    methods: list = []
    cls = REGISTRY[name]
    step = cls.training_step
    monkeypatch.setattr(
        cls, "training_step", lambda self, *b: (methods.append(self), step(self, *b))[1]
    )
    cfg = tiny(name, stage, model={"freeze": freeze}, train={"epochs": 1, "iters_per_epoch": 2})
    train(cfg, workdir=tmp_path)
    method = methods[0]
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert {id(p) for p in optimised} == trainable  # heads included, frozen tensors excluded
    assert all(p.requires_grad for p in method.heads.parameters())
    last = load_checkpoint(tmp_path / "checkpoints/last.pt")

    def frozen(k: str) -> bool:
        return any(k.startswith(p + ".") for p in freeze)

    # weights AND BatchNorm running statistics of frozen blocks: the block is the same function
    moved = [k for k, v in last["model"].items() if frozen(k) and not torch.equal(init[k], v)]
    assert not moved
    assert any(not torch.equal(init[k], v) for k, v in last["model"].items() if not frozen(k))
    ids = {id(p) for p in optimised}
    assert ids and not any(p.requires_grad is False for p in optimised)
    assert len(ids) == len(optimised)
    if name == "bim":  # the cluster heads and the projector are trained and checkpointed
        heads = {k.split(".")[1] for k in last["method"] if k.startswith("heads.")}
        assert heads == {"cluster", "global"}


def test_finetune_starts_from_the_pretrained_weights(tiny, tmp_path: Path, monkeypatch) -> None:
    pre = train(
        tiny("bim", "pretrain", train={"epochs": 1, "iters_per_epoch": 1}), workdir=tmp_path / "pre"
    )
    ckpt = load_checkpoint(pre["checkpoints"]["best"])["model"]
    first: dict[str, torch.Tensor] = {}
    finetune = REGISTRY["finetune"]
    step = finetune.training_step

    def spy(self, labeled, unlabeled, clock):
        if not first:
            first.update({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return step(self, labeled, unlabeled, clock)

    monkeypatch.setattr(finetune, "training_step", spy)
    ft = {
        "train": {
            "epochs": 1,
            "iters_per_epoch": 1,
            "init_from": pre["checkpoints"]["best"],
            "init_exclude": ["Conv_1x1"],
        },
        "data": {"target": "lv"},
    }
    out = train(tiny("finetune", "finetune", **ft), workdir=tmp_path / "ft")
    for k, v in ckpt.items():
        if k.startswith("Conv_1x1."):
            assert first[k].shape != v.shape  # 2 outputs (binary LV) vs 4: not loaded
        else:
            assert torch.equal(first[k], v), k
    assert out["data_fingerprint"] and set(out["init"]["loaded"]) == {
        k for k in ckpt if not k.startswith("Conv_1x1.")
    }


def test_resume_restores_the_global_torch_rng(tiny, tmp_path: Path) -> None:
    """Dropout draws from the global torch RNG: resuming without restoring it would differ."""
    cfg = tiny(
        "baseline", "finetune", model={"dropout": 0.3}, train={"epochs": 2, "iters_per_epoch": 2}
    )
    train(cfg, workdir=tmp_path / "full")

    def interrupt(metrics: dict, step: int) -> None:
        if step == 1 and "best_epoch" not in metrics:
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg, interrupt, workdir=tmp_path / "cut")
    train(cfg, workdir=tmp_path / "cut")
    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut/checkpoints/last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_run_draws_no_batches(tiny, tmp_path: Path, monkeypatch) -> None:
    cfg = tiny("baseline", "finetune", train={"epochs": 1, "iters_per_epoch": 2})
    first = train(cfg, workdir=tmp_path)
    drawn: list[int] = []
    skip = loop._Batches.skip
    monkeypatch.setattr(
        loop._Batches, "skip", lambda self, n, *a: (drawn.append(n), skip(self, n, *a))
    )
    again = train(cfg, workdir=tmp_path)
    assert drawn == []  # re-evaluating a finished run does not replay its whole data stream
    assert again["metrics"]["test/dsc"] == first["metrics"]["test/dsc"]


def test_test_metrics_come_from_the_best_validation_epoch(tiny, tmp_path: Path, monkeypatch):
    """Validation Dice falls after epoch 1: the test must use epoch 1's weights, not the last."""
    evaluate, tested = loop.evaluate, {}
    val_dsc = iter([0.9, 0.5, 0.4])

    def spy(predict, volumes, names, runtime, bs, multiple, distances, prefix, *rest):
        out = evaluate(predict, volumes, names, runtime, bs, multiple, distances, prefix, *rest)
        if prefix == "val":
            out["val/dsc"] = next(val_dsc)
        else:
            tested.update({k: v.clone() for k, v in predict.__self__.model.state_dict().items()})
        return out

    monkeypatch.setattr(loop, "evaluate", spy)
    cfg = tiny("baseline", "finetune", train={"epochs": 3, "iters_per_epoch": 1})
    result = train(cfg, workdir=tmp_path)
    assert result["best_epoch"] == 1 and result["metrics"]["best_epoch"] == 1.0
    best = load_checkpoint(tmp_path / "checkpoints/best.pt")
    last = load_checkpoint(tmp_path / "checkpoints/last.pt")
    assert best["epoch"] == 1 and last["epoch"] == 3
    assert all(torch.equal(tested[k], v) for k, v in best["model"].items())
    assert not all(torch.equal(tested[k], v) for k, v in last["model"].items())
    assert [h["val/dsc"] for h in result["history"]] == [0.9, 0.5, 0.4]


@pytest.mark.parametrize(
    ("dtype", "scaler", "scaled"),
    [
        (torch.float16, "stock", True),
        (torch.float16, "sync_free", True),
        (torch.bfloat16, "stock", False),
    ],
)
def test_amp_and_channels_last_are_wired_when_the_runtime_says_so(
    dtype, scaler, scaled, tiny, tmp_path, monkeypatch
):
    """The CUDA decisions (tested in test_engine_schedule) reach the loop: autocast in the
    runtime's dtype around the step, ``after_step`` and the evaluation (CPU autocast's own
    default is bfloat16: float16 shows that the dtype is passed), the chosen GradScaler (enabled for
    float16 only), channels_last weights and inputs; forced here on the CPU."""
    from segssl.engine.runtime import Runtime
    from segssl.methods.base import Method
    from segssl.methods.baseline import Baseline

    rt = Runtime(torch.device("cpu"), True, True, amp_dtype=dtype, grad_scaler=scaler)
    monkeypatch.setattr(loop, "resolve_runtime", lambda cfg: rt)
    scalers: list = []
    for kind, cls in list(SCALERS.items()):

        def scaler_spy(device, enabled, _cls=cls):
            scalers.append((_cls, device, enabled))
            return _cls(device, enabled=enabled)

        monkeypatch.setitem(SCALERS, kind, scaler_spy)
    seen: list[tuple] = []
    step, predict = Baseline.training_step, Method.predict

    def spy(self, labeled, unlabeled, clock):
        w = self.model.Conv2[0].weight
        x = labeled["image"]
        seen.append(
            (
                "step",
                torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"),
                w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous(),
                x.is_contiguous(memory_format=torch.channels_last),
            )
        )
        return step(self, labeled, unlabeled, clock)

    def predict_spy(self, images):
        autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")
        seen.append(("predict", autocast, None, images.is_contiguous(memory_format=cl)))
        return predict(self, images)

    def after_spy(self, clock):  # EMA teachers, a discriminator's own step run here
        seen.append(("after", torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")))

    cl = torch.channels_last
    monkeypatch.setattr(Baseline, "training_step", spy)
    monkeypatch.setattr(Baseline, "after_step", after_spy)
    monkeypatch.setattr(Method, "predict", predict_spy)
    cfg = tiny("baseline", "finetune", train={"epochs": 1, "iters_per_epoch": 1})
    result = train(cfg, workdir=tmp_path)
    expected = SyncFreeGradScaler if scaler == "sync_free" else torch.amp.GradScaler
    assert scalers == [(expected, "cpu", scaled)]
    assert seen[:2] == [("step", dtype, True, True), ("after", dtype)]
    assert {s for s in seen[2:]} == {("predict", dtype, None, True)}  # validation and test
    assert result["runtime"] == {
        "device": "cpu",
        "amp": True,
        "amp_dtype": str(dtype).removeprefix("torch."),
        "grad_scaler": scaler if scaled else None,
        "channels_last": True,
    }


def test_best_validation_dice_and_epoch_are_reported(tiny, tmp_path: Path, monkeypatch):
    """The last report carries best_val/dsc and best_epoch (the best validation Dice and the
    epoch the test metrics come from), also when the best epoch was before an interruption: the
    UI can sort on the number the table selects by."""
    evaluate = loop.evaluate
    val_dsc = iter([0.9, 0.5, 0.4, 0.3])

    def spy(predict, volumes, names, runtime, bs, multiple, distances, prefix, *rest):
        out = evaluate(predict, volumes, names, runtime, bs, multiple, distances, prefix, *rest)
        if prefix == "val":
            out["val/dsc"] = next(val_dsc)
        return out

    monkeypatch.setattr(loop, "evaluate", spy)
    cfg = tiny("baseline", "finetune", train={"epochs": 3, "iters_per_epoch": 1})
    reports: list[dict] = []

    def stop_after_2(metrics: dict, step: int) -> None:
        reports.append(metrics)
        if step == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg, stop_after_2, workdir=tmp_path)
    result = train(cfg, lambda m, s: reports.append(m), workdir=tmp_path)
    final = reports[-1]
    assert final["best_val/dsc"] == pytest.approx(0.9) and final["best_epoch"] == 1.0
    assert "test/dsc" in final and reports[-2]["val/dsc"] == pytest.approx(0.4)
    assert result["metrics"]["best_val/dsc"] == pytest.approx(0.9)
    assert all("best_val/dsc" not in r for r in reports[:-1])  # per epoch: val/dsc only
