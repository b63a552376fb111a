"""CE + Dice for every method with a supervised term on labeled slices (``method.w_dice``).

``w_dice`` > 0 adds exactly ``w_dice * dice_loss(labeled logits, labels)`` to the loss and logs it
as ``dice``; at its default 0 nothing changes: no ``dice`` part, the other parts and the loss
are those of the same step without it, and trial keys are those published before the field.
``dice_background: false`` takes that Dice over the foreground classes only (issue 11)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import segssl.methods.base as method_base
from segssl.config import ConfigError, config_hash, flatten, keyed_dump, parse_run_config
from segssl.engine.loop import build_method
from segssl.losses import dice_loss
from segssl.methods import REGISTRY
from segssl.methods.base import Clock
from segssl.models import build_model
from segssl.orchestrate.plan import trial_key

LABELED = sorted(n for n, c in REGISTRY.items() if c.uses_labeled)
# the methods whose trial keys always held w_dice (it was theirs from the start)
KEYED_FROM_THE_START = {"baseline", "full", "finetune"}
NUM_CLASSES = 4


def test_every_method_with_labeled_batches_takes_a_dice_term() -> None:
    """The brief's list (the baseline family and every semi-supervised method with labeled CE)."""
    assert set(LABELED) >= {
        "baseline",
        "full",
        "finetune",
        "entmin",
        "mean_teacher",
        "ict",
        "uamt",
        "consistency",
        "gmi",
        "mixup",
        "adversarial",
        "self_training",
        "ideal_finetune",
    }
    for name in LABELED:
        cls = REGISTRY[name]
        assert cls.terms.get("dice") == "w_dice", name
        assert cls.Config.model_fields["w_dice"].default == 0.0, name  # the papers: CE alone


def _batches() -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(1)
    lab = {
        "image": torch.rand(2, 1, 32, 32, generator=g),
        "label": torch.randint(0, NUM_CLASSES, (2, 32, 32), generator=g),
    }
    return lab, {"image": torch.rand(3, 1, 32, 32, generator=g)}


def _step(tiny_method, name: str, lab: dict, unl: dict, **method: Any) -> dict:
    """One training step of a freshly built method (every random stream seeded alike)."""
    cls = REGISTRY[name]
    cfg = tiny_method(name, method=method, train={"epochs": 4, "init_from": None})
    torch.manual_seed(0)
    model = build_model(cfg.model, NUM_CLASSES)
    gen = torch.Generator().manual_seed(0)
    m = build_method(cfg, cls, model, NUM_CLASSES, ("a", "b", "c"), torch.device("cpu"), gen)
    m.train()
    torch.manual_seed(0)
    out = m.training_step(lab, unl if cls.uses_unlabeled else None, Clock(2, 0, 2, 8))
    assert set(out) == {"loss", *m.loss_parts()}
    return out


@pytest.mark.parametrize("name", LABELED)
def test_dice_adds_exactly_its_weighted_term_on_the_labeled_logits(
    name: str, tiny_method, monkeypatch
) -> None:
    lab, unl = _batches()
    calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"ce": [], "dice": []}

    def spy(kind: str, fn: Any) -> Any:
        def wrapped(logits: torch.Tensor, target: torch.Tensor, **kw: Any) -> torch.Tensor:
            calls[kind].append((logits, target))
            return fn(logits, target, **kw)

        return wrapped

    monkeypatch.setattr(method_base, "cross_entropy", spy("ce", method_base.cross_entropy))
    monkeypatch.setattr(method_base, "dice_loss", spy("dice", method_base.dice_loss))
    off = _step(tiny_method, name, lab, unl)
    assert "dice" not in off and not calls["dice"]
    calls["ce"].clear()
    w = 0.7
    on = _step(tiny_method, name, lab, unl, w_dice=w)
    # Dice is taken of the very logits the CE term uses, against the labeled slices' labels
    assert calls["dice"] and len(calls["dice"]) == len(calls["ce"])
    for (lg, y), (ce_lg, _) in zip(calls["dice"], calls["ce"], strict=True):
        assert lg is ce_lg and lg.shape == (2, NUM_CLASSES, 32, 32)
        assert torch.equal(y, lab["label"])
    want = sum(dice_loss(lg.detach(), y) for lg, y in calls["dice"])
    torch.testing.assert_close(on["dice"], want)
    for k, v in off.items():  # the same step otherwise: every other part bit for bit
        if k != "loss":
            assert torch.equal(on[k], v), k
    torch.testing.assert_close(on["loss"].detach() - off["loss"].detach(), w * want)


@pytest.mark.parametrize("name", ["entmin", "mean_teacher", "ict", "mixup", "ideal_finetune"])
def test_dice_at_zero_is_the_step_without_it(name: str, tiny_method) -> None:
    lab, unl = _batches()
    default = _step(tiny_method, name, lab, unl)
    zero = _step(tiny_method, name, lab, unl, w_dice=0.0)
    assert default.keys() == zero.keys() and "dice" not in zero
    for k in default:
        assert torch.equal(default[k], zero[k]), k


@pytest.mark.parametrize("name", LABELED)
def test_w_dice_at_its_default_keeps_published_trial_keys(name: str, tiny_method) -> None:
    cfg = tiny_method(name)
    method = cfg.method.model_dump(mode="json")  # every field, w_dice included
    assert method["w_dice"] == 0 and flatten(cfg)["method.w_dice"] == 0  # recorded parameters
    if name not in KEYED_FROM_THE_START:  # the method section as it was before the field
        method = {k: v for k, v in method.items() if k != "w_dice"}
    method.pop("streams", None)  # another field added later (test_methods_streams)
    assert method.pop("dice_background") is True  # added later still, for every method
    dump = {**keyed_dump(cfg), "method": method}  # other sections: their own neutral fields
    assert trial_key(cfg, None) == config_hash({"config": dump, "parent": None})
    other = tiny_method(name, method={"w_dice": 0.5})
    assert trial_key(other, None) != trial_key(cfg, None)
    fg = tiny_method(name, method={"w_dice": 0.5, "dice_background": False})
    assert keyed_dump(fg)["method"]["dice_background"] is False
    assert trial_key(fg, None) != trial_key(other, None)


def test_dice_without_labeled_batches_is_refused_at_config_time() -> None:
    with pytest.raises(ConfigError, match=r"method.w_dice: gmi_pretrain trains without labeled"):
        parse_run_config({"stage": "pretrain", "method": {"name": "gmi_pretrain", "w_dice": 1}})


def _numpy_foreground_dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """``1 - mean over classes 1..C-1`` of the batch-level soft Dice (eps 1e-5), in numpy."""
    x = logits.detach().double().numpy()
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = labels.numpy()
    scores = []
    for c in range(1, x.shape[1]):
        g = (y == c).astype(np.float64)
        pc = p[:, c]
        scores.append((2 * (pc * g).sum() + 1e-5) / (pc.sum() + g.sum() + 1e-5))
    return 1.0 - float(np.mean(scores))


@pytest.mark.parametrize("name", LABELED)
def test_dice_background_false_takes_the_foreground_classes_only(
    name: str, tiny_method, monkeypatch
) -> None:
    """The ``dice`` part is the foreground-only Dice of the very logits the CE term uses (both
    decoders' summed for ideal_finetune); the other parts are those of the default step."""
    lab, unl = _batches()
    seen: list[torch.Tensor] = []
    ce = method_base.cross_entropy

    def spy(logits: torch.Tensor, target: torch.Tensor, **kw: Any) -> torch.Tensor:
        seen.append(logits.detach().clone())
        return ce(logits, target, **kw)

    monkeypatch.setattr(method_base, "cross_entropy", spy)
    fg = _step(tiny_method, name, lab, unl, w_dice=0.7, dice_background=False)
    assert seen
    want = sum(_numpy_foreground_dice_loss(lg, lab["label"]) for lg in seen)
    assert float(fg["dice"]) == pytest.approx(want, rel=1e-5, abs=1e-6)
    seen.clear()
    every = _step(tiny_method, name, lab, unl, w_dice=0.7)
    assert float(every["dice"]) != pytest.approx(want, rel=1e-3)  # the background counted
    for k, v in every.items():
        if k not in ("loss", "dice"):
            assert torch.equal(fg[k], v), k
    torch.testing.assert_close(
        fg["loss"].detach() - every["loss"].detach(), 0.7 * (fg["dice"] - every["dice"])
    )


def test_dice_background_false_without_the_dice_term_is_refused_at_config_time() -> None:
    for method in (
        {"name": "entmin", "dice_background": False},
        {"name": "baseline", "w_dice": 0, "dice_background": False},
        {"name": "full", "w_ce": 1, "dice_background": False},
    ):
        with pytest.raises(ConfigError, match=r"method.dice_background: false .*method.w_dice 0"):
            parse_run_config({"stage": "finetune", "method": method})
    with pytest.raises(ConfigError, match=r"method.dice_background: false .*method.w_dice 0"):
        parse_run_config(
            {"stage": "pretrain", "method": {"name": "gmi_pretrain", "dice_background": False}}
        )
    cfg = parse_run_config(
        {"stage": "finetune", "method": {"name": "entmin", "w_dice": 1, "dice_background": False}}
    )
    assert cfg.method.dice_background is False
