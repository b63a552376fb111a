"""Where the libraries' log lines go during a sweep: a file in the sweep's storage.

By default only segssl's own lines reach the console (the plan, the progress, the summary, the
MLflow UI link). Ray's and MLflow's loggers (Ray's start-up notices, MLflow's database
migrations, Python warnings) are written to ``<storage>/logs/segssl-<time>.log`` instead, whose
path the command prints; ``-v`` keeps them on the console as well. ``segssl sweep`` holds the
records in memory (:func:`hold_library_logs`) until every check of its input passed and opens the
file only then (:meth:`LibraryLogs.open`), so a refused sweep leaves no folder behind while a
sweep that starts still has every line from the first one. Trial workers' output stays
in Ray's session logs unless ``-v`` forwards it to the driver (``ray.init(log_to_driver=...)``).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

__all__ = ["LIBRARY_LOGGERS", "LibraryLogs", "hold_library_logs", "route_library_logs"]

LIBRARY_LOGGERS = ("ray", "mlflow", "alembic", "sqlalchemy", "py.warnings", "filelock", "urllib3")


# colour and cursor codes (Ray colours a failed task's name in its error text, "\x1b[36mray::...")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _PlainFileHandler(logging.FileHandler):
    """A log file without terminal colour codes, whatever formatter is set on it (``ray.init``
    replaces the formatters of the ``ray`` logger's handlers with its own)."""

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI.sub("", super().format(record))


def _is_console(handler: logging.Handler) -> bool:
    """A handler writing to a terminal stream (MLflow wraps stderr in its own stream object)."""
    return isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler
    )


class _Held(logging.Handler):
    """Keeps the records (at most ``limit``) until the log file is opened."""

    def __init__(self, limit: int = 100_000) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.limit = limit
        self.target: logging.Handler | None = None  # once open: where a late record goes

    def emit(self, record: logging.LogRecord) -> None:
        if self.target is not None:  # a thread that picked this handler before it was swapped
            self.target.handle(record)
        elif len(self.records) < self.limit:
            self.records.append(record)


_OURS = (_PlainFileHandler, _Held)


class LibraryLogs:
    """The libraries' log records of one command: held in memory until :meth:`open` writes
    them, and every later one, to a file."""

    def __init__(self, verbose: bool = False) -> None:
        import mlflow  # noqa: F401 - attaches its handlers now, so that they can be replaced
        import ray  # noqa: F401

        self.path: Path | None = None
        self._held = _Held()
        self._handler: logging.Handler = self._held
        # captureWarnings(True) is a no-op once logging holds a saved showwarning, even after
        # something (a warnings.catch_warnings block) restored the original: reinstall it
        logging.captureWarnings(False)
        logging.captureWarnings(True)
        for name in LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            # a second sweep in one process (a notebook, the tests) writes to its own file only
            for h in [h for h in logger.handlers if isinstance(h, _OURS)]:
                logger.removeHandler(h)
                h.close()
            if not verbose:
                for h in [h for h in logger.handlers if _is_console(h)]:
                    logger.removeHandler(h)
                logger.propagate = False
            logger.addHandler(self._held)

    def open(self, storage: Path) -> Path:
        """Create ``storage/logs/segssl-<time>.log`` with the records held so far, and send
        every later record there; return its path (the same path when already open)."""
        if self.path is not None:
            return self.path
        log_dir = Path(storage) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"segssl-{time.strftime('%Y%m%d-%H%M%S')}.log"
        handler = _PlainFileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._held.acquire()  # no record emitted meanwhile (another thread) is lost
        try:
            for record in self._held.records:
                handler.handle(record)
            self._held.records.clear()
            self._held.target = handler
        finally:
            self._held.release()
        for name in LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            if self._held in logger.handlers:
                logger.removeHandler(self._held)
                logger.addHandler(handler)
        self._handler, self.path = handler, path
        return path

    def unwritten(self, level: int = logging.WARNING) -> list[str]:
        """The held records at ``level`` or above, formatted (a refused command, whose log file
        was never opened, shows them instead)."""
        fmt = logging.Formatter("%(levelname)s %(name)s: %(message)s")
        return [_ANSI.sub("", fmt.format(r)) for r in self._held.records if r.levelno >= level]


def hold_library_logs(verbose: bool = False) -> LibraryLogs:
    """Take the libraries' log records off the console (unless ``verbose``) and hold them until
    :meth:`LibraryLogs.open` names the file."""
    return LibraryLogs(verbose)


def route_library_logs(storage: Path, verbose: bool = False) -> Path:
    """Send the libraries' log records to a new file under ``storage/logs``; return its path.

    Ray and MLflow attach their console handlers when first imported, so they are imported
    here (a sweep imports both anyway) before their handlers are replaced.

    Args:
        storage: the sweep's storage folder (created if missing).
        verbose: also keep the libraries' own console output.
    """
    return LibraryLogs(verbose).open(storage)
