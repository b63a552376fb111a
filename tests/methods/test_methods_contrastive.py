"""Chaitanya et al.'s and IDEAL's methods beyond the registry-wide two steps: what they train,
freeze and carry, and the bad input the issue names."""

from __future__ import annotations

import inspect

import pytest
import torch

from segssl.config import ConfigError
from segssl.data import build_data
from segssl.engine.loop import EngineConfigError, build_method, check_run
from segssl.methods import get_method
from segssl.methods.base import Clock
from segssl.models import build_model


@pytest.fixture(scope="module")
def batches(tiny):
    cfg = tiny("baseline", "finetune")
    data = build_data(cfg.data, seed=0, labeled=True, unlabeled=True)
    out = [(next(data.labeled), next(data.unlabeled)) for _ in range(2)]
    data.close()
    return out, data.num_classes


def _method(tiny, batches, name: str, stage: str, **sections):
    cfg = tiny(name, stage, **sections)
    torch.manual_seed(0)
    model = build_model(cfg.model, batches[1])
    gen = torch.Generator().manual_seed(0)
    cls = get_method(name)
    return build_method(cfg, cls, model, batches[1], ("RV", "Myo", "LV"), torch.device("cpu"), gen)


def test_unknown_strategy_and_decoder_length_are_config_errors(tiny) -> None:
    with pytest.raises(ConfigError, match="method.strategy"):
        tiny("contrast_global", "pretrain", method={"name": "contrast_global", "strategy": "GD"})
    with pytest.raises(ConfigError, match="method.strategy"):
        tiny(
            "contrast_local",
            "pretrain",
            method={"name": "contrast_local", "strategy": "domain_minus"},
        )
    for bad in (0, 6):
        with pytest.raises(ConfigError, match="method.blocks"):
            tiny("contrast_local", "pretrain", method={"name": "contrast_local", "blocks": bad})


def test_decoder_stage_needs_a_pretrained_encoder(tiny) -> None:
    cfg = tiny("contrast_local", "pretrain", train={"init_from": None})
    with pytest.raises(EngineConfigError, match="starts from a pre-trained checkpoint"):
        check_run(cfg)


def test_decoder_stage_without_a_parent_is_refused_by_the_sweep_plan(tiny_yaml, tmp_path) -> None:
    from segssl.orchestrate.plan import plan_sweep
    from segssl.orchestrate.spec import SpecError, parse_sweep

    base = tiny_yaml("contrast_local", "pretrain")
    for key in ("method", "stage"):
        base.pop(key)
    dec = {"config": {"stage": "pretrain", "method": {"name": "contrast_local"}}}
    raw = {"name": "nofrom", "seeds": [0], "base": base, "stages": {"dec": dec}}
    with pytest.raises(SpecError, match=r"stages.dec: method 'contrast_local' starts from a "
                       r"pre-trained checkpoint, but the stage has no 'from:'"):  # fmt: skip
        plan_sweep(parse_sweep(raw), storage=tmp_path / "s", root=tmp_path)
    # with a parent stage it plans, its trials starting from the parent's checkpoint
    enc = {"config": {"stage": "pretrain", "method": {"name": "contrast_global"}}}
    raw["stages"] = {"enc": enc, "dec": {**dec, "from": "enc"}}
    plan = plan_sweep(parse_sweep(raw), storage=tmp_path / "s", root=tmp_path)
    assert plan.trials["dec"][0].config.train.init_from.endswith("checkpoints/last.pt")


def test_more_decoder_blocks_than_the_model_has(tiny, batches) -> None:
    with pytest.raises(ValueError, match="method.blocks=5: the model has 4 decoder blocks"):
        _method(tiny, batches, "contrast_local", "pretrain",
                method={"name": "contrast_local", "blocks": 5})  # fmt: skip


@pytest.mark.parametrize(
    ("name", "key"), [("contrast_global", "tap"), ("ideal_pretrain", "tap"), ("rotation", "tap")]
)
def test_unknown_tap_role_of_resnet50_is_a_config_error(tiny, name, key) -> None:
    """Refused while the config is validated (so a sweep's plan refuses the trial), with the
    architecture's valid roles."""
    resnet = {"name": "resnet50_unet"}
    with pytest.raises(ConfigError, match=rf"method.{key}: 'layer4' is not a tap role of model "
                       r"'resnet50_unet'; valid roles: \['encoder', 'encoder1'"):  # fmt: skip
        tiny(name, "pretrain", model=resnet, method={"name": name, key: "layer4"})
    tiny(name, "pretrain", model=resnet, method={"name": name, key: "encoder4"})


def test_unknown_tap_roles_of_other_methods_are_config_errors(tiny) -> None:
    with pytest.raises(ConfigError, match=r"method.dense_tap: 'decoder5' is not a tap role"):
        tiny("contrast_enc_dec", "pretrain",
             method={"name": "contrast_enc_dec", "dense_tap": "decoder5"})  # fmt: skip
    with pytest.raises(ConfigError, match=r"method.local_taps: 'Up_conv2' is not a tap role"):
        tiny("gmi", "semi", method={"name": "gmi", "local_taps": {"Up_conv2": 1}})


def test_global_versions_per_strategy(tiny, batches) -> None:
    steps, _ = batches
    sizes = {}
    for strategy in ("random", "domain_minus", "domain"):
        m = _method(tiny, batches, "contrast_global", "pretrain",
                    method={"name": "contrast_global", "strategy": strategy})  # fmt: skip
        seen = []
        m.heads["g1"].register_forward_hook(lambda _m, i, o, seen=seen: seen.append(i[0].shape[0]))
        out = m.training_step(None, steps[0][1], Clock(1, 0, 2, 4))
        assert torch.isfinite(out["loss"])
        sizes[strategy] = seen[0]
        assert m.carry == "model:encoder"
        assert set(m.carried_state()) == {
            k for k in m.model.state_dict() if k.split(".")[0].startswith("Conv") and k[4] != "_"
        }
    n = steps[0][1]["image"].shape[0]
    assert sizes == {"random": 2 * n, "domain_minus": 3 * n, "domain": 3 * n}


def test_local_freezes_the_encoder_computes_and_carries_d_l_only(tiny, batches) -> None:
    steps, _ = batches
    m = _method(tiny, batches, "contrast_local", "pretrain",
                method={"name": "contrast_local", "blocks": 2, "region_size": 1})  # fmt: skip
    m.train()
    enc = [n for n, _ in m.model.named_parameters() if n.startswith("Conv") and n[4] != "_"]
    assert enc and not any(p.requires_grad for n, p in m.model.named_parameters() if n in enc)
    assert all(not b.training for n, b in m.model.named_modules()
               if n.startswith("Conv1.") and isinstance(b, torch.nn.BatchNorm2d))  # fmt: skip
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    out = m.training_step(None, steps[0][1], Clock(1, 0, 2, 4))
    out["loss"].backward()
    moved_bn = {k.split(".")[0] for k, v in m.model.state_dict().items()
                if "running_mean" in k and not torch.equal(v, before[k])}  # fmt: skip
    assert moved_bn == {"Up5", "Up_conv5", "Up4", "Up_conv4"}  # d_2 only; encoder frozen
    grads = {n.split(".")[0] for n, p in m.model.named_parameters() if p.grad is not None}
    assert grads == {"Up5", "Up_conv5", "Up4", "Up_conv4"}
    carried = {k.split(".")[0] for k in m.carried_state()}
    assert carried == {"Conv1", "Conv2", "Conv3", "Conv4", "Conv5", "Up5", "Up_conv5", "Up4",
                       "Up_conv4"}  # fmt: skip


def test_too_many_regions_for_the_feature_map_is_a_config_error(tiny) -> None:
    """Refused while the config is validated (before data, model or a sweep's trial): the
    message names the keys, the map of decoder block l at the training input size and A."""
    local = {"name": "contrast_local", "blocks": 1, "region_size": 3}
    with pytest.raises(ConfigError, match=r"method.regions=13 \(A\), method.region_size=3 "
                       r"\(K\): the feature map of decoder block method.blocks=1 \(l\) is 4x4 "
                       r"at the training input augment.crop=32; A=13 local regions"):  # fmt: skip
        tiny("contrast_local", "pretrain", method=local)
    with pytest.raises(ConfigError, match=r"is 4x4 at the training input data.preprocess.size="
                       r"\[32, 32\]"):  # fmt: skip
        tiny("contrast_local", "pretrain", method=local, augment={"crop": 0})
    # the map of the architecture in use: ResNet-50's decoder1 is at stride 16
    with pytest.raises(ConfigError, match=r"is 2x2 at the training input augment.crop=32; a 3x3"):
        tiny("contrast_local", "pretrain", method=local, model={"name": "resnet50_unet"})
    with pytest.raises(ConfigError, match=r"method.regions=13 \(A\), method.region_size=3"):
        tiny("contrast_joint", "pretrain", method={**local, "name": "contrast_joint"})
    # what fits is accepted: 1x1 regions in block 2's 8x8 map, or the local term off
    tiny("contrast_local", "pretrain", method={**local, "blocks": 2, "region_size": 1})
    tiny("contrast_joint", "pretrain", method={**local, "name": "contrast_joint", "w_local": 0})


def test_too_many_regions_refused_by_the_sweep_plan(tiny_yaml, tmp_path) -> None:
    from segssl.orchestrate.plan import plan_sweep
    from segssl.orchestrate.spec import SpecError, parse_sweep

    base = tiny_yaml("contrast_global", "pretrain")
    base.pop("method")
    base.pop("stage")
    raw = {
        "name": "regions",
        "seeds": [0],
        "base": base,
        "stages": {
            "enc": {"config": {"stage": "pretrain", "method": {"name": "contrast_global"}}},
            "dec": {
                "from": "enc",
                "config": {"stage": "pretrain", "method": {"name": "contrast_local"}},
                "grid": {"method.blocks": [3, 1]},
            },
        },
    }
    with pytest.raises(SpecError, match=r"(?s)stages.dec trial \(method.blocks=1, seed=0\): "
                       r"invalid configuration.*method.regions=13 \(A\)"):  # fmt: skip
        plan_sweep(parse_sweep(raw), storage=tmp_path / "s", root=tmp_path)


def test_joint_trains_the_encoder_with_both_losses(tiny, batches) -> None:
    steps, _ = batches
    m = _method(tiny, batches, "contrast_joint", "pretrain",
                method={"name": "contrast_joint", "w_local": 10.0})  # fmt: skip
    assert m.weights() == {"global": 1.0, "local": 10.0}
    out = m.training_step(None, steps[0][1], Clock(1, 0, 2, 4))
    torch.testing.assert_close(out["loss"], out["global"] + 10.0 * out["local"])
    out["loss"].backward()
    assert m.model.Conv1[0].weight.grad is not None and m.heads["g1"].mlp[0].weight.grad is not None


def test_self_training_teacher_is_frozen_and_labels_the_unlabeled(tiny, batches) -> None:
    steps, _ = batches
    m = _method(tiny, batches, "self_training", "semi",
                method={"name": "self_training", "threshold": 0.9})  # fmt: skip
    m.train()
    assert not m.teacher.training and not any(p.requires_grad for p in m.teacher.parameters())
    teacher = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    for i, (lab, unl) in enumerate(steps):
        out = m.training_step(lab, unl, Clock(i + 1, 0, 2, 4))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert all(torch.equal(v, teacher[k]) for k, v in m.teacher.state_dict().items())
    x = steps[0][1]["image"]
    with torch.no_grad():
        prob = m.teacher(x).softmax(1)
    y = m.pseudo_labels(x)
    assert torch.equal(y == -100, prob.max(1).values < 0.9)
    assert torch.equal(y[y >= 0], prob.argmax(1)[y >= 0])


def test_ideal_decoders_differ_and_both_learn_from_the_unlabeled_loss(tiny, batches) -> None:
    steps, _ = batches
    m = _method(tiny, batches, "ideal_finetune", "semi",
                method={"name": "ideal_finetune", "w_sup": 0.0})  # fmt: skip
    a, b = m.model.decoders
    assert (a.kind, b.kind) == ("transpose", "bilinear")
    assert [p.shape for p in a.parameters()] != [p.shape for p in b.parameters()]
    lab, unl = steps[0]
    out = m.training_step(lab, unl, Clock(1, 0, 2, 4))
    assert set(out) == {"loss", "cross"}  # the unlabeled cross term alone
    out["loss"].backward()
    for i in (0, 1):
        g = [p.grad for p in m.model.decoders[i].parameters()]
        assert all(x is not None for x in g) and sum(float(x.abs().sum()) for x in g) > 0
    assert m.model.encoder.stem[0].weight.grad is not None
    # decoder 1's one-hot prediction is a target of decoder 0, not a path: CE(p1, y2) alone
    # moves decoder 0 and leaves decoder 1 without gradient
    m.zero_grad(set_to_none=True)
    u1, u2 = m.both(unl["image"])
    torch.nn.functional.cross_entropy(u1, u2.argmax(1)).backward()
    assert all(p.grad is not None for p in a.parameters())
    assert all(p.grad is None for p in b.parameters())
    assert m.predict(unl["image"]).shape == u1.shape


def test_ideal_finetune_pins_the_two_decoder_resnet(tiny) -> None:
    cfg = tiny("ideal_finetune", "semi")
    assert (cfg.model.name, cfg.model.decoders) == ("resnet50_unet", ("transpose", "bilinear"))


def test_ideal_pretrain_positives_follow_the_transform(tiny, batches) -> None:
    steps, _ = batches
    m = _method(tiny, batches, "ideal_pretrain", "pretrain")
    out = m.training_step(None, steps[0][1], Clock(1, 0, 2, 4))
    assert torch.isfinite(out["loss"]) and m.carry == "model:encoder"
    assert isinstance(m.heads["projection"], torch.nn.Conv2d)  # 1x1 conv head, no pooling/MLP
    assert m.heads["projection"].kernel_size == (1, 1)


def test_pretext_methods_carry(tiny, batches) -> None:
    steps, _ = batches
    rot = _method(tiny, batches, "rotation", "pretrain")
    assert rot.carry == "model:encoder"
    out = rot.training_step(None, steps[0][1], Clock(1, 0, 2, 4))
    assert torch.isfinite(out["loss"])
    for name in ("inpainting", "context_restoration"):
        m = _method(tiny, batches, name, "pretrain")
        assert m.carry == "model" and "reconstruction" in m.heads
        assert torch.isfinite(m.training_step(None, steps[0][1], Clock(1, 0, 2, 4))["loss"])


@pytest.mark.parametrize("name", ["inpainting", "context_restoration"])
def test_reconstruction_pretexts_carry_encoder_and_decoder_not_the_head(tiny, batches, name):
    """The segmentation layer is never trained by the pretext: the fine-tuning initialises it
    with its own seed instead of receiving the pre-training's random one."""
    m = _method(tiny, batches, name, "pretrain")
    every = set(m.model.state_dict())
    assert set(m.carried_state()) == {k for k in every if not k.startswith("Conv_1x1.")}
    assert any(k.startswith("Conv_1x1.") for k in every)


def test_inpainting_fills_removed_regions_with_the_visible_mean(tiny, batches) -> None:
    """Pathak et al. set dropped regions to zero of zero-centred inputs, i.e. the mean; with
    intensities in [0, 1] a zero fill is the darkest value (background-like)."""
    steps, _ = batches
    m = _method(tiny, batches, "inpainting", "pretrain")
    seen = []
    m.reconstruct = lambda xc: seen.append(xc) or xc  # type: ignore[method-assign]
    x = steps[0][1]["image"]
    m.training_step(None, steps[0][1], Clock(1, 0, 2, 4))
    xc = seen[0]
    removed = xc != x
    for i in range(x.shape[0]):
        hole = removed[i]
        assert hole.any()
        visible_mean = x[i][~hole].mean()
        torch.testing.assert_close(xc[i][hole], visible_mean.expand(int(hole.sum())))
        assert float(visible_mean) > 0.05
    zero = _method(tiny, batches, "inpainting", "pretrain",
                   method={"name": "inpainting", "fill": "zero"})  # fmt: skip
    zero.reconstruct = lambda xc: seen.append(xc) or xc  # type: ignore[method-assign]
    zero.training_step(None, steps[0][1], Clock(1, 0, 2, 4))
    assert float(seen[1][seen[1] != x].abs().max()) == 0.0


@pytest.mark.parametrize("name", ["inpainting", "context_restoration"])
def test_reconstruction_pretexts_on_resnet50(tiny, batches, name) -> None:
    """ResNet-50's last decoder block is at stride 2: the reconstruction is brought to the
    input size (as the network's own logits are) instead of failing on the shape."""
    steps, _ = batches
    m = _method(tiny, batches, name, "pretrain", model={"name": "resnet50_unet"})
    x = steps[0][1]["image"]
    assert m.reconstruct(x).shape == x.shape
    out = m.training_step(None, steps[0][1], Clock(1, 0, 2, 4))
    out["loss"].backward()
    assert m.model.encoder.stem[0].weight.grad is not None


def test_domain_strategies_get_each_slice_volume(tiny, batches, monkeypatch) -> None:
    import segssl.methods.contrast_global as cg
    import segssl.methods.contrast_local as cl

    steps, _ = batches
    unl = dict(steps[0][1])
    b = unl["image"].shape[0]
    unl["scan"] = ["a", "b"] * (b // 2) + ["a"] * (b % 2)
    seen = {}
    for mod, fn in ((cg, "global_contrastive_loss"), (cl, "local_contrastive_loss")):
        real = getattr(mod, fn)

        def spy(*args, _real=real, _fn=fn, **kw):
            seen[_fn] = inspect.signature(_real).bind(*args, **kw).arguments.get("volume")
            return _real(*args, **kw)

        monkeypatch.setattr(mod, fn, spy)
    clock = Clock(1, 0, 2, 4)
    _method(tiny, batches, "contrast_global", "pretrain").training_step(None, unl, clock)
    local = {"name": "contrast_local", "strategy": "domain", "region_size": 1}
    _method(tiny, batches, "contrast_local", "pretrain", method=local).training_step(
        None, unl, clock
    )
    want = torch.tensor([0, 1] * (b // 2) + [0] * (b % 2))
    assert torch.equal(seen["global_contrastive_loss"], want)
    assert torch.equal(seen["local_contrastive_loss"], want)
