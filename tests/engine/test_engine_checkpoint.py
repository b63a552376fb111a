"""Checkpoint format, weights_only loading and architecture checks."""

from __future__ import annotations

import collections
import pickle
from pathlib import Path

import pytest
import torch

from segssl.engine import CheckpointError, load_checkpoint, load_model_weights, save_checkpoint
from segssl.models import UNet


def _save_model(path: Path, model: torch.nn.Module) -> Path:
    return save_checkpoint(path, {"model": model.state_dict(), "epoch": 3})


def test_roundtrip_and_marker(tmp_path: Path) -> None:
    src = UNet(1, 2, base_width=4, depth=3)
    path = _save_model(tmp_path / "a.pt", src)
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "segssl-checkpoint" and ckpt["version"] == 2 and ckpt["epoch"] == 3
    dst = UNet(1, 2, base_width=4, depth=3)
    rep = load_model_weights(dst, path)
    assert rep["missing"] == rep["unexpected"] == rep["mismatched"] == []
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])


def test_incompatible_width_lists_shapes(tmp_path: Path) -> None:
    path = _save_model(tmp_path / "w8.pt", UNet(1, 2, base_width=8, depth=3))
    with pytest.raises(CheckpointError) as exc:
        load_model_weights(UNet(1, 2, base_width=4, depth=3), path)
    msg = str(exc.value)
    assert "does not match the model architecture" in msg
    assert "shape differs" in msg
    assert "Conv1.0.weight: model (4, 1, 3, 3) vs checkpoint (8, 1, 3, 3)" in msg


def test_incompatible_depth_lists_missing_and_unexpected(tmp_path: Path) -> None:
    path = _save_model(tmp_path / "d3.pt", UNet(1, 2, base_width=4, depth=3))
    model = UNet(1, 2, base_width=4, depth=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as exc:
        load_model_weights(model, path)
    msg = str(exc.value)
    assert "missing in checkpoint" in msg and "Conv4.0.weight" in msg
    # nothing was loaded silently
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_class_count_differs_needs_explicit_exclude(tmp_path: Path) -> None:
    src = UNet(1, 4, base_width=4, depth=3)
    path = _save_model(tmp_path / "c4.pt", src)
    model = UNet(1, 2, base_width=4, depth=3)
    with pytest.raises(CheckpointError, match=r"Conv_1x1.weight: model \(2, 4, 1, 1\)"):
        load_model_weights(model, path)
    rep = load_model_weights(model, path, exclude=["Conv_1x1"])
    assert "Conv_1x1.weight" not in rep["loaded"] and "Conv1.0.weight" in rep["loaded"]
    assert torch.equal(model.Conv1[0].weight, src.Conv1[0].weight)


def test_encoder_only_loading_is_explicit(tmp_path: Path) -> None:
    src = UNet(1, 2, base_width=4, depth=3)
    path = _save_model(tmp_path / "e.pt", src)
    model = UNet(1, 2, base_width=4, depth=3)
    dec_before = model.Up_conv2[0].weight.clone()
    rep = load_model_weights(model, path, only=["Conv1", "Conv2", "Conv3"])
    assert all(k.split(".")[0] in {"Conv1", "Conv2", "Conv3"} for k in rep["loaded"])
    assert torch.equal(model.Conv3[0].weight, src.Conv3[0].weight)
    assert torch.equal(model.Up_conv2[0].weight, dec_before)


def test_non_strict_reports_what_was_skipped(tmp_path: Path) -> None:
    path = _save_model(tmp_path / "c4.pt", UNet(1, 4, base_width=4, depth=3))
    rep = load_model_weights(UNet(1, 2, base_width=4, depth=3), path, strict=False)
    assert rep["mismatched"] and rep["mismatched"][0].startswith("Conv_1x1.")


class _Evil:
    def __reduce__(self):  # would run code under a full unpickler
        return (print, ("pwned",))


def test_not_a_segssl_checkpoint(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save(UNet(1, 2, base_width=4, depth=3).state_dict(), plain)
    with pytest.raises(CheckpointError, match="not a segssl checkpoint.*format='segssl-"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="not a segssl checkpoint"):
        load_model_weights(UNet(1, 2, base_width=4, depth=3), plain)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"weights_only=True"):
        load_checkpoint(text)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_weights_only_refuses_arbitrary_objects(tmp_path: Path, capsys) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"format": "segssl-checkpoint", "version": 1, "x": _Evil()}, evil)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(evil)
    assert "pwned" not in capsys.readouterr().out
    odd = tmp_path / "odd.pt"
    with odd.open("wb") as fh:
        pickle.dump(collections.Counter(a=1), fh)
    with pytest.raises(CheckpointError):
        load_checkpoint(odd)
