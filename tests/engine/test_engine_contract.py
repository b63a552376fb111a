"""The method contract through the engine: clock, parameter groups, owned optimisers, BatchNorm
modes, the declared predict network, and bad declarations refused before any work."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import nn

import segssl.engine.loop as loop
from segssl.config import MethodConfig
from segssl.engine import CheckpointError, EngineConfigError, build_optimizer, train
from segssl.engine.checkpoint import FORMAT, load_checkpoint
from segssl.losses import cross_entropy
from segssl.methods import REGISTRY, variant
from segssl.methods.base import Clock, Method
from segssl.methods.baseline import Baseline
from segssl.models import build_model


class _Stop(Exception):
    pass


def _interrupt_after(epoch: int):
    def report(metrics: dict, step: int) -> None:
        if step == epoch and "best_epoch" not in metrics:
            raise _Stop

    return report


# ----------------------------------------------------------------------------------- clock
class _ClockProbe(Baseline):
    Config = variant(Baseline, "clock_probe").Config
    init = "optional"
    seen: ClassVar[list[Clock]] = []

    def training_step(self, labeled, unlabeled, clock):
        type(self).seen.append(clock)
        return super().training_step(labeled, unlabeled, clock)


def test_the_clock_is_right_on_the_first_step_after_a_resume(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, "clock_probe", _ClockProbe)
    cfg = tiny("clock_probe", "finetune", train={"epochs": 3, "iters_per_epoch": 2, "pictures": 0})
    _ClockProbe.seen.clear()
    train(cfg, workdir=tmp_path / "full")
    full = list(_ClockProbe.seen)
    assert full == [Clock(s, (s - 1) // 2, 2, 6) for s in range(1, 7)]
    _ClockProbe.seen.clear()
    with pytest.raises(_Stop):
        train(cfg, _interrupt_after(1), workdir=tmp_path / "cut")
    train(cfg, workdir=tmp_path / "cut")
    assert _ClockProbe.seen == full  # step 3 (epoch 1) is the first step after the resume
    assert full[2].epochs_done == 1.0 and full[2].progress == pytest.approx(2 / 6)


# ----------------------------------------------------------------------- parameter groups
def test_parameter_groups_take_their_own_lr_and_weight_decay(tiny_method) -> None:
    groups = {"heads": {"lr": 1e-2, "weight_decay": 0.0}, "heads.global": {"lr": 3e-2}}
    cfg = tiny_method("bim", optim={"groups": groups})
    model = build_model(cfg.model, 4)
    method = loop.build_method(cfg, REGISTRY["bim"], model, 4, ("a", "b", "c"), "cpu")
    settings, named = loop.optimizer_params(cfg, method)["main"]
    opt = build_optimizer(settings, named)
    by_id = {id(p): n for n, p in method.named_parameters()}
    got = {
        (g["lr"], g["weight_decay"]): {by_id[id(p)].split(".")[1] for p in g["params"]}
        for g in opt.param_groups
    }
    peak = cfg.optim.warmup_factor  # groups warm up with the same factor from their own lr
    wd = cfg.optim.weight_decay
    assert got[(cfg.optim.lr * peak, wd)] >= {"Conv1", "Up_conv2"}  # model.*: main settings
    assert got[(1e-2 * peak, 0.0)] == {"cluster"}
    assert got[(3e-2 * peak, wd)] == {"global"}  # longest prefix wins; wd from the optimiser


# ----------------------------------------------------------------------- owned optimiser
class _AdvConfig(MethodConfig):
    name: str = "adv_probe"


class _AdvProbe(Method):
    """CE on labeled batches; a 'discriminator' on the detached predictions, stepped by the
    method itself with its own optimiser."""

    Config: ClassVar[type[MethodConfig]] = _AdvConfig
    uses_labeled = True
    terms = {"ce": 1.0, "disc": None}
    optimizers = {"disc": ("disc",)}

    def __init__(self, model, cfg, ctx) -> None:
        super().__init__(model, cfg, ctx)
        self.disc = nn.Conv2d(ctx.num_classes, 1, 1)
        init = torch.cat([p.detach().flatten() for p in self.disc.parameters()])
        self.register_buffer("disc_init", init)

    def training_step(self, labeled, unlabeled, clock):
        logits = self.model(labeled["image"])
        self._fake = logits.detach().softmax(1)
        ce = cross_entropy(logits, labeled["label"])
        return {"loss": ce, "ce": ce.detach()}  # "disc" is logged by after_step

    def after_step(self, clock):
        d = self.disc(self._fake).pow(2).mean()
        self.optimizer_step("disc", d)
        return {"disc": d.detach()}


def test_an_owned_optimiser_is_stepped_with_clipping_and_schedule(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, "adv_probe", _AdvProbe)
    disc = {"name": "sgd", "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0, "warmup_factor": 1}
    disc |= {"warmup_epochs": 0, "grad_clip": 1e-6}
    cfg = tiny(
        "adv_probe",
        "finetune",
        optim={"extra": {"disc": disc}},
        train={"epochs": 2, "iters_per_epoch": 1, "pictures": 0},
    )
    result = train(cfg, workdir=tmp_path)
    last = load_checkpoint(tmp_path / "checkpoints/last.pt")
    assert set(last["optimizers"]) == {"main", "disc"} == set(last["schedulers"])
    n_main = sum(len(g["params"]) for g in last["optimizers"]["main"]["param_groups"])
    assert n_main == sum(1 for _ in build_model(cfg.model, 4).parameters())  # no disc in main
    # cosine over 2 epochs from 0.5: steps at lr 0.5 then 0.25, each clipped to norm 1e-6
    now = torch.cat([last["method"][f"disc.{k}"].flatten() for k in ("weight", "bias")])
    moved = float((now - last["method"]["disc_init"]).double().norm())
    assert 0.25e-6 * 0.999 <= moved <= 0.75e-6 * 1.001  # unclipped: orders of magnitude more
    assert last["optimizers"]["disc"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert "train/disc" in result["history"][0]


def test_extra_optimiser_settings_for_an_optimiser_the_method_lacks(tiny, tmp_path) -> None:
    cfg = tiny("baseline", "finetune", optim={"extra": {"disc": {"lr": 1e-3}}})
    with pytest.raises(EngineConfigError, match=r"optim.extra: \['disc'\] are not optimisers"):
        train(cfg, workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- batch norm
def test_batchnorm_modes_follow_model_freeze_and_the_teacher_s_choice(tiny_method) -> None:
    cfg = tiny_method("mean_teacher", model={"freeze": ["Conv1"]})
    model = build_model(cfg.model, 4)
    method = loop.build_method(cfg, REGISTRY["mean_teacher"], model, 4, ("a", "b", "c"), "cpu")
    method.train()

    def bns(net: nn.Module, prefix: str = "") -> dict[str, bool]:
        return {
            n: m.training
            for n, m in net.named_modules()
            if isinstance(m, nn.BatchNorm2d) and n.startswith(prefix)
        }

    assert bns(method.model, "Conv1") and not any(bns(method.model, "Conv1").values())
    assert all(v for n, v in bns(method.model).items() if not n.startswith("Conv1"))
    teacher = bns(method.teacher.net)  # no trainable parameter, yet not silently frozen
    assert len(teacher) == 22 and all(teacher.values())
    method.eval()
    assert not any(bns(method.teacher.net).values())


# -------------------------------------------------------------------- predict and carry
def test_mean_teacher_is_evaluated_with_its_best_epoch_teacher(tiny_method, tmp_path, monkeypatch):
    evaluate, tested = loop.evaluate, {}
    val_dsc = iter([0.9, 0.5, 0.4])

    def spy(predict, volumes, names, runtime, bs, multiple, distances, prefix, *rest):
        out = evaluate(predict, volumes, names, runtime, bs, multiple, distances, prefix, *rest)
        if prefix == "val":
            out["val/dsc"] = next(val_dsc)
        else:
            method = predict.__self__
            x = torch.rand(2, 1, 32, 32)
            assert torch.equal(predict(x), method.teacher.net(x))  # predict runs the teacher
            tested.update({k: v.clone() for k, v in method.teacher.net.state_dict().items()})
        return out

    monkeypatch.setattr(loop, "evaluate", spy)
    cfg = tiny_method("mean_teacher", train={"epochs": 3, "iters_per_epoch": 1, "pictures": 0})
    result = train(cfg, workdir=tmp_path)
    assert result["best_epoch"] == 1
    best = load_checkpoint(tmp_path / "checkpoints/best.pt")
    last = load_checkpoint(tmp_path / "checkpoints/last.pt")
    assert best["predict_with"] == "teacher" and best["carry"] == "model"
    assert all(torch.equal(tested[k], v) for k, v in best["predict"].items())
    teacher_last = {k[len("teacher.net.") :]: v for k, v in last["method"].items()}
    assert not all(torch.equal(tested[k], teacher_last[k]) for k in tested)
    # what a later stage receives is the student (carry), not the teacher
    student_best = best["model"]
    assert student_best.keys() == best["predict"].keys()
    assert not all(torch.equal(student_best[k], best["predict"][k]) for k in student_best)


def test_a_method_can_carry_its_teacher(tiny_method, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(REGISTRY, "mt_carry", variant(REGISTRY["mean_teacher"], "mt_carry"))
    REGISTRY["mt_carry"].carry = "teacher"
    cfg = tiny_method("mt_carry", train={"epochs": 1, "iters_per_epoch": 2, "pictures": 0})
    train(cfg, workdir=tmp_path)
    last = load_checkpoint(tmp_path / "checkpoints/last.pt")
    teacher = {k[len("teacher.net.") :]: v for k, v in last["method"].items() if "teacher." in k}
    assert last["model"].keys() == teacher.keys()
    assert all(torch.equal(last["model"][k], teacher[k]) for k in teacher)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("name", "sections", "match"),
    [
        (
            "carry_probe",
            {},
            r"'teacher' is not a network this method owns; owned networks: \['model'\]",
        ),
        ("predict_probe", {}, r"'disc' is not a network this method owns"),
        ("part_probe", {}, r"'model:encoderX': no part 'encoderX'; parts: \['encoder'"),
        (  # a method that does not declare its tap fields: found when the method is built
            "tap_probe",
            {"method": {"name": "tap_probe", "dense_tap": "decoder9"}},
            r"'decoder9' is not a tap role .* valid roles: \['encoder', 'encoder1'",
        ),
        (
            "bim",
            {"optim": {"groups": {"heads.nothing": {"lr": 1.0}}}},
            r"optim.groups: \['heads.nothing'\] match no trainable parameter",
        ),
        (
            "mean_teacher",
            {"method": {"name": "mean_teacher", "rampup_epochs": 5}},
            r"method.rampup_epochs: ramp-up of 5.0 epochs does not fit .* train.epochs=2",
        ),
        (
            "mean_teacher",
            {"method": {"name": "mean_teacher", "ema_decay": 1.0, "rampup_epochs": 1}},
            r"decay must be in \(0, 1\), got 1.0",
        ),
    ],
)
def test_bad_declarations_fail_before_any_work(
    name, sections, match, tiny_method, tmp_path, monkeypatch
):
    monkeypatch.setitem(REGISTRY, "carry_probe", variant(Baseline, "carry_probe", carry="teacher"))
    monkeypatch.setitem(REGISTRY, "predict_probe", variant(Baseline, "predict_probe"))
    monkeypatch.setattr(REGISTRY["predict_probe"], "predict_with", "disc")
    monkeypatch.setitem(REGISTRY, "part_probe", variant(Baseline, "part_probe"))
    monkeypatch.setattr(REGISTRY["part_probe"], "carry", "model:encoderX")
    monkeypatch.setitem(REGISTRY, "tap_probe", variant(REGISTRY["bim"], "tap_probe"))
    monkeypatch.setattr(REGISTRY["tap_probe"], "tap_fields", ())
    for probe in ("carry_probe", "predict_probe", "part_probe"):
        monkeypatch.setattr(REGISTRY[probe], "init", "optional")
    cfg = tiny_method(name, **sections)
    with pytest.raises(EngineConfigError, match=match):
        train(cfg, workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()  # nothing written, no data prepared


def test_a_checkpoint_from_before_contract_v2_is_not_resumed_and_not_touched(tiny, tmp_path):
    cfg = tiny("baseline", "finetune", train={"epochs": 1, "iters_per_epoch": 1, "pictures": 0})
    train(cfg, workdir=tmp_path)
    last = tmp_path / "checkpoints/last.pt"
    v2 = torch.load(last, weights_only=True)
    v1 = {"format": FORMAT, "version": 1, "model": v2["model"], "heads": {}}
    v1 |= {k: v2[k] for k in ("config", "config_hash", "epoch", "best", "history", "rng")}
    torch.save(v1, last)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="segssl-checkpoint version 1 .* cannot be resumed"):
        train(cfg, workdir=tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    # the documented conversion: a version-1 file still initialises a later stage
    ft = {"train": {"epochs": 1, "iters_per_epoch": 1, "pictures": 0, "init_from": str(last)}}
    out = train(tiny("finetune", "finetune", **ft), workdir=tmp_path / "ft")
    assert "Conv1.0.weight" in out["init"]["loaded"]


class _TwoOwned(_AdvProbe):
    """The probe with a frozen module besides its discriminator (the test sets ``optimizers``)."""

    optimizers = {"disc": ("disc",), "frozen": ("frozen",)}

    def __init__(self, model, cfg, ctx) -> None:
        super().__init__(model, cfg, ctx)
        self.frozen = nn.Conv2d(1, 1, 1).requires_grad_(False)


@pytest.mark.parametrize(
    ("optimizers", "match"),
    [
        (
            {"disc": ("disc",), "disc_w": ("disc",)},
            r"'disc.weight' is under the prefixes of several owned optimisers \['disc', 'disc_w'\]",
        ),
        (
            {"disc": ("disc",), "frozen": ("frozen",)},
            r"owned optimiser 'frozen': its prefixes \['frozen'\] hold no trainable parameter",
        ),
    ],
)
def test_owned_optimisers_hold_each_parameter_once(
    optimizers, match, tiny, tmp_path, monkeypatch
) -> None:
    monkeypatch.setitem(REGISTRY, "adv_probe", _TwoOwned)
    monkeypatch.setattr(_TwoOwned, "optimizers", optimizers)
    cfg = tiny("adv_probe", "finetune", train={"epochs": 1, "iters_per_epoch": 1, "pictures": 0})
    with pytest.raises(EngineConfigError, match=match):
        train(cfg, workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------ AMP and channels_last
def _force_amp(monkeypatch) -> None:
    """CUDA float16 AMP (autocast + an enabled GradScaler) and channels_last, on the CPU."""
    from segssl.engine.runtime import Runtime

    rt = Runtime(device=torch.device("cpu"), amp=True, channels_last=True)
    monkeypatch.setattr(loop, "resolve_runtime", lambda cfg: rt)


def test_an_owned_optimiser_is_clipped_on_unscaled_gradients_under_amp(
    tiny, tmp_path, monkeypatch
) -> None:
    """With GradScaler's 2**16 scale, clipping before unscaling would move the discriminator
    2**16 times less than the clip norm allows."""
    _force_amp(monkeypatch)
    monkeypatch.setitem(REGISTRY, "adv_probe", _AdvProbe)
    disc = {"name": "sgd", "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0, "warmup_factor": 1}
    disc |= {"warmup_epochs": 0, "grad_clip": 1e-6}
    cfg = tiny(
        "adv_probe",
        "finetune",
        optim={"extra": {"disc": disc}},
        train={"epochs": 2, "iters_per_epoch": 1, "pictures": 0},
    )
    train(cfg, workdir=tmp_path)
    last = load_checkpoint(tmp_path / "checkpoints/last.pt")
    # enabled (a disabled scaler saves no scale); fp16's first step may overflow at 2**16
    assert last["scaler"]["scale"] in (2.0**16, 2.0**15)
    now = torch.cat([last["method"][f"disc.{k}"].flatten() for k in ("weight", "bias")])
    moved = float((now - last["method"]["disc_init"]).double().norm())
    # steps at lr 0.5 and 0.25, each clipped to norm 1e-6 (one may be skipped by an fp16
    # overflow; updates of ~1e-7 round by some percent on weights of ~0.5); clipping the scaled
    # gradients would move it ~1e-11, not clipping at all orders of magnitude more
    assert 0.2e-6 <= moved <= 0.75e-6 * 1.001


class _TwiceProbe(_AdvProbe):
    """Steps its discriminator twice per training step (n_critic = 2)."""

    def after_step(self, clock):
        for _ in range(2):
            d = self.disc(self._fake).pow(2).mean()
            self.optimizer_step("disc", d)
        return {"disc": d.detach()}


def test_an_optimiser_stepped_twice_in_one_step_is_a_clear_error(tiny, tmp_path, monkeypatch):
    """GradScaler allows one step per optimiser between updates: under AMP a second step failed
    with torch's 'unscale_() is being called after step()', and only on a GPU; it is refused on
    every device, naming the optimiser."""
    monkeypatch.setitem(REGISTRY, "adv_probe", _TwiceProbe)
    cfg = tiny("adv_probe", "finetune", train={"epochs": 1, "iters_per_epoch": 1, "pictures": 0})
    with pytest.raises(RuntimeError, match=r"optimiser 'disc' was stepped twice in step 1"):
        train(cfg, workdir=tmp_path)


@pytest.mark.parametrize("name", ["mean_teacher", "uamt"])
def test_the_ema_teacher_under_amp_and_channels_last(name, tiny_method, tmp_path, monkeypatch):
    """After each step the teacher is the moving average of the student, in float32 and in the
    student's memory format."""
    _force_amp(monkeypatch)
    cls = REGISTRY[name]
    original, seen = cls.after_step, []

    def after_step(self, clock):
        before = [p.clone() for p in self.teacher.net.parameters()]
        original(self, clock)
        teacher = [p.clone() for p in self.teacher.net.parameters()]
        seen.append((before, teacher, [p.detach().clone() for p in self.model.parameters()]))

    monkeypatch.setattr(cls, "after_step", after_step)
    train_s = {"epochs": 1, "iters_per_epoch": 2, "pictures": 0}
    train(tiny_method(name, train=train_s, model={"dropout": 0.2}), workdir=tmp_path)
    decay = tiny_method(name).method.ema_decay
    assert len(seen) == 2
    for step, (before, teacher, student) in enumerate(seen, start=1):
        rate = min(decay, 1 - 1 / (step + 1))  # the reference code's warm-up (ema_warmup)
        for b, t, s in zip(before, teacher, student, strict=True):
            assert t.dtype == torch.float32 and t.is_contiguous(
                memory_format=torch.channels_last
            ) == s.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(t, rate * b + (1 - rate) * s.detach())


def test_a_best_checkpoint_of_an_earlier_run_is_not_restored(tiny, tmp_path) -> None:
    """Started over (resume=False) in a workdir that holds an earlier run's best.pt, a run that
    selects no best epoch (no validation volumes) tests its own last weights, not the old file's."""
    short = {"epochs": 2, "iters_per_epoch": 1, "pictures": 0}
    train(tiny("baseline", "finetune", train=short), workdir=tmp_path)
    no_val = {"split": {"unit": "scan", "sizes": [10, 0, 2]}}
    cfg = tiny("baseline", "finetune", seed=1, train=short, data=no_val)
    result = train(cfg, workdir=tmp_path, resume=False)
    last = load_checkpoint(tmp_path / "checkpoints/last.pt")
    best = load_checkpoint(tmp_path / "checkpoints/best.pt")
    assert result["best_epoch"] == 2 and best["config"] == last["config"]
    assert all(torch.equal(best["predict"][k], v) for k, v in last["model"].items())
