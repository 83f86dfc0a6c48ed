"""The seller in a browser (sandbox mode): the Seller tab shows paid calls and receipts, and refreshes itself."""

from __future__ import annotations

import requests

from tests.browser.test_browser import pytestmark  # noqa: F401 - browser, and skipped without Chromium


def paid_call(space, escrow_id: str) -> str:
    answer = requests.post(space.server.base_url + "/v1/classify", json={"text": "great"},
                           headers={"X-Escrow-Id": escrow_id}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["receipt"]["charge_id"]


def test_the_seller_tab_shows_calls_and_refreshes_while_shown(new_page, sandbox_space):
    sandbox = sandbox_space.sandbox
    buyer = sandbox.register("seller-tab-buyer")
    sandbox.fund(buyer, "1")
    escrow_id = sandbox.open_escrow(buyer, sandbox_space.seller().agent_id, "0.010")
    first = paid_call(sandbox_space, escrow_id)
    page = new_page(1280, 1400)
    page.goto(sandbox_space.url, wait_until="load")
    page.get_by_role("tab", name="Seller").click()
    page.locator("#seller-summary").get_by_text("1 paid calls").wait_for()
    page.locator("#seller-receipts").get_by_text(first).filter(visible=True).first.wait_for()
    second = paid_call(sandbox_space, escrow_id)  # no click: the tab's timer picks it up
    page.locator("#seller-summary").get_by_text("2 paid calls").wait_for()
    page.locator("#seller-receipts").get_by_text(second).filter(visible=True).first.wait_for()
