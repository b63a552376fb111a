"""No "Exception ignored ... SystemExit: 1" at the end of a sweep (issue 13, point 5).

Ray ends its worker processes with SIGTERM when the sweep shuts Ray down; a worker's SIGTERM
handler raises ``SystemExit(1)`` wherever the main thread is, and inside a weakref callback
(a trial process collecting garbage) Python swallows it and prints the traceback. The first test
reproduces that mechanism deterministically; the others run the real ``segssl sweep`` (tiny
engine runs) without a terminal in its endings and read the console and Ray's worker logs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

SWALLOWED = textwrap.dedent(
    """
    import os, signal, sys, weakref
    from segssl.orchestrate.shutdown import finish_lost_exits

    def ray_worker_handler(signum, frame):  # what a Ray worker's SIGTERM handler does
        sys.exit(1)

    signal.signal(signal.SIGTERM, ray_worker_handler)
    if sys.argv[1] == "hook":
        finish_lost_exits()

    class Obj:
        pass

    def collected(ref):  # the signal arrives while Python runs a weakref callback
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10000):
            pass

    obj = Obj()
    ref = weakref.ref(obj, collected)
    del obj
    print("still running after SIGTERM", flush=True)
    """
)


def _python(script: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_a_system_exit_swallowed_in_a_callback_ends_the_process_quietly(tmp_path: Path) -> None:
    script = tmp_path / "swallowed.py"
    script.write_text(SWALLOWED)
    bare = _python(script, "bare")  # Python's own behaviour: printed, and the process goes on
    assert "Exception ignored" in bare.stderr and "SystemExit: 1" in bare.stderr, bare.stderr
    assert "still running" in bare.stdout
    hooked = _python(script, "hook")
    assert hooked.returncode == 1, hooked
    assert hooked.stderr == "" and "still running" not in hooked.stdout, hooked


def test_the_hook_leaves_other_unraisable_errors_reported(tmp_path: Path) -> None:
    script = tmp_path / "other.py"
    script.write_text(
        "from segssl.orchestrate.shutdown import finish_lost_exits\n"
        "finish_lost_exits()\n"
        "class Bad:\n"
        "    def __del__(self):\n"
        "        raise ValueError('from __del__')\n"
        "Bad()\n"
        "print('went on', flush=True)\n"
    )
    out = _python(script)
    assert out.returncode == 0 and "went on" in out.stdout
    assert "Exception ignored" in out.stderr and "ValueError: from __del__" in out.stderr


@pytest.mark.parametrize(
    ("exit_arg", "status", "printed"),
    [("None", 0, ""), ("3", 3, ""), ("'trial gave up'", 1, "trial gave up\n")],
)
def test_a_swallowed_exit_keeps_pythons_exit_status(
    exit_arg: str, status: int, printed: str, tmp_path: Path
) -> None:
    """``sys.exit()`` means success and ``sys.exit("message")`` prints the message and fails,
    as Python does when the exception is not swallowed (the hook ended both with status 1)."""
    script = tmp_path / "codes.py"
    script.write_text(
        "import sys, weakref\n"
        "from segssl.orchestrate.shutdown import finish_lost_exits\n"
        "finish_lost_exits()\n"
        "class Obj:\n"
        "    pass\n"
        "def collected(ref):\n"
        f"    raise SystemExit({exit_arg})\n"
        "obj = Obj()\n"
        "ref = weakref.ref(obj, collected)\n"
        "del obj\n"
        "print('still running', flush=True)\n"
    )
    out = _python(script)
    assert (out.returncode, out.stderr, out.stdout) == (status, printed, ""), out


def test_run_trial_outside_a_ray_worker_leaves_the_unraisable_hook_alone() -> None:
    """Only a trial process (a Ray worker) exits on a swallowed SystemExit: a process calling
    ``run_trial`` itself (a test, a debugging driver) keeps its hook, e.g. pytest's, which
    reports such exceptions instead of ending the whole session with os._exit."""
    from segssl.orchestrate import trainable

    before = sys.unraisablehook
    ctx = trainable.SweepContext("s", "sqlite:///unused.db", "0", None, "/nonexistent", "sha")
    with pytest.raises(KeyError):  # stops right after the hook would be installed
        trainable.run_trial({"trial_key": "k"}, ctx=ctx, tasks={}, train_fn=lambda *a, **k: {})
    assert sys.unraisablehook is before


# ----------------------------------------------------------------------------- real sweeps
def _sweep(root: Path, name: str, epochs: int) -> Path:
    raw = {
        "name": name,
        "seeds": [0, 1],
        "max_concurrent": 2,
        "max_failures": 1,
        "num_cpus": 2,
        "resources": {"cpu": 1, "gpu": 0},
        "base": {
            "data": {
                "dataset": "acdc",
                "root": str(root),
                "preprocess": {"size": [32, 32], "spacing": None, "fit": "resize"},
                "split": {"unit": "scan", "sizes": [8, 2, 2]},
                "batch_size": 3,
                "unlabeled_batch_size": 3,
            },
            "augment": {"crop": 32},
            "model": {"base_width": 4},
            "optim": {"lr": 1e-3, "warmup_factor": 2, "warmup_epochs": 1},
            "train": {"epochs": epochs, "iters_per_epoch": 2, "progress": False, "pictures": 2},
        },
        "stages": {"sup": {"config": {"stage": "finetune", "method": {"name": "baseline"}}}},
    }
    path = root.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture()
def ray_tmp() -> Iterator[Path]:
    """Ray's session folder for one sweep (short: Ray's socket paths must fit 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _start(sweep: Path, storage: Path, ray_tmp: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_TMPDIR": str(ray_tmp),
        "RAY_AUTH_MODE": "disabled",
        "COLUMNS": "80",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "segssl.cli", "sweep", str(sweep), "--storage", str(storage)],
        cwd=storage.parent,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _worker_logs(ray_tmp: Path) -> str:
    logs = sorted(ray_tmp.glob("ray/session_*/logs/worker-*.err"))
    assert logs, f"no Ray worker logs under {ray_tmp}"
    return "".join(p.read_text(errors="replace") for p in logs)


def _assert_quiet(stderr: str, ray_tmp: Path) -> None:
    for text in ("Exception ignored", "Traceback", "SystemExit"):
        assert text not in stderr, stderr
    assert "Exception ignored" not in _worker_logs(ray_tmp)


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["all finish", "one fails after its retry"])
def test_a_sweep_ends_quietly(ending: str, acdc_root: Path, tmp_path: Path, ray_tmp: Path) -> None:
    from segssl.orchestrate.plan import plan_sweep
    from segssl.orchestrate.spec import load_sweep

    sweep = _sweep(acdc_root, "quiet-end", epochs=2)
    storage = tmp_path / "store"
    plan = plan_sweep(load_sweep(sweep), source=str(sweep), storage=storage, root=tmp_path)
    bad = plan.all_trials()[1]
    if ending != "all finish":  # its workdir cannot be made: fails at run time, then on retry
        (storage / "trials").mkdir(parents=True)
        (storage / "trials" / bad.key).write_text("a file where the trial's folder goes")
    proc = _start(sweep, storage, ray_tmp)
    out, err = proc.communicate(timeout=600)
    if ending == "all finish":
        assert proc.returncode == 0, err
        assert "2 finished now, 0 failed" in out, out
    else:
        assert proc.returncode == 1, err
        assert "1 finished now, 1 failed" in out, out
        (line,) = [x for x in err.splitlines() if "FAILED" in x]  # its reason on its own line
        assert bad.name in line and "FileExistsError" in line, err
    _assert_quiet(err, ray_tmp)


@pytest.mark.slow
def test_ctrl_c_mid_sweep_ends_quietly(acdc_root: Path, tmp_path: Path, ray_tmp: Path) -> None:
    sweep = _sweep(acdc_root, "quiet-ctrlc", epochs=200)
    storage = tmp_path / "store"
    proc = _start(sweep, storage, ray_tmp)
    t0 = time.time()
    while not list(storage.glob("trials/*/checkpoints/last.pt")):  # a trial is training
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 300, "no trial trained within 300 s"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "stopped by SIGINT" in err, err
    _assert_quiet(err, ray_tmp)
