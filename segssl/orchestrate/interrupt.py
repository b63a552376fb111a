"""Ctrl-C and SIGTERM for a running sweep: stop cleanly on the first, exit at once on the second.

The first SIGINT (Ctrl-C) or SIGTERM (a scheduler ending the job) sets :attr:`Interrupt.event`;
the runner then launches nothing more, its Ray Tune stopper stops the running trials (their
``last.pt`` stays on the storage, so a rerun resumes them), the sweep run is marked KILLED with
the reason, and the command exits with ``128 + signal`` (130 for SIGINT). A second signal exits
at once (after removing the driver's claim, so that a rerun does not wait for the lease).

A scheduler often signals the whole process group (``scancel``, ``kill -TERM -PGID``): Ray's own
processes (GCS, raylet, workers) stop together with the driver, and the graceful stop above
cannot finish, since every Ray call of the driver then blocks until Ray's core worker gives up
on the GCS (``gcs_rpc_server_reconnect_timeout_s``, 60 s) and ends the process with status 1.
:func:`watch_cluster` sees the cluster gone after the first signal and lets the runner end the
sweep without Ray (records, claim, summary) and exit with the signal's status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = [
    "Interrupt",
    "SweepInterrupted",
    "catch_signals",
    "raise_on_signals",
    "tcp_reachable",
    "watch_cluster",
]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signal_handlers(
    handler: Callable[[int, FrameType | None], Any], signals: tuple[int, ...] = _SIGNALS
) -> Iterator[None]:
    """Install ``handler`` for ``signals`` inside the block; the previous handlers come back
    on the way out (also on an exception)."""
    old = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class SweepInterrupted(Exception):  # noqa: N818 - reads as what happened
    """The sweep was stopped by a signal; ``code`` is the exit status (128 + signal number)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.code = 128 + signum


class Interrupt:
    """What the handler records: the first signal, and an event the runner polls."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self.on_second: Callable[[], None] | None = None
        self.notify: Callable[[str], None] | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "?"

    def handle(self, signum: int, _frame: FrameType | None = None) -> None:
        """Signal handler: first signal sets the event; the second exits at once."""
        if self.event.is_set():
            if self.on_second is not None:
                with contextlib.suppress(Exception):
                    self.on_second()
            os._exit(128 + (self.signum or signum))
        self.signum = signum
        self.event.set()
        if self.notify is not None:
            with contextlib.suppress(Exception):
                self.notify(
                    f"{signal.Signals(signum).name}: stopping the sweep (running trials stop and "
                    "keep their last checkpoint; a rerun resumes them). Press Ctrl-C again to "
                    "exit at once."
                )

    def check(self) -> None:
        """Raise :class:`SweepInterrupted` when a signal arrived."""
        if self.signum is not None:
            raise SweepInterrupted(self.signum, f"sweep stopped by {self.name}")


def make_stopper(interrupt: Interrupt) -> Any:
    """A Ray Tune stopper that stops every trial of the stage once the sweep is interrupted."""
    from ray.tune import Stopper

    class _StopOnInterrupt(Stopper):
        interrupt: Interrupt | None = None  # set below: the class itself closes over nothing

        def __getstate__(self) -> dict[str, Any]:  # Tune saves its state; the event stays here
            return {"interrupt": None}

        def __call__(self, trial_id: str, result: dict) -> bool:
            return False

        def stop_all(self) -> bool:
            return self.interrupt is not None and self.interrupt.event.is_set()

    stopper = _StopOnInterrupt()
    stopper.interrupt = interrupt
    return stopper


@contextlib.contextmanager
def catch_signals(interrupt: Interrupt) -> Iterator[Interrupt]:
    """Install the handler for SIGINT and SIGTERM (main thread only), restore on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield interrupt
        return
    with signal_handlers(interrupt.handle):
        yield interrupt


@contextlib.contextmanager
def raise_on_signals() -> Iterator[None]:
    """Before the sweep launches anything: SIGINT or SIGTERM raises :class:`SweepInterrupted`
    at once (main thread only), so the claim is released on the way out and the exit status
    names the signal; :func:`catch_signals` takes over while trials run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SweepInterrupted(signum, f"sweep stopped by {signal.Signals(signum).name}")

    with signal_handlers(handler):
        yield


def tcp_reachable(address: str, timeout: float = 1.0) -> bool:
    """Whether ``HOST:PORT`` accepts a TCP connection (a Ray GCS that is still up)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def watch_cluster(
    interrupt: Interrupt,
    reachable: Callable[[], bool],
    abandon: Callable[[], None],
    done: threading.Event,
    period: float = 0.25,
    misses: int = 2,
) -> threading.Thread:
    """From the first signal on, until ``done`` is set: call ``abandon`` (from this daemon
    thread) once ``reachable()`` was false ``misses`` times in a row, i.e. the cluster went down
    with the driver's process group. ``abandon`` must end the process itself."""

    def loop() -> None:
        while not interrupt.event.wait(period):
            if done.is_set():
                return
        missed = 0
        while not done.is_set():
            missed = 0 if reachable() else missed + 1
            if missed >= misses and not done.is_set():
                abandon()
                return
            done.wait(period)

    thread = threading.Thread(target=loop, name="segssl-cluster-watch", daemon=True)
    thread.start()
    return thread
