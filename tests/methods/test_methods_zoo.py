"""Mechanisms of the semi-supervised zoo (BIM App. E: MixUp, UA-MT, ICT, adversarial) and the GMI
method (global/local MI, enhanced variant, per-dataset defaults), and their bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch

from segssl.config import ConfigError, parse_run_config
from segssl.data import build_data
from segssl.engine import build_optimizer
from segssl.engine.loop import build_method, optimizer_params
from segssl.methods import get_method
from segssl.methods import ict as ict_module
from segssl.methods.base import Clock
from segssl.models import build_model

NAMES = ("RV", "Myo", "LV")


@pytest.fixture(scope="module")
def batch(tiny):
    cfg = tiny("baseline", "finetune")
    data = build_data(cfg.data, seed=0, labeled=True, unlabeled=True)
    out = (next(data.labeled), next(data.unlabeled))
    data.close()
    return out


def _method(cfg, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(cfg.model, 4)
    cls = get_method(cfg.method.name)
    return build_method(cfg, cls, model, 4, NAMES, torch.device("cpu"), torch.Generator())


def test_uamt_threshold_ramps_from_three_quarters_log_k_to_log_k(tiny_method) -> None:
    # threshold_epochs None: the threshold rises over the whole run
    cfg = tiny_method("uamt", method={"threshold_epochs": None}, train={"epochs": 4})
    m = _method(cfg)
    ipe = cfg.train.iters_per_epoch
    total = 4 * ipe
    at = [m.threshold(Clock(s, (s - 1) // ipe, ipe, total)) for s in (1, 1 + total // 2)]
    assert at[0] == pytest.approx(0.75 * math.log(4))
    assert at[1] == pytest.approx(0.875 * math.log(4))
    end = m.threshold(Clock(total + 1, 4, ipe, total))
    assert end == pytest.approx(math.log(4))


def test_uamt_masks_exactly_the_pixels_below_the_threshold(tiny_method, batch, monkeypatch) -> None:
    cfg = tiny_method("uamt")
    m = _method(cfg)
    seen = {}
    import segssl.methods.uamt as uamt_module

    real_mask, real_mse = uamt_module.uncertainty_mask, uamt_module.mse_consistency

    def spy_mask(entropy, threshold):
        seen["entropy"], seen["threshold"] = entropy, threshold
        seen["mask"] = real_mask(entropy, threshold)
        return seen["mask"]

    def spy_mse(student, teacher, mask=None):
        seen["student"], seen["teacher"], seen["mse_mask"] = student, teacher, mask
        return real_mse(student, teacher, mask)

    monkeypatch.setattr(uamt_module, "uncertainty_mask", spy_mask)
    monkeypatch.setattr(uamt_module, "mse_consistency", spy_mse)
    lab, unl = batch
    out = m.training_step(lab, unl, Clock(1, 0, 2, 4))
    assert seen["threshold"] == pytest.approx(0.75 * math.log(4))
    assert torch.equal(seen["mask"], (seen["entropy"] < seen["threshold"]).float())
    assert 0 < float(seen["mask"].mean()) < 1  # some pixels certain, some not
    assert seen["mse_mask"] is seen["mask"]
    keep = seen["mask"].bool().expand_as(seen["student"])
    want = (seen["student"] - seen["teacher"])[keep].pow(2).mean()
    assert float(out["cons"]) == pytest.approx(float(want.detach()), rel=1e-5)
    assert float(out["certain"]) == pytest.approx(float(seen["mask"].mean()))


def test_ict_mixes_inputs_and_targets_with_the_same_coefficient(
    tiny_method, batch, monkeypatch
) -> None:
    cfg = tiny_method("ict")
    m = _method(cfg)
    lab, unl = batch
    rec = {}
    real = ict_module.mixup

    def spy(x, y, alpha, generator):
        out = real(x, y, alpha, generator)
        rec.update(x=x, y=y, alpha=alpha, out=out)
        return out

    monkeypatch.setattr(ict_module, "mixup", spy)
    inputs = []
    hook = m.model.register_forward_pre_hook(lambda mod, args: inputs.append(args[0]))
    m.training_step(lab, unl, Clock(1, 0, 2, 4))
    hook.remove()
    mixed, target, lam, perm = rec["out"]
    u = unl["image"]
    assert rec["alpha"] == 0.1 and 0.0 <= lam <= 1.0
    with torch.no_grad():
        p_t = m.teacher(u).float().softmax(1)
    torch.testing.assert_close(rec["y"], p_t)  # the target mixes the teacher's predictions
    torch.testing.assert_close(mixed, lam * u + (1 - lam) * u[perm])
    torch.testing.assert_close(target, lam * p_t + (1 - lam) * p_t[perm])
    torch.testing.assert_close(inputs[0][len(lab["image"]) :], mixed)  # the student sees the mix


def test_discriminator_and_segmenter_optimisers_move_only_their_own_parameters(tiny, batch) -> None:
    cfg = tiny("adversarial", "semi", method={"name": "adversarial", "disc_widths": [8, 16]})
    m = _method(cfg)
    groups = optimizer_params(cfg, m)
    assert set(groups) == {"main", "discriminator"}
    opts = {k: build_optimizer(s, named) for k, (s, named) in groups.items()}
    main_names = {n for n, _ in groups["main"][1]}
    disc_names = {n for n, _ in groups["discriminator"][1]}
    assert disc_names and all(n.startswith("discriminator.") for n in disc_names)
    assert not main_names & disc_names

    def own_step(key: str, loss: torch.Tensor) -> None:
        opts[key].zero_grad(set_to_none=True)
        loss.backward()
        opts[key].step()

    m._stepper = own_step
    snap = lambda: {k: v.detach().clone() for k, v in m.named_parameters()}  # noqa: E731
    lab, unl = batch
    clock = Clock(1, 0, 2, 4)
    before = snap()
    out = m.training_step(lab, unl, clock)
    opts["main"].zero_grad()
    out["loss"].backward()
    opts["main"].step()
    mid = snap()
    moved = {k for k in before if not torch.equal(before[k], mid[k])}
    assert moved and moved <= main_names  # the segmenter's step leaves the discriminator alone
    m.after_step(clock)
    after = snap()
    moved = {k for k in mid if not torch.equal(mid[k], after[k])}
    assert moved and moved <= disc_names  # the discriminator's step leaves the segmenter alone


def test_gmi_builds_heads_per_tap_and_reports_its_terms(tiny, batch) -> None:
    cfg = tiny(
        "gmi",
        "semi",
        method={"name": "gmi", "local_taps": {"decoder3": 1, "decoder4": 3}, "k_enc": 3},
    )
    m = _method(cfg)
    assert set(m.heads["global"]) == {"encoder"} and set(m.heads["local"]) == {
        "decoder3",
        "decoder4",
    }
    assert m.heads["global"]["encoder"].k == 3 and m.heads["local"]["decoder4"].k == 10
    assert m.heads["local"]["decoder3"].n_heads == 5
    assert m.loss_parts() == ("ce", "global_mi", "local_mi", "cons")
    lab, unl = batch
    out = m.training_step(lab, unl, Clock(1, 0, 2, 4))
    assert -math.log(10) - 1e-5 <= float(out["local_mi"]) <= 0
    assert -math.log(3) - 1e-5 <= float(out["global_mi"]) <= 0
    only_local = tiny("gmi", "semi", method={"name": "gmi", "global_taps": []})
    assert _method(only_local).loss_parts() == ("ce", "local_mi", "cons")
    mi_only = tiny("gmi", "semi", method={"name": "gmi", "w_cons": 0})
    assert _method(mi_only).loss_parts() == ("ce", "global_mi", "local_mi")


def test_gmi_enhanced_takes_the_x_side_from_the_ema_teacher(tiny, batch) -> None:
    cfg = tiny("gmi", "semi", method={"name": "gmi", "teacher": True, "ema_decay": 0.5})
    m = _method(cfg)
    lab, unl = batch
    clock = Clock(1, 0, 2, 4)
    with torch.no_grad():
        m.model.Conv1[0].weight.add_(1.0)  # the student drifts away from its teacher copy
    calls = []
    hook = m.teacher.net.register_forward_hook(lambda mod, a, o: calls.append(a[0]))
    m.training_step(lab, unl, clock)
    hook.remove()
    assert len(calls) == 1 and torch.equal(calls[0], unl["image"])
    t0 = m.teacher.net.Conv1[0].weight.clone()
    m.after_step(clock)
    want = 0.5 * t0 + 0.5 * m.model.Conv1[0].weight
    torch.testing.assert_close(m.teacher.net.Conv1[0].weight, want)


def test_gmi_lambdas_default_per_dataset_and_explicit_values_win() -> None:
    def method(dataset: str, **kw):
        return parse_run_config(
            {"data": {"dataset": dataset}, "method": {"name": "gmi", **kw}}
        ).method

    acdc, prostate, spleen = method("acdc"), method("promise12"), method("msd-spleen")
    assert (acdc.w_global, acdc.w_local, acdc.w_cons) == (0.1, 0.1, 5.0)
    assert (prostate.w_global, prostate.w_local, prostate.w_cons) == (0.05, 0.05, 10.0)
    assert (spleen.w_global, spleen.w_local, spleen.w_cons) == (0.05, 0.05, 5.0)
    assert method("mmwhs-ct").w_cons == 5.0
    assert method("promise12", w_cons=1.0).w_cons == 1.0
    assert parse_run_config(
        {"data": {"dataset": "promise12"}, "method": {"name": "consistency"}}
    ).method.w_cons == pytest.approx(10.0)
    paper = get_method("gmi").Config()
    assert (paper.k_enc, paper.k_dec, paper.heads, paper.ema_decay) == (10, 10, 5, 0.999)
    assert paper.global_taps == ("encoder",) and paper.local_taps == {"decoder3": 1, "decoder4": 3}
    assert get_method("uamt").Config().passes == 4
    assert get_method("ict").Config().alpha == 0.1 and get_method("mixup").Config().alpha == 1.0


@pytest.mark.parametrize(
    ("method", "match"),
    [
        ({"name": "gmi", "k_enc": 1}, "method.k_enc"),
        ({"name": "gmi", "k_dec": 0}, "method.k_dec"),
        ({"name": "gmi", "ema_decay": 1.0}, "method.ema_decay"),
        ({"name": "uamt", "ema_decay": 0.0}, "method.ema_decay"),
        ({"name": "gmi", "local_taps": {"decoder4": -1}}, "half-widths must be >= 0"),
    ],
)
def test_bad_configs_fail_validation(method: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_run_config({"method": method})


@pytest.mark.parametrize(
    ("name", "sections", "match"),
    [
        ("gmi", {"method": {"name": "gmi", "local_taps": {"Up_conv3": 1}}}, "valid roles"),
        ("gmi", {"method": {"name": "gmi", "global_taps": ["bottleneck"]}}, "valid roles"),
        # decoder1 (Up_conv5) is 4x4 at a 32 px crop: a 7x7 window does not fit
        ("gmi", {"method": {"name": "gmi", "local_taps": {"decoder1": 3}}}, "does not fit"),
        # no random crop: the window is checked against the full (preprocessed) 32 px image
        (
            "gmi",
            {"method": {"name": "gmi", "local_taps": {"decoder1": 3}}, "augment": {"crop": 0}},
            "does not fit",
        ),
        ("uamt", {}, "model.dropout"),
        ("gmi_pretrain", {"method": {"name": "gmi_pretrain", "w_ce": 1.0}}, "w_ce must be 0"),
    ],
)
def test_bad_input_is_refused_when_the_method_is_built(tiny, name, sections, match) -> None:
    stage = "pretrain" if name == "gmi_pretrain" else "semi"
    with pytest.raises(ValueError, match=match):
        _method(tiny(name, stage, **sections))


@pytest.mark.parametrize("name", ["mean_teacher", "gmi"])
def test_a_semi_method_starts_from_pretrained_weights_teacher_included(
    name, tiny, tiny_method, tmp_path, monkeypatch
) -> None:
    """Table 6's "MT + pre-training" rows: a semi method initialised by a pre-training stage
    (train.init_from, its 1x1 head excluded) starts, EMA teacher included, from those weights."""
    import segssl.engine.loop as loop
    from segssl.engine import train
    from segssl.engine.checkpoint import load_checkpoint

    short = {"epochs": 1, "iters_per_epoch": 1}
    pre = train(tiny("bim", "pretrain", train=short), workdir=tmp_path / "p")
    weights = load_checkpoint(pre["checkpoints"]["last"])["model"]
    snap: dict = {}
    real = loop.build_method

    def spy(*args, **kwargs):
        method = real(*args, **kwargs)
        snap.update({k: v.clone() for k, v in method.teacher.net.state_dict().items()})
        return method

    monkeypatch.setattr(loop, "build_method", spy)
    init = {"init_from": pre["checkpoints"]["last"], "init_exclude": ["Conv_1x1"]}
    method = {"teacher": True} if name == "gmi" else {}
    train(tiny_method(name, method=method, train={**short, **init}), workdir=tmp_path / "s")
    assert snap, "the method was not built"
    body = [k for k in weights if not k.startswith("Conv_1x1")]
    assert body and all(torch.equal(snap[k], weights[k]) for k in body)


def test_uamt_each_mc_pass_gets_its_own_clipped_input_noise(tiny_method, batch) -> None:
    # UA-MT (Yu et al. 2019): T stochastic passes "under random dropout and input Gaussian
    # noise": every pass draws its own noise, clipped at twice teacher_noise
    cfg = tiny_method("uamt")
    m = _method(cfg)
    seen: list[torch.Tensor] = []
    hook = m.teacher.net.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    lab, unl = batch
    m.training_step(lab, unl, Clock(1, 0, 2, 4))
    hook.remove()
    assert len(seen) == cfg.method.passes
    sigma, x_u = cfg.method.teacher_noise, unl["image"]
    for i, a in enumerate(seen):
        assert float((a - x_u).abs().max()) <= 2 * sigma + 1e-6
        for b in seen[i + 1 :]:
            assert not torch.allclose(a, b)
