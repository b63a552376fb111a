"""A trial process's exit on SIGTERM, finished quietly.

Ray ends its worker processes with SIGTERM (``ray.shutdown`` at the end of every sweep, a
stopped job, a drained node). A Ray worker's SIGTERM handler raises ``SystemExit(1)`` wherever
the main thread happens to be. When that is a weakref callback or a ``__del__`` (a trial
process collecting garbage as it winds down), Python cannot propagate the exception: it prints
``Exception ignored in: <function WeakSet...> ... SystemExit: 1`` with a traceback into the
worker's log (the console with ``segssl -v``) and the process goes on running until Ray kills
it. :func:`finish_lost_exits` makes such a swallowed ``SystemExit`` do what it was raised for:
the process exits at once with its code, without the traceback. Any other exception Python
cannot raise is reported as before.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

__all__ = ["finish_lost_exits"]

_previous: Any = None


def _exit_for_lost_system_exit(args: Any) -> None:
    """``sys.unraisablehook``: exit with a swallowed ``SystemExit``'s code, else delegate."""
    if args.exc_type is not None and issubclass(args.exc_type, SystemExit):
        os._exit(_exit_status(args.exc_value))
    (_previous or sys.__unraisablehook__)(args)


def _exit_status(exc: BaseException | None) -> int:
    """The status Python would exit with for ``exc`` (a ``SystemExit``): its code when an int,
    0 for None, else 1 after printing the code (``sys.exit("message")``) to stderr."""
    code = getattr(exc, "code", 1)
    status = 0 if code is None else code if isinstance(code, int) else 1
    if not isinstance(code, int | None):
        with contextlib.suppress(Exception):
            print(code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return status


def finish_lost_exits() -> None:
    """Install the hook in this process (idempotent; any thread may call it)."""
    global _previous
    if sys.unraisablehook is not _exit_for_lost_system_exit:
        _previous = sys.unraisablehook
        sys.unraisablehook = _exit_for_lost_system_exit
