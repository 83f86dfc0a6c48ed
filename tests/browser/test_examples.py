"""A person in a browser on the example Spaces: a one-click sandbox escrow, then a paid chat reply streamed into
the ChatInterface, and paid embeddings; the payment line names what was counted."""

from __future__ import annotations

import pytest

from tests.browser.conftest import CHROMIUM, HAVE_CHROMIUM, browser  # noqa: F401 - fixture
from tests.browser.test_browser import open_escrow_in_one_click, open_space, status
from tests.examples.conftest import chat_space, embeddings_space, example_space  # noqa: F401 - fixtures
from tests.support.tiny_model import tiny_chat_model_dir, tiny_encoder_dir  # noqa: F401 - fixtures

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not HAVE_CHROMIUM, reason=f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    ),
]


def test_a_chat_reply_streams_into_the_page_and_says_what_its_tokens_cost(new_page, chat_space):
    page = open_space(new_page, chat_space)
    message = page.locator("textarea").last  # the chat's message box, under the conversation
    message.fill("Hello without an escrow")
    message.press("Enter")
    status(page).get_by_text("You were not charged").wait_for()  # a next step under the escrow box, no toast
    assert "Escrow ID box is empty" in status(page).inner_text()
    assert page.locator(".toast-body").count() == 0

    escrow_id = open_escrow_in_one_click(page)
    message.fill("Hello there")
    message.press("Enter")
    status(page).get_by_text("Paid").wait_for()
    line = status(page).inner_text()
    assert "input tokens and" in line and "output tokens" in line and escrow_id in line, line
    bot = page.locator(".message.bot, [data-testid='bot']").last
    assert bot.inner_text().strip(), "the reply is on the page"
    assert page.outside == []


def test_embeddings_on_the_page_say_how_many_vectors_were_paid_for(new_page, embeddings_space):
    page = open_space(new_page, embeddings_space)
    escrow_id = open_escrow_in_one_click(page)
    page.get_by_label("Texts, one per line").fill("first text\nsecond text\n\nthird text")
    page.get_by_role("button", name="Embed", exact=True).click()
    status(page).get_by_text("Paid").wait_for()
    line = status(page).inner_text()
    assert "Paid 0.00003 USDC for 3 vectors" in line and escrow_id in line, line
    assert page.outside == []
