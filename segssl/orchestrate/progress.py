"""Live terminal status of a sweep: trials finished/running/failed/pending per stage, with ETA.

:class:`SweepProgress` holds the counts and renders a rich table; :class:`TuneProgress` is the
Ray Tune callback that updates it from the Tune controller (which runs in the driver process).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

__all__ = ["StageCounts", "SweepProgress", "make_tune_callback"]


@dataclass
class StageCounts:
    """Counts of one stage in this invocation."""

    total: int = 0
    skipped: int = 0  # FINISHED in MLflow before this invocation
    finished: int = 0
    running: int = 0
    failed: int = 0
    durations: list[float] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return max(0, self.total - self.skipped - self.finished - self.running - self.failed)


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class SweepProgress:
    """Per-stage trial counts with an ETA, drawn live with rich."""

    def __init__(
        self, name: str, concurrency: int, console: Console | None = None, live: bool = True
    ) -> None:
        self.name = name
        self.concurrency = max(1, concurrency)
        self.stages: dict[str, StageCounts] = {}
        self.console = console or Console(stderr=True)
        self._live: Live | None = None
        # without a terminal (a log file, a Ray job) a live table cannot redraw: one line a trial
        self._enabled = live and self.console.is_terminal
        self._starts: dict[str, float] = {}
        self.names: dict[str, str] = {}  # trial key -> readable run name, for progress lines
        self.t0 = time.time()
        self.peak_running = 0  # most trials seen running at once: what the resources allow

    def add_stage(self, stage: str, total: int, skipped: int) -> None:
        """Declare a stage with its planned and already-finished trial counts."""
        self.stages[stage] = StageCounts(total=total, skipped=skipped)
        self.refresh()

    def eta(self) -> float | None:
        """Seconds left: mean trial duration so far x remaining trials / trials running at once.

        Trials at once is the sweep's ``max_concurrent`` capped by the most trials seen running
        together, since the cluster's resources may allow fewer (2 on a 2-CPU laptop, not 16).
        """
        durations = [d for c in self.stages.values() for d in c.durations]
        if not durations:
            return None
        mean = sum(durations) / len(durations)
        left = sum(c.pending + c.running for c in self.stages.values())
        return mean * left / max(1, min(self.concurrency, self.peak_running))

    def table(self) -> Table:
        """The status table."""
        t = Table(
            title=f"sweep {self.name}  (elapsed {_fmt_eta(time.time() - self.t0)}, "
            f"ETA {_fmt_eta(self.eta())})"
        )
        for col in ("stage", "total", "skipped", "finished", "running", "failed", "pending"):
            t.add_column(col, justify="right" if col != "stage" else "left")
        for name, c in self.stages.items():
            t.add_row(
                name,
                str(c.total),
                str(c.skipped),
                f"[green]{c.finished}[/]",
                f"[cyan]{c.running}[/]",
                f"[red]{c.failed}[/]" if c.failed else "0",
                str(c.pending),
            )
        return t

    def __enter__(self) -> SweepProgress:
        if self._enabled:
            self._live = Live(self.table(), console=self.console, auto_refresh=False)
            self._live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self.table(), refresh=True)
            self._live.stop()
            self._live = None
            self.console.print()  # what follows starts on its own line

    def refresh(self) -> None:
        """Redraw (no-op when not live)."""
        if self._live is not None:
            self._live.update(self.table(), refresh=True)

    # ---- events
    def started(self, stage: str, trial_id: str, label: str = "") -> None:
        """A trial started (or restarted after a failure)."""
        c = self.stages[stage]
        first = trial_id not in self._starts
        if first:
            c.running += 1
            self.peak_running = max(self.peak_running, sum(x.running for x in self.stages.values()))
        self._starts[trial_id] = self._starts.get(trial_id, time.time())
        if first:
            self._line(stage, f"started {label or trial_id}")
        self.refresh()

    def ended(
        self,
        stage: str,
        trial_id: str,
        ok: bool,
        label: str = "",
        metric: tuple[str, float] | None = None,
        reason: str | None = None,
    ) -> None:
        """A trial ended for good (finished, or failed after its retries, with its ``reason``)."""
        c = self.stages[stage]
        start = self._starts.pop(trial_id, None)
        took = ""
        if start is not None:
            c.running = max(0, c.running - 1)
            c.durations.append(time.time() - start)
            took = f" in {_fmt_eta(c.durations[-1])}"
        if ok:
            c.finished += 1
        else:
            c.failed += 1
        value = f", {metric[0]} {metric[1]:.4f}" if metric is not None else ""
        why = f" ({reason})" if reason and not ok else ""
        event = f"{'finished' if ok else 'FAILED'} {label or trial_id}{took}{value}{why}"
        self._line(stage, event)
        if self._live is not None and not ok:  # printed above the live table, and kept
            self.console.print(
                f"[{self.name}/{stage}] {event}", highlight=False, markup=False, soft_wrap=True
            )
        self.refresh()

    def _line(self, stage: str, event: str) -> None:
        """Without a live table (log files, Ray jobs): one line per trial event with the counts,
        the time elapsed and the ETA."""
        if self._enabled:
            return
        c = self.stages[stage]
        self.console.print(
            f"[{self.name}/{stage}] {event}: {c.finished + c.skipped}/{c.total} done, "
            f"{c.failed} failed, {c.running} running, {c.pending} pending; elapsed "
            f"{_fmt_eta(time.time() - self.t0)}, ETA {_fmt_eta(self.eta())}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


class _TuneProgress:
    """Body of the Tune callback (the ``ray.tune.Callback`` base is mixed in lazily)."""

    # Tune pickles its run config (callbacks included) into the experiment directory; the live
    # display stays in the driver and is dropped from the pickled copy.
    def __init__(
        self, progress: SweepProgress, stage: str | Mapping[str, str], tick: Callable[[], None]
    ) -> None:
        self.progress: SweepProgress | None = progress
        self.stage = stage  # one stage, or trial key -> stage when a Tune run holds several
        self.tick: Callable[[], None] | None = tick

    def __getstate__(self) -> dict[str, Any]:
        return {"progress": None, "stage": self.stage, "tick": None}

    def _stage(self, trial: Any) -> str:
        if isinstance(self.stage, str):
            return self.stage
        return self.stage[str((getattr(trial, "config", None) or {}).get("trial_key"))]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.progress is not None:
            self.progress.started(self._stage(trial), trial.trial_id, _label(self.progress, trial))

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if self.tick is not None:
            self.tick()
        if self.progress is not None:
            self.progress.refresh()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.progress is not None:  # a non-retryable failure ends the trial normally
            result = trial.last_result or {}
            failed = bool(result.get("segssl/failed"))
            metric = next(
                ((k, float(result[k])) for k in _SHOWN if isinstance(result.get(k), int | float)),
                None,
            )
            label = _label(self.progress, trial)
            why = result.get("segssl/reason") if failed else None
            self.progress.ended(
                self._stage(trial),
                trial.trial_id,
                not failed,
                label,
                metric,
                str(why) if why else None,
            )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.progress is not None:  # failed after its retries: Tune has saved the error
            label = _label(self.progress, trial)
            stage = self._stage(trial)
            self.progress.ended(stage, trial.trial_id, False, label, reason=_error(trial))


_SHOWN = ("test/dsc", "best_val/dsc")  # the metric a finished trial's line shows, if logged


def _error(trial: Any) -> str | None:
    """The last error of a trial Tune gave up on, as one line (``NotADirectoryError: ...``):
    the exception it saved (the cause of Ray's task error), else the last line of its text."""
    import traceback

    try:
        exc = trial.get_pickled_error()
        exc = getattr(exc, "cause", None) or exc
        if isinstance(exc, BaseException):
            return "".join(traceback.format_exception_only(type(exc), exc)).strip()[-300:]
        text = trial.get_error() or ""
    except Exception:  # noqa: BLE001 - an unreadable error file: the line says FAILED alone
        return None
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1][-300:] if lines else None


def _label(progress: SweepProgress, trial: Any) -> str:
    """A trial's name in progress lines: its run name (grid) or Tune's trial id (search)."""
    key = (getattr(trial, "config", None) or {}).get("trial_key")
    if key:
        return progress.names.get(key, f"trial {key}")
    return f"trial {trial.trial_id}"


_CALLBACK_CLASS: type | None = None


def make_tune_callback(
    progress: SweepProgress, stage: str | Mapping[str, str], tick: Callable[[], None]
) -> Any:
    """A ``ray.tune.Callback`` that feeds ``progress`` for ``stage`` (or, for a Tune run of
    several stages, the stage of each trial key) and calls ``tick`` on results.

    ``tick`` is where the driver refreshes its MLflow heartbeat (it is rate-limited there).
    """
    global _CALLBACK_CLASS
    if _CALLBACK_CLASS is None:
        from ray.tune import Callback

        _CALLBACK_CLASS = type("TuneProgress", (_TuneProgress, Callback), {"__module__": __name__})
        globals()["TuneProgress"] = _CALLBACK_CLASS
    return _CALLBACK_CLASS(progress, stage, tick)
