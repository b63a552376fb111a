"""Terminal progress of a run (rich): epoch bar, then one summary line per epoch with the
epoch's mean losses, the validation Dice, the epoch's duration and the ETA of the run.

The bar shows no running losses: reading a loss value on the host at every step would make each
GPU step wait for the device; the loss means are read once per epoch and shown in the summary."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["EpochProgress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``1h02m03s`` / ``4m05s`` / ``12.3s``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class EpochProgress:
    """Progress display; every method is a no-op when ``enabled`` is false."""

    def __init__(self, enabled: bool, epochs: int, iters: int, title: str) -> None:
        self.enabled, self.epochs, self.iters, self.title = enabled, epochs, iters, title
        self.console = Console(stderr=True)
        self._progress: Progress | None = None
        self._task = None
        self._durations: list[float] = []
        self._t = time.perf_counter()

    def start_epoch(self, epoch: int) -> None:
        """Open the bar of 0-based ``epoch``."""
        self._t = time.perf_counter()
        if not self.enabled:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        desc = f"{self.title} epoch {epoch + 1}/{self.epochs}"
        self._task = self._progress.add_task(desc, total=self.iters)

    def advance(self) -> None:
        """One iteration done."""
        if self._progress is not None:
            self._progress.update(self._task, advance=1)

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> float:
        """Close the bar and print the epoch summary; returns the epoch's duration (s)."""
        took = time.perf_counter() - self._t
        self._durations.append(took)
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.enabled:
            eta = (self.epochs - epoch - 1) * sum(self._durations) / len(self._durations)
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "train/lr")
            self.console.print(
                f"{self.title} epoch {epoch + 1}/{self.epochs} {shown} "
                f"[dim]{format_duration(took)}/epoch, ETA {format_duration(eta)}[/]",
                highlight=False,
            )
        return took

    def message(self, text: str) -> None:
        """Print a line (when enabled)."""
        if self.enabled:
            self.console.print(text, highlight=False)

    def close(self) -> None:
        """Stop any open bar (on errors)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
