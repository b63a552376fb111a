"""A pytest plugin that fails any test (and the session) leaving new files in a checkout.

Tests write under ``tmp_path``; a command run without ``--workdir``/``--storage`` writes into
the current directory (``runs/...``, ``./segssl-runs/NAME``), which is the checkout when
pytest runs from it. Registered by tests/conftest.py for the repository root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# what pytest, Python and the linters write themselves; .git changes under other tools' feet
NOT_LEAKS = frozenset(
    {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis"}
)


def _counts(name: str) -> bool:
    return name not in NOT_LEAKS and not name.startswith(".coverage")


def entries(root: Path) -> set[str]:
    """``root``'s entries and those one level below (so that a new ``runs/<name>`` is seen where
    an older ``runs/`` exists), less ``NOT_LEAKS``."""
    out: set[str] = set()
    with os.scandir(root) as tops:
        for top in tops:
            if not _counts(top.name):
                continue
            out.add(top.name)
            if top.is_dir(follow_symlinks=False):
                try:
                    with os.scandir(top.path) as below:
                        out.update(f"{top.name}/{e.name}" for e in below if _counts(e.name))
                except OSError:  # gone since it was listed, or unreadable: its name counts
                    continue
    return out


def _is_xdist_worker(config: pytest.Config) -> bool:
    # not PYTEST_XDIST_WORKER: a worker's environment reaches the pytester runs it starts
    return hasattr(config, "workerinput")


class RepoGuard:
    """Per test: fails, at teardown, the test during which ``root`` gained entries. Per session:
    fails the run (exit status 1) if ``root`` gained entries, which also catches session
    fixtures and pytest-xdist workers (there the controller checks, before workers start and
    after they end; the per-test check is off, since another worker's test could be blamed)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.baseline: set[str] | None = None

    def message(self, new: set[str], where: str) -> str:
        return (
            f"{where} left new files in the repository root {self.root}: "
            f"{', '.join(sorted(new))} (write under tmp_path, pass --workdir/--storage, or "
            "monkeypatch.chdir(tmp_path); delete them before the next run)"
        )

    @pytest.hookimpl
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if not _is_xdist_worker(session.config):
            self.baseline = entries(self.root)

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.baseline is None:  # an xdist worker
            return
        new = entries(self.root) - self.baseline
        if not new:
            return
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "files left in the repository", red=True)
            reporter.write_line(self.message(new, "the test session"))
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.fixture(autouse=True)
    def _no_files_left_in_repo(self, request: pytest.FixtureRequest) -> Iterator[None]:
        if _is_xdist_worker(request.config):
            yield
            return
        before = entries(self.root)
        yield
        new = entries(self.root) - before
        if new:
            pytest.fail(self.message(new, request.node.nodeid), pytrace=False)
