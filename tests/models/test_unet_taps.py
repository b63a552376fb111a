"""U-Net: named blocks, feature taps, freezing by config."""

from __future__ import annotations

import pytest
import torch

from segssl.config import parse_run_config
from segssl.models import MODELS, UNet, apply_freeze, build_model, decoder_names, encoder_names
from segssl.models.unet import Config as UNetConfig


def test_block_names_follow_the_papers():
    assert encoder_names(5) == ["Conv1", "Conv2", "Conv3", "Conv4", "Conv5"]
    assert decoder_names(5) == ["Up_conv5", "Up_conv4", "Up_conv3", "Up_conv2"]
    model = UNet(1, 4, base_width=4, depth=5)
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert {"Conv1", "Conv5", "Up5", "Up_conv5", "Up_conv2", "Conv_1x1"} <= names


def test_taps_have_documented_shapes_and_match_plain_forward():
    torch.manual_seed(0)
    model = UNet(1, 3, base_width=4, depth=5).eval()
    x = torch.randn(2, 1, 32, 48)
    logits, feats = model(x, taps=["encoder", "decoder3", "decoder4"])
    assert logits.shape == (2, 3, 32, 48)
    assert feats["encoder"].shape == (2, 64, 2, 3)  # Conv5
    assert feats["decoder3"].shape == (2, 8, 16, 24)  # Up_conv3
    assert feats["decoder4"].shape == (2, 4, 32, 48)  # Up_conv2
    assert model.tap_channels["encoder"] == 64
    assert torch.equal(model(x), logits)
    # the final 1x1 conv applied to the last decoder tap reproduces the logits
    assert torch.allclose(model.decode_head(feats["decoder4"]), logits, atol=1e-6)


def test_tap_roles_name_the_papers_blocks():
    """GMI taps the encoder output and Up_conv5..Up_conv2; Chaitanya's local contrastive the first
    l decoder blocks: decoder1 is the deepest decoder block."""
    torch.manual_seed(0)
    model = UNet(1, 3, base_width=4, depth=5).eval()
    x = torch.randn(1, 1, 32, 32)
    enc = model.encode(x)
    roles = model.features(x, ["encoder", "encoder2", "decoder1", "decoder4"])
    assert torch.equal(roles["encoder"], enc[4]) and torch.equal(roles["encoder2"], enc[1])
    assert roles["decoder1"].shape == (1, 32, 4, 4)  # Up_conv5: half the Conv5 -> Conv4 width
    assert model.tap_blocks["decoder1"] == "Up_conv5" and model.tap_blocks["decoder4"] == "Up_conv2"
    assert list(UNet(1, 2, base_width=4, depth=3).tap_channels) == [
        "encoder",
        "encoder1",
        "encoder2",
        "encoder3",
        "decoder1",
        "decoder2",
    ]


def test_encoder_only_features_leave_the_decoder_out_of_the_graph():
    model = UNet(1, 2, base_width=4)
    model.features(torch.randn(2, 1, 32, 32), ["encoder"])["encoder"].sum().backward()
    assert model.Conv5[0].weight.grad is not None and model.Up_conv2[0].weight.grad is None


def test_unknown_tap_role_is_refused_with_the_valid_roles():
    with pytest.raises(KeyError, match=r"\['Conv5'\] for model 'unet' \(depth 5\); valid roles"):
        UNet(1, 2, base_width=4)(torch.zeros(1, 1, 16, 16), taps=["Conv5"])


def test_model_registry_selects_the_architecture_and_refuses_unknown_names():
    cfg = parse_run_config({"method": {"name": "baseline"}, "model": {"base_width": 4}})
    assert isinstance(cfg.model, UNetConfig) and cfg.model.input_multiple == 16
    assert all(cls.Config().name == key for key, cls in MODELS.items())
    with pytest.raises(
        ValueError, match="unknown model .unet50..*known models: resnet50_unet, unet"
    ):
        parse_run_config({"method": {"name": "baseline"}, "model": {"name": "unet50"}})


def test_freeze_by_prefix_and_typos_fail():
    model = build_model(UNetConfig(base_width=4, freeze=("Conv_1x1",)), num_classes=2)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["Conv_1x1.weight", "Conv_1x1.bias"]
    with pytest.raises(ValueError, match="'Conv9' matches no parameter"):
        apply_freeze(UNet(1, 2, base_width=4), ["Conv9"])
    # a prefix must match whole block names, not 'Conv1' inside 'Conv1x'
    hits = apply_freeze(UNet(1, 2, base_width=4), ["Conv1"])
    assert all(h.startswith("Conv1.") for h in hits)


@pytest.mark.parametrize(
    "cfg",
    [{"name": "unet", "base_width": 4, "depth": 6}, {"name": "resnet50_unet", "base_width": 4}],
)
def test_tap_shapes_before_any_work_match_the_real_maps(cfg):
    """Config checks read feature-map sizes from a meta-device pass: the real maps' sizes."""
    from segssl.models import tap_roles, tap_shapes

    mcfg = parse_run_config(
        {
            "method": {"name": "baseline"},
            "model": cfg,
            "data": {"preprocess": {"size": [64, 96]}},
            "augment": {"crop": 0},
        }  # fmt: skip
    ).model
    roles = tap_roles(mcfg)
    real = build_model(mcfg, 2).eval()
    with torch.no_grad():
        feats = real.features(torch.zeros(1, 1, 64, 96), list(roles))
    assert tap_shapes(mcfg, roles, (64, 96)) == {r: tuple(f.shape[-2:]) for r, f in feats.items()}
    with pytest.raises((KeyError, ValueError), match="unknown feature tap role"):
        tap_shapes(mcfg, ("layer9",), (64, 96))
