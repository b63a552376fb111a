"""The guard against tests leaving files in the checkout (tests/repo_guard.py), run on a
pytester project standing for the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = """
from pathlib import Path
from repo_guard import RepoGuard

def pytest_configure(config):
    config.pluginmanager.register(RepoGuard(Path(__file__).parent), "guard")
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.syspathinsert(str(Path(__file__).parent))
    (pytester.path / "runs").mkdir()  # an older run's folder, there before the session
    return pytester


def test_a_test_writing_into_the_checkout_fails_and_is_named(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_leaky="""
        from pathlib import Path

        def test_clean(tmp_path):
            (tmp_path / "x").write_text("x")

        def test_leaky():
            Path("segssl-runs/cli/logs").mkdir(parents=True)

        def test_inside_an_old_folder():
            Path("runs/bim-pretrain-1234").mkdir()
        """
    )
    res = project.runpytest("-p", "no:cacheprovider")
    res.assert_outcomes(passed=3, errors=2)
    out = res.stdout.str()
    assert "test_leaky.py::test_leaky left new files in the repository root" in out
    assert "test_leaky.py::test_inside_an_old_folder left new files" in out
    assert "runs/bim-pretrain-1234" in out and "segssl-runs, segssl-runs/cli" in out
    assert "the test session left new files" in out and "test_clean left" not in out


def test_session_fixture_leak_fails_the_session(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_session="""
        def test_ok():
            pass
        """
    )
    project.makeconftest(
        CONFTEST
        + """
import pytest

@pytest.fixture(scope="session", autouse=True)
def leaky_session():
    yield
    Path("mlruns").mkdir()
"""
    )
    res = project.runpytest("-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    assert "the test session left new files in the repository root" in res.stdout.str()
    assert "mlruns" in res.stdout.str()


def test_caches_are_not_leaks(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_caches="""
        from pathlib import Path

        def test_caches():
            for name in ("__pycache__", ".pytest_cache", ".ruff_cache", "runs/__pycache__"):
                Path(name).mkdir(exist_ok=True)
            Path(".coverage.host.1").write_text("")
        """
    )
    res = project.runpytest("-p", "cacheprovider")
    res.assert_outcomes(passed=1)
    assert res.ret == pytest.ExitCode.OK


def test_a_folder_gone_or_unreadable_while_listed_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder of the root that another process removes between the two listings (or one
    that cannot be read) counts by its name: the guard raised FileNotFoundError there, which
    errored the test it guarded (or the whole session at its start)."""
    import repo_guard

    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "a").write_text("")
    (tmp_path / "fleeting").mkdir()
    real = repo_guard.os.scandir

    def scandir(path: object) -> object:
        if Path(str(path)).name == "fleeting":
            Path(str(path)).rmdir()  # removed by someone else just after the root was listed
        return real(path)

    monkeypatch.setattr(repo_guard.os, "scandir", scandir)
    assert repo_guard.entries(tmp_path) == {"kept", "kept/a", "fleeting"}
