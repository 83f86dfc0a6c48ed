"""The buyer library against the real Space (`python app.py`, sandbox mode, a tiny offline model) over real HTTP.

The Space settles by lease: charges are captured every few seconds, and a lease's unused rest goes back to the
buyer when the lease closes (idle for 30 s), so the final ledger check is marked slow.
"""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from buyer import InsufficientFunds, InvalidInput, PriceTooHigh, Wallet
from tests.buyer.helpers import call_until_exhausted
from tests.support.space import sandbox_space, tiny_model_dir  # noqa: F401 - fixtures (the Space: Python 3.11 only)

PRICE = Decimal("0.001")


def test_three_line_example(sandbox_space):
    url = sandbox_space.url
    wallet = Wallet.sandbox(url)
    with wallet.space(url, budget_usdc="0.05") as space:
        result, receipt = space.call("classify", "I love this!")
    assert result["label"] in ("negative", "neutral", "positive")
    assert receipt.charged_usdc == PRICE and receipt.escrow_id == space.escrow_id and receipt.charge_id
    statement = space.statement
    assert statement.calls == 1 and statement.charged_usdc == statement.captured_usdc == PRICE
    [entry] = statement.escrows
    assert entry.status == "released" and entry.released
    # what the lease does not hold came back at once; what it holds comes back when the lease closes
    assert entry.amount_usdc == entry.captured_usdc + entry.held_usdc + entry.remaining_usdc + entry.refunded_usdc
    assert wallet.balance_usdc() == Decimal("1") - Decimal("0.05") + entry.refunded_usdc


def test_eight_threads_until_the_budget_runs_out(sandbox_space):
    url = sandbox_space.url
    wallet = Wallet.sandbox(url)
    budget = Decimal("0.012")
    with wallet.space(url, budget_usdc=budget, escrow_usdc="0.005") as space:
        receipts, exhausted = call_until_exhausted(space, 8, "classify", "fine")
        assert space.locked_usdc == budget
    assert len(exhausted) == 8 and all(isinstance(e.__cause__, InsufficientFunds) for e in exhausted)
    statement = space.statement
    assert [e.amount_usdc for e in statement.escrows] == [Decimal("0.005"), Decimal("0.005"), Decimal("0.002")]
    assert sum(wallet.escrow(e.escrow_id)["amount_usdc"] for e in statement.escrows) == budget
    assert len(receipts) == statement.calls == 12
    assert statement.charged_usdc == statement.captured_usdc == sum(r.charged_usdc for r in receipts) == budget
    assert statement.matches


def test_price_above_the_cap_is_refused_before_spending(sandbox_space):
    url = sandbox_space.url
    wallet = Wallet.sandbox(url)
    with pytest.raises(PriceTooHigh) as caught:
        wallet.space(url, budget_usdc="0.05", max_price_usdc="0.0005")
    assert caught.value.price_usdc == PRICE and caught.value.max_price_usdc == Decimal("0.0005")
    assert wallet.me()["escrows_open"] == 0 and wallet.balance_usdc() == Decimal("1")


@pytest.mark.parametrize("transport", ["auto", "route", "gradio_api", "gradio_client"])
def test_transports_and_a_refusal(sandbox_space, transport):
    url = sandbox_space.url
    wallet = Wallet.sandbox(url, faucet_usdc="0.01")
    with wallet.space(url, budget_usdc="0.01", transport=transport) as space:
        result, receipt = space.call("classify", "I love this!")
        assert result["label"] in ("negative", "neutral", "positive") and receipt.charged_usdc == PRICE
        result, receipt = space.call("classify", text="I hate this")
        assert receipt.charged_usdc == PRICE
        with pytest.raises(InvalidInput) as caught:
            space.call("classify", "   ")
        assert caught.value.charged is False and caught.value.code == "invalid_input"
    statement = space.statement
    assert statement.calls == 2 and statement.refused == 1 and statement.captured_usdc == 2 * PRICE


@pytest.mark.slow
def test_statement_matches_the_ledger_once_the_leases_close(sandbox_space):
    url = sandbox_space.url
    wallet = Wallet.sandbox(url, faucet_usdc="1")
    with wallet.space(url, budget_usdc="0.02", escrow_usdc="0.008") as space:
        for text in ["good", "bad", "meh"] * 4:
            space.call("classify", text)
    statement = space.statement
    assert statement.matches and statement.charged_usdc == Decimal("0.012")
    deadline = time.monotonic() + 60  # a lease closes once idle for 30 s
    while not statement.settled and time.monotonic() < deadline:
        time.sleep(1)
        statement = space.refresh_statement()
    assert statement.settled, str(statement)
    assert space.statement is statement
    for entry in statement.escrows:
        ledger = wallet.escrow(entry.escrow_id)
        assert (ledger["spent_usdc"], ledger["refunded_usdc"]) == (entry.charged_usdc, entry.refunded_usdc)
        assert entry.refunded_usdc == entry.amount_usdc - entry.charged_usdc
    assert statement.refunded_usdc == statement.locked_usdc - Decimal("0.012")
    assert wallet.balance_usdc() == Decimal("1") - Decimal("0.012")
