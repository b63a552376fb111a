"""entmin and mean_teacher against their formulas (BIM App. E)."""

from __future__ import annotations

import math

import pytest
import torch

from segssl.engine.loop import build_method
from segssl.methods import REGISTRY
from segssl.methods.base import Clock
from segssl.models import build_model


def _batches(num_classes: int = 4) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    lab = {
        "image": torch.rand(2, 1, 32, 32, generator=g),
        "label": torch.randint(0, num_classes, (2, 32, 32), generator=g),
    }
    return lab, {"image": torch.rand(3, 1, 32, 32, generator=g)}


def _method(tiny_method, name: str, **method):
    cfg = tiny_method(name, method={"name": name, **method}, train={"epochs": 4})
    torch.manual_seed(0)
    model = build_model(cfg.model, 4)
    return build_method(cfg, REGISTRY[name], model, 4, ("a", "b", "c"), torch.device("cpu"))


def test_entmin_is_ce_plus_weighted_mean_pixel_entropy(tiny_method) -> None:
    method = _method(tiny_method, "entmin", w_ent=0.3).train()
    lab, unl = _batches()
    out = method.training_step(lab, unl, Clock(1, 0, 2, 8))
    logits = method.model(torch.cat([lab["image"], unl["image"]]))  # one pass, as the step
    p = logits[2:].softmax(1)
    ent = -(p * p.log()).sum(1).mean()
    ce = torch.nn.functional.cross_entropy(logits[:2], lab["label"])
    torch.testing.assert_close(out["ent"], ent.detach())
    torch.testing.assert_close(out["loss"].detach(), (ce + 0.3 * ent).detach())


def test_mean_teacher_loss_ramps_the_consistency_and_the_teacher_follows(tiny_method):
    method = _method(tiny_method, "mean_teacher", w_cons=2.0, rampup_epochs=2, teacher_noise=0.0)
    method.train()
    lab, unl = _batches()
    with torch.no_grad():  # a teacher that differs from the student
        for p in method.teacher.net.parameters():
            p.add_(0.05)
    for step in (1, 3, 5):
        clock = Clock(step, (step - 1) // 2, 2, 8)
        out = method.training_step(lab, unl, clock)
        t = min((step - 1) / 2 / 2, 1.0)  # epochs done / ramp length
        ramp = math.exp(-5 * (1 - t) ** 2)
        want = out["ce"] + 2.0 * ramp * out["cons"]
        torch.testing.assert_close(out["loss"].detach(), want)
    assert float(out["cons"]) > 0
    student = {k: v.clone() for k, v in method.model.named_parameters()}
    before = {k: v.clone() for k, v in method.teacher.net.named_parameters()}
    method.after_step(clock)
    decay = 1 - 1 / (5 + 1)  # step 5: the warm-up's min(0.99, 1 - 1/(step + 1))
    for k, v in method.teacher.net.named_parameters():
        torch.testing.assert_close(v, decay * before[k] + (1 - decay) * student[k])


@pytest.mark.parametrize(
    ("name", "extra"),
    [("mean_teacher", {}), ("ict", {}), ("uamt", {}), ("gmi", {"teacher": True})],
)
@pytest.mark.parametrize("warmup", [True, False])
def test_ema_teachers_warm_their_decay_up_as_the_reference_code(
    tiny_method, name: str, extra: dict, warmup: bool
) -> None:
    """Every EMA teacher follows min(ema_decay, 1 - 1/(step + 1)) (Tarvainen & Valpola's code):
    after step 1 it is halfway to the student; ``ema_warmup: false`` keeps the fixed decay."""
    method = _method(tiny_method, name, ema_warmup=warmup, **extra).train()
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(0.1)
    student = {k: v.clone() for k, v in method.model.named_parameters()}
    before = {k: v.clone() for k, v in method.teacher.net.named_parameters()}
    method.after_step(Clock(1, 0, 2, 8))
    decay = 0.5 if warmup else method.cfg.ema_decay
    for k, v in method.teacher.net.named_parameters():
        torch.testing.assert_close(v, decay * before[k] + (1 - decay) * student[k])


def test_mean_teacher_defaults_are_the_papers() -> None:
    cfg = REGISTRY["mean_teacher"].Config()
    assert (cfg.ema_decay, cfg.rampup, cfg.w_ce) == (0.99, "sigmoid", 1.0)
    assert REGISTRY["mean_teacher"].Config(w_cons=1e-4).w_cons == 1e-4  # the grid's ends
    assert REGISTRY["mean_teacher"].Config(w_cons=10).w_cons == 10


@pytest.mark.parametrize("evaluate", ["teacher", "student"])
def test_mean_teacher_declares_the_network_it_evaluates(tiny_method, evaluate: str) -> None:
    method = _method(tiny_method, "mean_teacher", evaluate=evaluate).eval()
    x = torch.rand(2, 1, 32, 32)
    net = method.teacher.net if evaluate == "teacher" else method.model
    with torch.no_grad():
        method.teacher.net.Conv_1x1.bias.add_(1.0)  # teacher != student
        assert torch.equal(method.predict(x), net(x))
    assert method.carry == "model"
