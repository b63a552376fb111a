"""Every registered method through the engine: two steps, save, resume, two more steps equals the
uninterrupted run bit for bit (whole method state, every optimiser and scheduler, scaler, RNG)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import segssl.engine.loop as loop
from segssl.config import MethodConfig
from segssl.engine import save_checkpoint, train
from segssl.engine.checkpoint import load_checkpoint
from segssl.losses import cross_entropy
from segssl.methods import REGISTRY
from segssl.methods.base import Method
from segssl.models import build_model


class _Stop(Exception):
    pass


def _differences(a: object, b: object, where: str = "") -> list[str]:
    """Paths at which two checkpoint trees differ (tensors compared bit for bit)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} keys {sorted(map(str, a.keys() ^ b.keys()))}"]
        return [d for k in a for d in _differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _differences(x, y, f"{where}[{i}]")
        ]
    return [] if a == b else [where]


def _config(name: str, tiny_method, tmp_path: Path):
    sections = {
        "train": {"epochs": 2, "iters_per_epoch": 2, "pictures": 0},
        "model": {"dropout": 0.2},  # dropout draws from the global RNG: resumed too
    }
    if REGISTRY[name].init == "required":
        init = tmp_path / "init.pt"
        model = build_model(tiny_method("baseline").model, 4)
        save_checkpoint(init, {"model": model.state_dict()})
        sections["train"]["init_from"] = str(init)
    return tiny_method(name, **sections)


def _resumed_differences(cfg, tmp_path: Path) -> list[str]:
    train(cfg, workdir=tmp_path / "full")

    def interrupt(metrics: dict, step: int) -> None:
        if step == 1 and "best_epoch" not in metrics:
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg, interrupt, workdir=tmp_path / "cut")
    train(cfg, workdir=tmp_path / "cut")
    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "cut/checkpoints/last.pt")
    for h in a["history"] + b["history"]:
        h.pop("time/epoch_s")
    return _differences(a, b)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_resume_is_bit_exact_for_every_method(name: str, tiny_method, tmp_path: Path) -> None:
    cfg = _config(name, tiny_method, tmp_path)
    assert _resumed_differences(cfg, tmp_path) == []


def test_the_comparison_catches_a_resume_that_drops_the_teacher(tiny_method, tmp_path, monkeypatch):
    """Restoring only model and heads (the engine before contract v2) is caught: the teacher and
    the optimiser state differ after resuming."""

    def old_restore(self, state: dict) -> None:
        self.method.model.load_state_dict(
            {k[6:]: v for k, v in state["method"].items() if k.startswith("model.")}
        )
        self.start_epoch = self.resumed_from = state["epoch"]
        self.history, self.best = state["history"], state["best"]
        self.batches.skip(self.start_epoch * self.cfg.train.iters_per_epoch, True, True)
        loop.restore_rng(state["rng"], self.gens)

    monkeypatch.setattr(loop._Run, "_restore", old_restore)
    diff = _resumed_differences(_config("mean_teacher", tiny_method, tmp_path), tmp_path)
    assert any(d.startswith(".method.teacher.") for d in diff)


class _DiscConfig(MethodConfig):
    name: str = "disc_probe"


class _DiscProbe(Method):
    """CE through the model and a discriminator on its predictions, stepped with its own
    optimiser (Adam state, warm-up schedule, clipping) in ``after_step``."""

    Config = _DiscConfig
    uses_labeled = True
    terms = {"ce": 1.0}
    optimizers = {"disc": ("disc",)}

    def __init__(self, model, cfg, ctx) -> None:
        super().__init__(model, cfg, ctx)
        self.disc = torch.nn.Sequential(torch.nn.Conv2d(ctx.num_classes, 4, 1), torch.nn.Dropout())

    def training_step(self, labeled, unlabeled, clock):
        logits = self.model(labeled["image"])
        self._fake = logits.detach().softmax(1)
        return self.output({"ce": cross_entropy(logits, labeled["label"])})

    def after_step(self, clock):
        self.optimizer_step("disc", self.disc(self._fake).pow(2).mean())


def test_an_owned_optimiser_resumes_bit_exact(tiny_method, tiny, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(REGISTRY, "disc_probe", _DiscProbe)
    disc = {"name": "adam", "lr": 1e-2, "warmup_factor": 4, "warmup_epochs": 1, "grad_clip": 0.1}
    cfg = tiny("disc_probe", "finetune", optim={"extra": {"disc": disc}})
    cfg = cfg.model_copy(update={"train": _config("baseline", tiny_method, tmp_path).train})
    assert _resumed_differences(cfg, tmp_path) == []
    last = load_checkpoint(tmp_path / "cut/checkpoints/last.pt")
    assert last["optimizers"]["disc"]["state"]  # Adam moments of the discriminator
