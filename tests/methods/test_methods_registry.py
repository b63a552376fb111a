"""Every registered method: two CPU optimisation steps on real (synthetic ACDC) batches."""

from __future__ import annotations

import math

import pytest
import torch

from segssl.config import ConfigError, parse_run_config
from segssl.data import build_data
from segssl.engine import build_optimizer
from segssl.methods import REGISTRY, UnknownMethodError, get_method
from segssl.methods.base import MethodContext
from segssl.models import build_model

# the loss components each method must report besides "loss"
EXPECTED = {
    "baseline": {"ce"},
    "full": {"ce"},
    "finetune": {"ce"},
    "bim": {"con", "mi", "cc"},
    "iic": {"mi"},
    "imsat": {"imsat", "sat", "marginal_entropy", "conditional_entropy"},
    "contrast_enc": {"enc"},
    "contrast_dec": {"dec"},
    "contrast_enc_dec": {"enc", "dec"},
}


def test_every_registered_method_is_covered() -> None:
    assert set(EXPECTED) == set(REGISTRY)


@pytest.fixture(scope="module")
def batches(tiny):
    cfg = tiny("baseline", "finetune")
    data = build_data(cfg.data, seed=0, labeled=True, unlabeled=True)
    out = [(next(data.labeled), next(data.unlabeled)) for _ in range(2)]
    data.close()
    return out, data.num_classes


def _stage(cls) -> str:
    return {(True, False): "finetune", (False, True): "pretrain", (True, True): "semi"}[
        (cls.uses_labeled, cls.uses_unlabeled)
    ]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_two_steps(name: str, tiny, batches) -> None:
    cls = get_method(name)
    extra = {"train": {"init_from": None}}
    cfg = tiny(name, _stage(cls), **extra)
    (steps, num_classes) = batches
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes)
    ctx = MethodContext(
        num_classes,
        ("RV", "Myo", "LV"),
        torch.device("cpu"),
        cfg.augment,
        3,
        torch.Generator().manual_seed(0),
    )
    method = cls(model, cfg.method, ctx)
    assert set(method.loss_parts()) == EXPECTED[name]
    before = {k: v.detach().clone() for k, v in method.named_parameters()}
    opt = build_optimizer(cfg.optim, method.parameters())
    for lab, unl in steps:
        out = method.training_step(
            lab if cls.uses_labeled else None, unl if cls.uses_unlabeled else None
        )
        assert set(out) == {"loss"} | EXPECTED[name]
        assert all(math.isfinite(float(v.detach())) for v in out.values()), out
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    changed = {k for k, v in method.named_parameters() if not torch.equal(v, before[k])}
    assert changed, "no parameter moved"
    if method.heads:  # the method's own heads are trained too
        assert any(k.startswith("heads.") for k in changed)


def test_bim_configurations_select_terms(tiny) -> None:
    only = {
        "only MI": ({"w_con": 0, "w_cc": 0}, ("mi",), {"cluster"}),
        "only CC": ({"w_con": 0, "w_mi": 0}, ("cc",), {"cluster"}),
        "MI+CC": ({"w_con": 0}, ("mi", "cc"), {"cluster"}),
        "Contrast(Enc)+Ours": ({}, ("con", "mi", "cc"), {"cluster", "global"}),
        "only con": ({"w_mi": 0, "w_cc": 0}, ("con",), {"global"}),
    }
    for label, (weights, parts, heads) in only.items():
        cfg = tiny("bim", "pretrain", method={"name": "bim", **weights})
        ctx = MethodContext(
            4, ("a", "b", "c"), torch.device("cpu"), cfg.augment, 3, torch.Generator()
        )
        method = get_method("bim")(build_model(cfg.model, 4), cfg.method, ctx)
        assert method.loss_parts() == parts, label
        assert set(method.heads) == heads, label


def test_paper_defaults() -> None:
    bim = get_method("bim").Config()
    assert (bim.k, bim.heads, bim.alpha, bim.lambda_cc, bim.temperature) == (40, 3, 0.5, 1.0, 0.07)
    assert (bim.window, bim.edge, bim.dense_tap, bim.global_tap) == (
        5,
        "sobel",
        "Up_conv2",
        "Conv5",
    )
    iic = get_method("iic").Config()
    assert (iic.alpha, iic.w_cc, iic.w_con, iic.w_mi) == (0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    ("method", "match"),
    [
        ({"name": "bim", "alpha": 1.5}, "method.alpha"),
        ({"name": "bim", "k": 1}, "method.k"),
        ({"name": "bim", "w_cc": -1}, "method.w_cc"),
        ({"name": "bim", "window": 4}, "method.window"),
        ({"name": "bim", "w_con": 0, "w_mi": 0, "w_cc": 0}, "all loss weights are 0"),
        ({"name": "bim", "kk": 3}, "method.kk: unknown key"),
        ({"name": "contrast_enc_dec", "w_enc": 0, "w_dec": 0}, "both w_enc and w_dec are 0"),
        ({"name": "imsat", "mu": -1}, "method.mu"),
        ({"name": "bmi"}, "unknown method 'bmi' \\(did you mean 'bim'\\?\\); known methods:"),
    ],
)
def test_bad_method_configs(method: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_run_config({"method": method})


def test_unknown_method_lists_known() -> None:
    with pytest.raises(UnknownMethodError) as exc:
        get_method("contrast_encdec")
    assert "did you mean 'contrast_enc_dec'" in str(exc.value)
    assert "baseline, bim, contrast_dec" in str(exc.value)


def test_full_pins_all_labels() -> None:
    cfg = parse_run_config({"method": {"name": "full"}, "data": {"labeled_scans": 2}})
    assert cfg.data.labeled_scans == "100%"
    assert parse_run_config({"method": {"name": "baseline"}}).data.labeled_scans == 1


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("bim", "dense_tap"),
        ("bim", "global_tap"),
        ("imsat", "dense_tap"),
        ("contrast_enc_dec", "global_tap"),
        ("contrast_enc_dec", "dense_tap"),
    ],
)
def test_unknown_feature_tap_names_the_blocks(name: str, key: str, tiny) -> None:
    cfg = tiny(name, "pretrain", method={"name": name, key: "Up_conv9"})
    ctx = MethodContext(2, ("LV",), torch.device("cpu"), cfg.augment, 3, torch.Generator())
    with pytest.raises(ValueError, match=r"'Up_conv9' is not a U-Net block; known: \['Conv1'"):
        get_method(name)(build_model(cfg.model, 2), cfg.method, ctx)
