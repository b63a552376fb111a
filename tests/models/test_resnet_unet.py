"""ResNet-50 encoder U-Net: the real ResNet-50 layout, shapes, taps, two different decoders."""

from __future__ import annotations

import pytest
import torch

from segssl.models.resnet_unet import Bottleneck, ResNetEncoder, ResNetUNet


def test_encoder_is_resnet50_layout() -> None:
    with torch.device("meta"):  # the full-size network, no memory
        enc = ResNetEncoder(in_channels=3, width=64)
    counts = [sum(isinstance(m, Bottleneck) for m in getattr(enc, f"layer{i}").modules())
              for i in range(1, 5)]  # fmt: skip
    assert counts == [3, 4, 6, 3]
    assert enc.channels == [64, 256, 512, 1024, 2048]
    n = sum(p.numel() for p in enc.parameters())
    assert n == 23_508_032  # torchvision's resnet50 without its fc layer (25,557,032 - 2,049,000)


def test_shapes_and_taps() -> None:
    torch.manual_seed(0)
    model = ResNetUNet(in_channels=1, num_classes=4, width=8).eval()
    x = torch.randn(2, 1, 64, 64)
    logits, taps = model(x, taps=["encoder1", "encoder", "decoder1", "decoder4"])
    assert logits.shape == (2, 4, 64, 64)
    assert taps["encoder1"].shape == (2, 8, 32, 32)  # the stem
    assert taps["encoder"].shape == (2, 256, 2, 2)  # layer4
    assert taps["decoder1"].shape == (2, 32, 4, 4)
    assert taps["decoder4"].shape == (2, 4, 32, 32)
    assert model.tap_channels["encoder4"] == 128  # layer3
    only = model.features(x, ["encoder", "decoder2"])
    torch.testing.assert_close(only["encoder"], taps["encoder"])
    with pytest.raises(KeyError, match=r"unknown feature tap role\(s\) \['Conv5'\] for model "):
        model(x, taps=["Conv5"])


def test_two_decoders_differ_and_share_the_encoder() -> None:
    model = ResNetUNet(num_classes=3, width=8, decoders=("transpose", "bilinear"))
    a, b = model.decoders
    shapes_a = {n: tuple(p.shape) for n, p in a.named_parameters()}
    shapes_b = {n: tuple(p.shape) for n, p in b.named_parameters()}
    assert shapes_a["up1.0.weight"] == (256, 32, 2, 2)  # ConvTranspose2d (cin, cout, 2, 2)
    assert shapes_b["up1.1.weight"] == (32, 256, 3, 3)  # bilinear, then Conv2d (cout, cin, 3, 3)
    assert shapes_a != shapes_b
    x = torch.randn(2, 1, 32, 32)
    feats = model.encode(x)
    assert model.decode(feats, (32, 32), 0).shape == model.decode(feats, (32, 32), 1).shape
    assert not any(n.startswith("decoders.1") for n, _ in model.encoder.named_parameters())


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="'transpose' or 'bilinear', got 'nearest'"):
        ResNetUNet(width=8, decoders=("nearest",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="4 positive counts"):
        ResNetEncoder(width=8, blocks=(3, 4, 6))


def test_registry_config_and_parts() -> None:
    from segssl.config import parse_run_config
    from segssl.models import build_model

    cfg = parse_run_config(
        {
            "method": {"name": "baseline"},
            "augment": {"crop": 32},
            "data": {"preprocess": {"size": [32, 32]}},
            "model": {"name": "resnet50_unet", "base_width": 4, "decoders": ["bilinear"]},
        }
    )
    model = build_model(cfg.model, 3)
    assert isinstance(model, ResNetUNet) and model.decoders[0].kind == "bilinear"
    names = [n for n, _ in model.named_parameters()]
    for part, prefixes in model.parts.items():
        assert any(n.startswith(prefixes[0] + ".") for n in names), part
    assert model.parts["encoder"] == ("encoder",)
    with pytest.raises(Exception, match="divisible by 32"):
        parse_run_config(
            {
                "method": {"name": "baseline"},
                "augment": {"crop": 48},
                "data": {"preprocess": {"size": [48, 48]}},
                "model": {"name": "resnet50_unet"},
            }
        )


def test_bottleneck_strides_on_the_3x3_conv_with_a_strided_projection() -> None:
    enc = ResNetEncoder(in_channels=1, width=2)
    for i, stride in ((1, 1), (2, 2), (3, 2), (4, 2)):
        first = getattr(enc, f"layer{i}")[0]
        convs = [m for m in first.body if isinstance(m, torch.nn.Conv2d)]
        assert [(c.kernel_size[0], c.stride[0]) for c in convs] == [(1, 1), (3, stride), (1, 1)]
        assert first.shortcut[0].kernel_size == (1, 1) and first.shortcut[0].stride[0] == stride
        later = getattr(enc, f"layer{i}")[1:]
        assert all(isinstance(b.shortcut, torch.nn.Identity) for b in later)
