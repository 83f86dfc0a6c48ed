"""The Space in sandbox mode, end to end through gradio_client against `python app.py`."""

from __future__ import annotations

from decimal import Decimal

import pytest
import requests
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.support.processes import space_process

PRICE = Decimal("0.001")


@pytest.fixture(scope="module")
def client(sandbox_space) -> Client:
    return Client(sandbox_space.url, verbose=False)


@pytest.fixture(scope="module")
def seller_id(client) -> str:
    return client.predict(api_name="/pricing")["seller_id"]


def test_pricing_names_the_seller_and_the_price(client, sandbox_space):
    pricing = client.predict(api_name="/pricing")
    assert pricing["seller_id"] == sandbox_space.seller().agent_id
    assert Decimal(pricing["price_per_call_usdc"]) == PRICE
    assert pricing["mode"] == "sandbox"
    assert pricing["escrow_api"].endswith("/sandbox/api")


@pytest.mark.parametrize(
    "price,sentence",
    [
        # Used to start, advertise 0.0000001 and charge 0.000001 (10x) per call.
        ("0.0000001", "PRICE_PER_CALL_USDC 0.0000001 has more than 6 decimals: "
                      "USDC is charged in whole micro-USDC (0.000001)."),
        ("1e20", "PRICE_PER_CALL_USDC is above 1000000000 USDC (got '1e20')."),
        ("abc", "PRICE_PER_CALL_USDC must be a positive decimal number such as 0.001, not 'abc'."),
    ],
)
def test_a_price_that_cannot_be_charged_as_listed_stops_the_space_with_one_sentence(tmp_path, price, sentence):
    server = space_process(tmp_path, PRICE_PER_CALL_USDC=price)
    with pytest.raises(RuntimeError):
        server.start(timeout_s=90)
    assert server.process.wait(30) == 1
    output = server.log()
    assert "Traceback" not in output
    assert f"Cannot start the Space: {sentence}\n" in output


def test_classify_by_argument_and_by_header_charges_the_escrow(sandbox_space, client, seller_id):
    sandbox = sandbox_space.sandbox
    buyer = sandbox.register()
    sandbox.fund(buyer, "1")
    escrow_id = sandbox.open_escrow(buyer, seller_id, "0.010")

    result, receipt = client.predict("I love this, it is wonderful", escrow_id, api_name="/classify")
    assert result["label"] in {"negative", "neutral", "positive"}
    assert 0 <= result["score"] <= 1
    assert receipt["escrow_id"] == escrow_id
    assert Decimal(receipt["charged_usdc"]) == PRICE
    assert receipt["charge_id"]
    assert receipt["model"]
    assert Decimal(receipt["remaining_usdc"]) == Decimal("0.010") - PRICE

    by_header = Client(sandbox_space.url, verbose=False, headers={"X-Escrow-Id": escrow_id})
    result2, receipt2 = by_header.predict("This is terrible", "", api_name="/classify")
    assert result2["label"] in {"negative", "neutral", "positive"}
    assert receipt2["escrow_id"] == escrow_id
    assert receipt2["charge_id"] != receipt["charge_id"]

    # Lease settlement: the charges are captured within seconds; the unused lease stays held.
    escrow = sandbox.escrow_once_spent(buyer, escrow_id, 2 * PRICE)
    assert escrow["spent_usdc"] == 2 * PRICE
    assert escrow["remaining_usdc"] + escrow["held_usdc"] == Decimal("0.010") - 2 * PRICE
    assert Decimal(receipt2["remaining_usdc"]) == escrow["remaining_usdc"] + escrow["held_usdc"]
    # The seller was paid what was spent, less the 1% fee.
    seller = sandbox_space.seller()
    me = requests.get(f"{sandbox.root}/me", headers=seller.auth, timeout=10).json()
    assert Decimal(me["balance_usdc"]) >= 2 * PRICE * Decimal("0.99")  # amounts are decimal strings


@pytest.mark.parametrize(
    "bad_id",
    ["esc_short", "../me", "esc_aaaaaaaaaaaaaaaaaaaaaaaa/release", "esc_%2e%2e", "x" * 10_000, "esc_ÄÖÜaaaaaaaaaaaaaaaaaaaa"],
)
def test_bad_escrow_id_is_refused_and_costs_nothing(sandbox_space, client, seller_id, bad_id):
    with pytest.raises(AppError, match="not charged"):
        client.predict("hello there", bad_id, api_name="/classify")


def test_missing_escrow_id_is_refused(client):
    with pytest.raises(AppError, match="not charged"):
        client.predict("hello there", "", api_name="/classify")


def test_empty_text_costs_nothing(sandbox_space, client, seller_id):
    sandbox = sandbox_space.sandbox
    buyer = sandbox.register()
    sandbox.fund(buyer, "1")
    escrow_id = sandbox.open_escrow(buyer, seller_id, "0.005")
    for text in ["", "   \n\t "]:
        with pytest.raises(AppError, match="not charged") as refused:
            client.predict(text, escrow_id, api_name="/classify")
        assert "text" in str(refused.value).lower()
    escrow = sandbox.escrow(buyer, escrow_id)
    assert escrow["spent_usdc"] == 0
    assert escrow["held_usdc"] == 0
    assert escrow["remaining_usdc"] == Decimal("0.005")


def test_escrow_too_small_for_one_call_is_refused(sandbox_space, client, seller_id):
    sandbox = sandbox_space.sandbox
    buyer = sandbox.register()
    sandbox.fund(buyer, "1")
    escrow_id = sandbox.open_escrow(buyer, seller_id, "0.0004")
    with pytest.raises(AppError, match="not charged"):
        client.predict("hello", escrow_id, api_name="/classify")
    assert sandbox.escrow(buyer, escrow_id)["remaining_usdc"] == Decimal("0.0004")


def test_very_long_text_is_classified(sandbox_space, client, seller_id):
    sandbox = sandbox_space.sandbox
    buyer = sandbox.register()
    sandbox.fund(buyer, "1")
    escrow_id = sandbox.open_escrow(buyer, seller_id, "0.002")
    result, receipt = client.predict("good " * 4000, escrow_id, api_name="/classify")
    assert result["label"] in {"negative", "neutral", "positive"}
    assert Decimal(receipt["charged_usdc"]) == PRICE


def test_seller_key_never_reaches_the_page_or_the_api_schema(sandbox_space):
    key = sandbox_space.seller().api_key
    base = sandbox_space.server.base_url
    for path in ["/", "/config", "/gradio_api/info"]:
        body = requests.get(base + path, timeout=10).text
        assert key not in body, path
    assert key not in sandbox_space.server.log()


def test_the_public_classify_api_is_unchanged_and_the_pages_own_events_are_private(sandbox_space):
    """Agents depend on /classify: inputs [text, escrow_id], outputs [result, receipt]. The page's own events (its
    Classify button, the one-click escrow, the examples, the wallet) are private: not listed, not callable."""
    info = requests.get(sandbox_space.server.base_url + "/gradio_api/info?all_endpoints=true", timeout=10).json()
    assert set(info["named_endpoints"]) == {"/classify", "/pricing"}
    assert not info["unnamed_endpoints"]
    classify = info["named_endpoints"]["/classify"]
    assert [(p["parameter_name"], p["label"], p["component"]) for p in classify["parameters"]] == [
        ("text", "Text", "Textbox"), ("escrow_id", "Escrow ID", "Textbox")]
    assert [(r["label"], r["component"]) for r in classify["returns"]] == [("Result", "Json"), ("Receipt", "Json")]
