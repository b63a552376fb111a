"""Every registered method: two CPU optimisation steps on real (synthetic ACDC) batches.

Expectations come from the registry itself: the parts a step returns are the method's
declared ``loss_parts()``, and every registry key equals its config's ``name``."""

from __future__ import annotations

import math

import pytest
import torch

from segssl.config import ConfigError, parse_run_config
from segssl.data import build_data
from segssl.engine.loop import build_method
from segssl.methods import REGISTRY, UnknownMethodError, check_registry, get_method, variant
from segssl.methods.base import Clock
from segssl.methods.baseline import Baseline
from segssl.models import build_model


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_key_is_the_config_name(name: str) -> None:
    cls = REGISTRY[name]
    assert cls.Config().name == name
    assert parse_run_config({"method": {"name": name}}).method.name == name


def test_a_key_that_differs_from_its_config_name_is_refused() -> None:
    with pytest.raises(
        ValueError, match="registry key 'ce_only' maps to a Config named 'baseline'"
    ):
        check_registry({"ce_only": Baseline})


def test_variants_change_only_defaults() -> None:
    """One-line variants keep the parent's checks and differ only where declared."""
    iic, bim = REGISTRY["iic"].Config(), REGISTRY["bim"].Config()
    same = {k for k in type(bim).model_fields if k != "name"}
    diff = {k for k in same if getattr(iic, k) != getattr(bim, k)}
    assert diff == {"alpha", "w_con", "w_cc"}
    with pytest.raises(ConfigError, match="method.alpha"):  # the parent's bound 0 <= alpha <= 1
        parse_run_config({"method": {"name": "iic", "alpha": 2}})
    assert REGISTRY["finetune"].init == "required" and Baseline.init == "forbidden"
    with pytest.raises(ValueError, match="has no setting 'w_xx'"):
        variant(Baseline, "typo", w_xx=1.0)


@pytest.fixture(scope="module")
def batches(tiny):
    cfg = tiny("baseline", "finetune")
    data = build_data(cfg.data, seed=0, labeled=True, unlabeled=True)
    out = [(next(data.labeled), next(data.unlabeled)) for _ in range(2)]
    data.close()
    return out, data.num_classes


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_two_steps(name: str, tiny_method, batches, engine_optimizers) -> None:
    cls = get_method(name)
    cfg = tiny_method(name, train={"init_from": None})
    (steps, num_classes) = batches
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes)
    gen = torch.Generator().manual_seed(0)
    method = build_method(
        cfg, cls, model, num_classes, ("RV", "Myo", "LV"), torch.device("cpu"), gen
    )
    expected = set(method.loss_parts())
    assert expected and set(method.weights()) <= expected
    before = {k: v.detach().clone() for k, v in method.named_parameters()}
    opt = engine_optimizers(cfg, method)  # owned optimisers stepped by the method itself
    for i, (lab, unl) in enumerate(steps):
        clock = Clock(i + 1, 0, 2, 4)
        out = method.training_step(
            lab if cls.uses_labeled else None, unl if cls.uses_unlabeled else None, clock
        )
        assert set(out) == {"loss"} | expected
        assert all(math.isfinite(float(v.detach())) for v in out.values()), out
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        method.after_step(clock)
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
        cls = get_method("bim")
        method = build_method(cfg, cls, build_model(cfg.model, 4), 4, ("a", "b", "c"), "cpu")
        assert method.loss_parts() == parts, label
        assert set(method.heads) == heads, label


def test_paper_defaults() -> None:
    bim = get_method("bim").Config()
    assert (bim.k, bim.heads, bim.alpha, bim.lambda_cc, bim.temperature) == (40, 3, 0.5, 1.0, 0.07)
    assert (bim.window, bim.edge, bim.dense_tap, bim.global_tap) == (
        5,
        "sobel",
        "decoder4",
        "encoder",
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
        ({"name": "bimm"}, "unknown method 'bimm' \\(did you mean 'bim'\\?\\); known methods:"),
    ],
)
def test_bad_method_configs(method: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_run_config({"method": method})


def test_unknown_method_lists_known() -> None:
    with pytest.raises(UnknownMethodError) as exc:
        get_method("contrast_encdec")
    assert "did you mean 'contrast_enc_dec'" in str(exc.value)
    assert "known methods: " + ", ".join(sorted(REGISTRY)) in str(exc.value)


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
def test_unknown_feature_tap_lists_the_valid_roles(name: str, key: str, tiny) -> None:
    """Refused while the config is validated (a sweep's plan refuses the trial)."""
    msg = rf"method.{key}: 'decoder9' is not a tap role .* valid roles: \['encoder'"
    with pytest.raises(ConfigError, match=msg):
        tiny(name, "pretrain", method={"name": name, key: "decoder9"})


def test_variant_configs_survive_pickling() -> None:
    """A trial's RunConfig travels to a Ray worker by (cloud)pickle: a variant's config must come
    back as the registered class (a copied class failed the method's isinstance check)."""
    import pickle

    cfg = parse_run_config({"method": {"name": "finetune"}})
    back = pickle.loads(pickle.dumps(cfg))
    assert type(back.method) is REGISTRY["finetune"].Config
    model = build_model(back.model, 2)
    method = build_method(back, REGISTRY["finetune"], model, 2, ("LV",), torch.device("cpu"))
    assert method.cfg == cfg.method


def test_importing_the_methods_does_not_import_matplotlib():
    """Matplotlib (seconds of import) loads when a cluster picture is drawn, not when a dry run
    or a trial imports the methods to validate its config."""
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, segssl.methods; print('matplotlib' in sys.modules)"
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": root}
    )
    assert out.stdout.strip() == "False", out.stdout + out.stderr
