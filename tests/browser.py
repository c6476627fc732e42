"""Headless Chromium for the tests that look at what people see (``report.html``, the MLflow UI).

Debian's ``chromium`` and ``chromium-driver`` (installed by ``.ci/run``), driven through Selenium with
the driver's path given, so Selenium Manager never looks for a browser on the network. The flags keep
Chromium off the network it would otherwise call at start (updates, sync, Google's hosts), which this
sandbox refuses; pages come from ``file://`` or 127.0.0.1 only.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import IN_CI

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root, where Chromium's own sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--window-size=1400,1000",
)


def unavailable_reason() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} is missing (Debian's chromium and chromium-driver; .ci/run installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def require_browser() -> None:
    why = unavailable_reason()
    if why:
        if IN_CI:
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)


@contextmanager
def chromium(page_load_timeout: float = 60) -> Iterator:
    """A fresh headless Chromium (own empty profile), quit afterwards."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="ssl-hpc-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(page_load_timeout)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
