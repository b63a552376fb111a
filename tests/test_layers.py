"""Layering rule: engine, methods, losses, models and data import without ray and mlflow."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_BLOCKER = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = ("ray", "mlflow")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, Block())
    for mod in list(sys.modules):
        if mod.split(".")[0] in BLOCKED:
            del sys.modules[mod]
    """
)


def _run(body: str) -> subprocess.CompletedProcess:
    code = _BLOCKER + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )


def test_core_packages_import_without_ray_and_mlflow() -> None:
    proc = _run(
        """
        import importlib, pkgutil
        import segssl.augment, segssl.config, segssl.metrics
        import segssl.engine, segssl.methods, segssl.losses, segssl.models, segssl.data
        for pkg in (segssl.engine, segssl.methods, segssl.losses, segssl.models, segssl.data):
            for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                importlib.import_module(info.name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("imported", len([m for m in sys.modules if m.startswith("segssl.")]))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("imported ")


def test_blocking_really_blocks() -> None:
    for mod in ("ray", "mlflow", "ray.tune", "mlflow.entities"):
        proc = _run(f"import {mod}\n")
        assert proc.returncode != 0
        assert f"ImportError: blocked import of {mod.split('.')[0]}" in proc.stderr
    # control: the same import succeeds without the blocker (so the block is what failed)
    ok = subprocess.run(
        [sys.executable, "-c", "import mlflow.entities"], capture_output=True, timeout=300
    )
    assert ok.returncode == 0, ok.stderr
    # and a module that imports mlflow indirectly is caught too
    proc = _run(
        "import segssl.orchestrate.tracking as t, segssl.engine\n"
        "t.TrialRecorder('sqlite:///x.db', '0', None, 'z')\n"
    )
    assert proc.returncode != 0 and "blocked import of mlflow" in proc.stderr


def test_report_does_not_reach_up_into_orchestrate() -> None:
    """The report layer reads runs through segssl.sqlite_store, never segssl.orchestrate."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
            import ast, pathlib, segssl.report
            bad = []
            for f in pathlib.Path(segssl.report.__path__[0]).rglob("*.py"):
                for node in ast.walk(ast.parse(f.read_text())):
                    names = []
                    if isinstance(node, ast.ImportFrom) and node.module:
                        names = [node.module]
                    elif isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    bad += [f"{f.name}: {n}" for n in names if n.startswith("segssl.orchestrate")]
            assert not bad, bad
            """
            ),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
