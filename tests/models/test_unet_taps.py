"""U-Net: named blocks, feature taps, freezing by config."""

from __future__ import annotations

import pytest
import torch

from segssl.config import ModelConfig
from segssl.models import UNet, apply_freeze, build_model, decoder_names, encoder_names


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
    logits, feats = model(x, taps=["Conv5", "Up_conv3", "Up_conv2"])
    assert logits.shape == (2, 3, 32, 48)
    assert feats["Conv5"].shape == (2, 64, 2, 3)
    assert feats["Up_conv3"].shape == (2, 8, 16, 24)
    assert feats["Up_conv2"].shape == (2, 4, 32, 48)
    assert model.feature_channels["Conv5"] == 64
    assert torch.equal(model(x), logits)
    # the final 1x1 conv applied to the Up_conv2 tap reproduces the logits
    assert torch.allclose(model.decode_head(feats["Up_conv2"]), logits, atol=1e-6)


def test_unknown_tap_is_refused_with_the_known_names():
    with pytest.raises(KeyError, match="known: "):
        UNet(1, 2, base_width=4)(torch.zeros(1, 1, 16, 16), taps=["Conv6"])


def test_freeze_by_prefix_and_typos_fail():
    model = build_model(ModelConfig(base_width=4, freeze=("Conv_1x1",)), num_classes=2)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["Conv_1x1.weight", "Conv_1x1.bias"]
    with pytest.raises(ValueError, match="'Conv9' matches no parameter"):
        apply_freeze(UNet(1, 2, base_width=4), ["Conv9"])
    # a prefix must match whole block names, not 'Conv1' inside 'Conv1x'
    hits = apply_freeze(UNet(1, 2, base_width=4), ["Conv1"])
    assert all(h.startswith("Conv1.") for h in hits)
