"""Chromium (Debian's) driven by Playwright, one browser per module, and a screenshot of every page a failed test had.

Screenshots of a failed test go to ``$BROWSER_SCREENSHOTS/<test name>/`` when that variable is set (CI can keep
the folder), else to the test's own pytest tmp dir (``<basetemp>/<test name>N/``); the failure report prints
each file's path.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.support.processes import space_process
from tests.support.space import RunningSpace

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
HAVE_CHROMIUM = os.path.exists(CHROMIUM) or shutil.which("chromium") is not None

# Chromium's own network chatter is refused on this machine; these flags keep it quiet.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so that fixtures can tell whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="module")
def sandbox_space(tmp_path_factory) -> RunningSpace:
    """`python app.py` in sandbox mode answering with VADER (MODEL_ID=vader): the page is under test, not the
    model, and VADER starts in a second where a transformers model takes several (tests/app uses the tiny one)."""
    tmp = tmp_path_factory.mktemp("space")
    server = space_process(tmp, MODEL_ID="vader").start()
    yield RunningSpace(server, tmp / "space-data")
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser, request, tmp_path):
    """new_page(width, height=1000) -> a Playwright page; on failure each page is screenshotted (full page)."""
    pages = []

    def open_page(width: int = 1280, height: int = 1000):
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(30_000)
        pages.append(page)
        return page

    yield open_page
    report = getattr(request.node, "report_call", None)
    failed = report is not None and report.failed
    folder = _screenshot_folder(request.node.name, tmp_path)
    for index, page in enumerate(pages):
        if failed and not page.is_closed():
            width = page.viewport_size["width"] if page.viewport_size else 0
            path = folder / f"failure-{index}-{width}px.png"
            try:
                page.screenshot(path=str(path), full_page=True)
                print(f"screenshot of the failed page: {path}")
            except Exception as exc:  # noqa: BLE001 - a page that cannot be shot must not hide the failure
                print(f"no screenshot of page {index}: {exc}")
        page.close()


def _screenshot_folder(test_name: str, tmp_path: Path) -> Path:
    root = os.environ.get("BROWSER_SCREENSHOTS")
    if not root:
        return tmp_path
    folder = Path(root) / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
