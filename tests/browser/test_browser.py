"""A person in a browser (Chromium at 1280 and 390 px): one-click sandbox payment, refusals, the receipt, the wallet."""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import CHROMIUM, HAVE_CHROMIUM, browser  # noqa: F401 - test_seller_tab.py imports browser here

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not HAVE_CHROMIUM, reason=f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    ),
]

CLASSIFY = "Classify (0.001 USDC)"
ONE_CLICK = "Get test USDC + open an escrow"
LABELS = ("negative", "neutral", "positive")
ESCROW_ID = re.compile(r"esc_[A-Za-z0-9]{20,40}")


def open_space(new_page, space, width: int = 1280):
    """The Space's page, noting in `page.outside` every request that leaves this machine."""
    page = new_page(width)
    page.outside = []
    page.on(
        "request",
        lambda r: page.outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None,
    )
    page.goto(space.url, wait_until="load")
    return page


def escrow_box(page):
    return page.locator("#escrow-id textarea, #escrow-id input").first


def status(page):
    return page.locator("#payment-status")


def open_escrow_in_one_click(page) -> str:
    page.get_by_role("button", name=ONE_CLICK).click()
    status(page).get_by_text("Opened escrow").wait_for()
    escrow_id = escrow_box(page).input_value()
    assert ESCROW_ID.fullmatch(escrow_id), escrow_id
    return escrow_id


def pay_for_one_call(page, text: str = "I love this, it is wonderful") -> str:
    """Fill the text, click Classify, wait for the payment line; returns it."""
    page.get_by_label("Text").fill(text)
    page.get_by_role("button", name=CLASSIFY).click()
    status(page).get_by_text("Paid").wait_for()
    return status(page).inner_text()


def no_error_toast_or_badge(page) -> None:
    """A refusal is a sentence on the page: no toast, and no red "Error" badge on the result panes."""
    assert page.locator(".toast-body").count() == 0
    for pane in ("#sentiment", "#result", "#receipt"):
        if page.locator(pane).count():  # the JSON panes are drawn once their accordion is opened
            assert page.locator(f"{pane} .error").count() == 0, pane
            assert "Error" not in page.locator(pane).inner_text(), pane


def test_one_click_sandbox_payment_then_a_paid_classification_in_words(new_page, sandbox_space):
    page = open_space(new_page, sandbox_space)
    assert "Answers come from" in page.locator("#model-note").inner_text()  # which model answers

    escrow_id = open_escrow_in_one_click(page)
    assert "0.05 test USDC" in status(page).inner_text()

    page.get_by_text("I love this, it is wonderful!").first.click()  # an example fills the text
    page.wait_for_function("el => el.value.length > 0", arg=page.get_by_label("Text").element_handle())
    page.get_by_role("button", name=CLASSIFY).click()
    status(page).get_by_text("Paid").wait_for()
    line = status(page).inner_text()
    assert f"Paid 0.001 USDC · 0.049 USDC left in {escrow_id}" in line, line

    sentiment = page.locator("#sentiment").inner_text()
    assert any(label in sentiment for label in LABELS), sentiment
    assert "%" in sentiment  # the score, as the bar's figure

    receipt = page.locator("#receipt")
    assert not receipt.is_visible()  # the raw JSON is one click away
    page.get_by_text("Raw result and receipt").click()
    receipt.get_by_text("charge_id").wait_for()
    assert escrow_id in receipt.inner_text()
    assert '"0.001000"' in receipt.inner_text()
    assert page.outside == []


def test_a_refusal_says_what_to_do_and_keeps_the_last_good_result(new_page, sandbox_space):
    page = open_space(new_page, sandbox_space)

    # No escrow yet: the page says how to get one, on the page, not as a toast written for API callers.
    page.get_by_label("Text").fill("I love this, it is wonderful")
    page.get_by_role("button", name=CLASSIFY).click()
    status(page).get_by_text("Escrow ID box is empty").wait_for()
    said = status(page).inner_text()
    assert ONE_CLICK in said and "Sandbox wallet" in said and "not charged" in said, said
    assert "X-Escrow-Id" not in said
    no_error_toast_or_badge(page)

    escrow_id = open_escrow_in_one_click(page)
    pay_for_one_call(page)
    page.get_by_text("Raw result and receipt").click()
    page.locator("#receipt").get_by_text("charge_id").wait_for()
    sentiment, receipt = page.locator("#sentiment").inner_text(), page.locator("#receipt").inner_text()

    # A refused call, twice: one sentence (no stacked toasts), and the last paid result stays in place.
    escrow_box(page).fill("esc_" + "a" * 24)
    for _ in range(2):
        page.get_by_role("button", name=CLASSIFY).click()
        status(page).get_by_text("was not found").wait_for()
    said = status(page).inner_text()
    assert "not charged" in said and "Open a new one" in said and "last paid call" in said, said
    no_error_toast_or_badge(page)
    assert page.locator("#sentiment").inner_text() == sentiment
    assert page.locator("#receipt").inner_text() == receipt
    assert escrow_id in receipt

    # Empty text: refused before anything is reserved, said on the page.
    escrow_box(page).fill(escrow_id)
    page.get_by_label("Text").fill("   ")
    page.get_by_role("button", name=CLASSIFY).click()
    status(page).get_by_text("enter some text").wait_for()
    no_error_toast_or_badge(page)
    assert page.locator("#receipt").inner_text() == receipt


def test_the_receipt_at_390_px_wraps_its_ids_and_clips_nothing(new_page, sandbox_space):
    page = open_space(new_page, sandbox_space, width=390)
    escrow_id = open_escrow_in_one_click(page)
    pay_for_one_call(page)
    page.get_by_text("Raw result and receipt").click()
    receipt = page.locator("#receipt")
    receipt.get_by_text("charge_id").wait_for()
    charge_id = re.search(r"chg_[A-Za-z0-9]+|hold_[A-Za-z0-9]+|ded_[A-Za-z0-9]+", receipt.inner_text()).group(0)

    # Nothing scrolls sideways: not the page, not the receipt's JSON, not the status line.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for selector in ("#receipt .json-holder", "#result .json-holder", "#payment-status"):
        width, visible = page.locator(selector).evaluate("e => [e.scrollWidth, e.clientWidth]")
        assert width <= visible, (selector, width, visible)
    # Each ID is drawn inside its pane, all of it (wrapped where it must be).
    for pane, text in (("#receipt", escrow_id), ("#receipt", charge_id), ("#payment-status", escrow_id)):
        box = page.locator(pane).bounding_box()
        drawn = page.locator(pane).get_by_text(text).first.evaluate(
            """e => { const range = document.createRange(); range.selectNodeContents(e);
                      const r = range.getBoundingClientRect(); return [r.left, r.right]; }"""
        )
        assert box["x"] <= drawn[0] and drawn[1] <= box["x"] + box["width"] + 0.5, (pane, text, drawn, box)
    assert receipt.inner_text().replace("\n", "").count(escrow_id) == 1


def test_the_wallet_tab_step_by_step_refuses_an_escrow_smaller_than_one_call(new_page, sandbox_space):
    page = open_space(new_page, sandbox_space)
    page.get_by_role("tab", name="Sandbox wallet").click()
    page.get_by_role("button", name="1. Register a buyer").click()
    wallet = page.locator("#wallet-status")
    wallet.get_by_text("balance").wait_for()
    page.get_by_role("button", name="2. Claim 10 test USDC").click()
    wallet.get_by_text("10 USDC").wait_for()

    page.get_by_label("Escrow amount (USDC)").fill("0.0005")
    page.get_by_role("button", name="3. Open an escrow for this Space").click()
    wallet.get_by_text("cannot pay for a single call").wait_for()
    assert "0.001 USDC" in wallet.inner_text()
    assert page.locator(".toast-body").count() == 0

    page.get_by_label("Escrow amount (USDC)").fill("0.05")
    page.get_by_role("button", name="3. Open an escrow for this Space").click()
    new_escrow = page.locator("#new-escrow-id textarea, #new-escrow-id input").first
    page.wait_for_function("el => el.value.startsWith('esc_')", arg=new_escrow.element_handle())
    wallet.get_by_text("1 escrow(s) open").wait_for()
    escrow_id = new_escrow.input_value()

    page.get_by_role("tab", name="Classify").click()
    assert escrow_box(page).input_value() == escrow_id
    assert f"0.049 USDC left in {escrow_id}" in pay_for_one_call(page)
    assert page.outside == []
