"""The MLflow UI in a real browser (headless Chromium) on a finished tiny sweep: the link segssl
prints opens the study as a machine-learning experiment on its runs table (not MLflow 3's GenAI
traces view), with the sweep's parent run and every trial listed under readable names and the
useful columns shown. The screenshot is saved beside the test's files (``mlflow_ui.png``).

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); run alone with
``pytest -m browser``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from segssl.orchestrate.mlflow_ui import ui_url
from segssl.orchestrate.plan import plan_sweep
from segssl.orchestrate.runner import run_sweep
from segssl.orchestrate.spec import parse_sweep

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HERE = str(Path(__file__).resolve().parent)
sys.path.insert(0, HERE)
from orch_helpers import quick_train  # noqa: E402

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=2400,1000",  # every column rendered (the grid virtualises off-screen ones)
)


def _spec(root: Path) -> dict:
    base = {
        "data": {"dataset": "acdc", "root": str(root), "target": "lv"},
        "model": {"base_width": 4},
        "train": {"epochs": 2, "iters_per_epoch": 1, "progress": False},
    }
    return {
        "name": "ui",
        "seeds": [0],
        "max_concurrent": 2,
        "resources": {"cpu": 1, "gpu": 0},
        "base": base,
        "stages": {
            "baseline": {
                "config": {"stage": "finetune", "method": {"name": "baseline"}},
                "grid": {"data.labeled_scans": [1, 2]},
            },
            "pretrain": {"config": {"stage": "pretrain", "method": {"name": "bim"}}},
            "finetune": {
                "from": "pretrain",
                "config": {"stage": "finetune", "method": {"name": "finetune"}},
                "grid": {"data.labeled_scans": [1, 2]},
            },
        },
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow ui exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - local server
                if r.status == 200:
                    return
        except OSError:
            time.sleep(2)
    raise AssertionError(f"mlflow ui did not answer at {url} within {timeout:g} s")


@pytest.fixture
def finished_sweep(tmp_path: Path) -> dict[str, Any]:
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    # the stand-in trials use no memory; Ray's OOM killer must not act on a busy shared machine
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": HERE, "RAY_AUTH_MODE": "disabled"}},
    )
    try:
        spec = parse_sweep(_spec(tmp_path / "data"))
        out = run_sweep(
            spec,
            train_fn=quick_train,
            storage=tmp_path / "store",
            console=Console(quiet=True),
            live=False,
        )
    finally:
        ray.shutdown()
    assert out.failed == 0
    names = [t.name for t in plan_sweep(spec, storage=tmp_path / "store").all_trials()]
    return {"uri": out.tracking_uri, "exp": out.experiment_id, "names": names}


@pytest.fixture
def mlflow_ui(finished_sweep: dict[str, Any], tmp_path: Path):
    port = _free_port()
    log = (tmp_path / "mlflow_ui.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", finished_sweep["uri"]]
        + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        start_new_session=True,  # its server and job workers are stopped together
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc, timeout=300)
        yield port
    finally:
        _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group; SIGKILL when it has not exited after 60 s (a
    loaded machine can take longer than that to shut uvicorn down; the test's result stands)."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for exe in (CHROMIUM, DRIVER):
        if not Path(exe).is_file():
            raise AssertionError(
                f"{exe} is missing: install Debian's chromium and chromium-driver "
                "(see .ci/run), or deselect these tests with -m 'not browser'"
            )
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='segssl-chromium-')}"):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(DRIVER))


def _run_name_cells(driver: Any) -> dict[str, Any]:
    """The run list's Run Name cells by the name they show."""
    cells = driver.find_elements("css selector", '[col-id="attributes.`Run Name`"]')
    # the first is the header; a cell reads "<colour swatch>\n<run name>"
    return {c.text.splitlines()[-1]: c for c in cells[1:] if c.text.strip()}


def test_mlflow_ui_lists_the_sweep_runs(finished_sweep, mlflow_ui, tmp_path: Path) -> None:
    url = ui_url(finished_sweep["exp"], port=mlflow_ui)
    driver = _browser()
    try:
        from selenium.common.exceptions import TimeoutException

        driver.set_page_load_timeout(180)
        with contextlib.suppress(TimeoutException):  # the polling below waits for the table
            driver.get(url)
        expected = len(finished_sweep["names"]) + 1  # the trials and the sweep's parent run
        # the count shows before the grid has drawn its rows (a spinner on a loaded machine):
        # wait for the rows themselves
        end, body, shown = time.time() + 180, "", {}
        while time.time() < end:
            body = driver.find_element("tag name", "body").text
            shown = _run_name_cells(driver)
            if f"{expected} matching runs" in body and set(finished_sweep["names"]) <= set(shown):
                break
            time.sleep(2)
        time.sleep(2)  # let the grid settle its column widths
        shown = _run_name_cells(driver)
        driver.save_screenshot(str(tmp_path / "mlflow_ui.png"))
        assert f"{expected} matching runs" in body, body[:2000]
        assert "/runs" in driver.current_url and "traces" not in driver.current_url
        assert "Detect Issues" not in body  # the GenAI view's pop-up
        for name in finished_sweep["names"]:
            assert name in shown, (name, sorted(shown))
        parents = [n for n in shown if n.startswith("sweep ")]
        assert len(parents) == 1 and len(parents[0]) <= 20, sorted(shown)
        clipped = [
            n
            for n, c in shown.items()
            if driver.execute_script(
                "const a = arguments[0].querySelector('a') || arguments[0];"
                "return a.scrollWidth > a.clientWidth + 1;",
                c,
            )
        ]
        assert not clipped, f"run names cut off with an ellipsis: {clipped}"
        headers = {
            h.get_attribute("col-id")
            for h in driver.find_elements("css selector", ".ag-header-cell[col-id]")
        }
        for col in ("params.`method.name`", "params.`data.labeled_scans`", "params.`seed`"):
            assert col in headers, sorted(headers)
        # the test Dice and the best validation epoch's Dice and epoch (issue 13, point 2)
        for col in ("metrics.`test/dsc`", "metrics.`best_val/dsc`", "metrics.`best_epoch`"):
            assert col in headers, sorted(headers)
    finally:
        driver.quit()
    copy_to = os.environ.get("SEGSSL_SCREENSHOT_DIR")
    if copy_to:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "mlflow_ui.png", Path(copy_to) / "mlflow_ui.png")
