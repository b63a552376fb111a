"""Headless Chromium (Debian's ``chromium`` + ``chromedriver``) driven by Selenium, for tests
that look at the MLflow UI: open a page (optionally with HTTP basic-auth credentials, sent as a
header through the DevTools protocol), wait until its text contains what a test expects, save a
screenshot.

Usage::

    with headless_chromium() as browser:
        text = open_and_wait(browser, url, ["Child runs"], auth=("admin", pw))
        browser.save_screenshot(str(png))
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def chromium_paths() -> tuple[str, str]:
    """``(browser, chromedriver)`` paths; fail the test with the install hint when missing."""
    browser = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    driver = shutil.which("chromedriver") or (
        "/usr/lib/chromium/chromedriver" if shutil.which("chromium") else None
    )
    if not browser or not driver:
        pytest.fail(
            "headless Chromium is needed (Debian: apt-get install chromium chromium-driver; "
            ".ci/run installs them)"
        )
    return browser, driver


@contextlib.contextmanager
def headless_chromium(width: int = 1600, height: int = 1000) -> Iterator[Any]:
    """A Selenium WebDriver of headless Chromium; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        driver.set_page_load_timeout(120)
        yield driver
    finally:
        driver.quit()


def set_basic_auth(driver: Any, user: str, password: str) -> None:
    """Send ``Authorization: Basic ...`` with every request of this browser (DevTools)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )


def page_text(driver: Any) -> str:
    return str(driver.execute_script("return document.body ? document.body.innerText : ''"))


def wait_text(driver: Any, expected: Iterable[str], timeout: float = 90) -> str:
    """Poll the page's visible text until it contains every string of ``expected``; return it.
    Fails the test with the strings still missing and the page's text."""
    want = list(expected)
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        text = page_text(driver)
        if all(w in text for w in want):
            return text
        time.sleep(1.0)
    missing = [w for w in want if w not in text]
    pytest.fail(f"page {driver.current_url} never showed {missing}; its text:\n{text[:3000]}")


def open_and_wait(
    driver: Any,
    url: str,
    expected: Iterable[str],
    auth: tuple[str, str] | None = None,
    timeout: float = 90,
) -> str:
    """Open ``url`` (with basic auth when given) and :func:`wait_text` for ``expected``."""
    if auth is not None:
        set_basic_auth(driver, *auth)
    driver.get(url)
    return wait_text(driver, expected, timeout)
