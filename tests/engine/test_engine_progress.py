"""Terminal progress: epoch summary with losses, val Dice, time per epoch and ETA."""

from __future__ import annotations

from rich.console import Console

from segssl.engine.progress import EpochProgress, format_duration


def test_epoch_summary_line() -> None:
    prog = EpochProgress(True, epochs=3, iters=2, title="bim/pretrain")
    prog.console = Console(record=True, width=200, force_terminal=False)
    prog.start_epoch(0)
    prog.advance()
    prog.advance()
    took = prog.end_epoch(0, {"train/loss": 0.75, "val/dsc": 0.5, "train/lr": 1e-3})
    text = prog.console.export_text()
    assert "bim/pretrain epoch 1/3 train/loss=0.75 val/dsc=0.5" in text
    assert "/epoch, ETA" in text and "train/lr" not in text
    assert took >= 0


def test_disabled_progress_prints_nothing() -> None:
    prog = EpochProgress(False, epochs=2, iters=1, title="x")
    prog.console = Console(record=True)
    prog.start_epoch(0)
    prog.advance()
    prog.end_epoch(0, {"train/loss": 1.0})
    prog.message("hello")
    assert prog.console.export_text() == ""


def test_format_duration() -> None:
    assert format_duration(12.34) == "12.3s"
    assert format_duration(245) == "4m05s"
    assert format_duration(3723) == "1h02m03s"
