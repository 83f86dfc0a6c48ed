"""A person in a browser: wallet tab -> escrow -> paid classification -> receipt; then a refusal."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (os.path.exists(CHROMIUM) or shutil.which("chromium")),
        reason=f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)",
    ),
]

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


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_wallet_then_paid_classification_then_refusal(browser, sandbox_space, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    # The page must work from this Space alone: note any request that leaves the machine.
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None)
    try:
        page.goto(sandbox_space.url, wait_until="load")
        page.get_by_role("tab", name="Sandbox wallet").click()
        page.get_by_role("button", name="1. Register a buyer").click()
        status = page.locator("#wallet-status")
        status.get_by_text("balance").wait_for(timeout=30_000)
        page.get_by_role("button", name="2. Claim 10 test USDC").click()
        status.get_by_text("10 USDC").wait_for(timeout=30_000)
        page.get_by_role("button", name="3. Open an escrow for this Space").click()
        new_escrow = page.locator("#new-escrow-id textarea, #new-escrow-id input").first
        page.wait_for_function(
            "el => el.value.startsWith('esc_')", arg=new_escrow.element_handle(), timeout=30_000
        )
        escrow_id = new_escrow.input_value()

        page.get_by_role("tab", name="Classify").click()
        escrow_box = page.locator("#escrow-id textarea, #escrow-id input").first
        assert escrow_box.input_value() == escrow_id
        page.get_by_label("Text").fill("I love this, it is wonderful")
        page.get_by_role("button", name="Classify (0.001 USDC)").click()
        receipt = page.locator("#receipt")
        receipt.get_by_text("charge_id").wait_for(timeout=60_000)
        result_text = page.locator("#result").inner_text()
        assert any(label in result_text for label in ("negative", "neutral", "positive")), result_text
        assert escrow_id in receipt.inner_text()
        page.screenshot(path=str(tmp_path / "paid-call.png"), full_page=True)

        escrow_box.fill("esc_bad")
        page.get_by_role("button", name="Classify (0.001 USDC)").click()
        page.get_by_text("not charged").first.wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "refusal.png"), full_page=True)
        assert outside == []
    finally:
        page.close()
