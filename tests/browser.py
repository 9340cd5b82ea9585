"""Headless Chromium for the web tests: a window of a given size, a screenshot when the test failed."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.harness import scaled

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The network is closed here: without these Chromium waits on connections it will never get.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
DESK = (1280, 800)
PHONE = (390, 844)

OpenBrowser = Callable[[int, int], webdriver.Chrome]


@pytest.fixture
def chromium(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenBrowser]:
    """Opens headless Chromium windows of a given size (fresh profiles); each is quit after the test, and
    when the test failed, first photographed into the test's own directory (the path is printed)."""
    if shutil.which(CHROMIUM) is None or shutil.which(CHROMEDRIVER) is None:
        pytest.fail("chromium and chromium-driver are needed: apt-get install -y chromium chromium-driver")
    opened: list[tuple[webdriver.Chrome, str, str]] = []

    def open_at(width: int, height: int) -> webdriver.Chrome:
        profile = tempfile.mkdtemp(prefix="zlb-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        driver.set_page_load_timeout(scaled(20))
        # Headless Chromium keeps a window at least 500 px wide whatever --window-size says: the viewport is
        # set through DevTools instead, as a phone's (the page's viewport meta applies) below 600 px.
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        opened.append((driver, profile, f"{width}x{height}"))
        return driver

    try:
        yield open_at
    finally:
        failed = any(getattr(request.node, f"rep_{when}", None) and getattr(request.node, f"rep_{when}").failed
                     for when in ("setup", "call"))  # fmt: skip
        for driver, profile, size in opened:
            if failed:
                shot = tmp_path / f"screenshot-{size}.png"
                driver.save_screenshot(str(shot))
                print(f"screenshot of the failed page at {size}: {shot}")
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)
