"""The buyer library against a plain FastAPI route guarded by ``gate.paid_route`` on a real escrow server (per_call
settlement: every charge is captured before the answer, so the ledger can be checked at once)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from buyer import (
    BudgetExhausted,
    ChargeUnknown,
    EscrowClosed,
    EscrowExpired,
    FunctionFailed,
    InsufficientFunds,
    InvalidInput,
    PaymentError,
    PriceTooHigh,
    ServiceUnavailable,
)
from tests.buyer.helpers import call_until_exhausted

PRICE = Decimal("0.001")


def test_plain_route_positional_and_named_arguments(shop):
    wallet = shop.wallet("1")
    with wallet.space(shop.url, budget_usdc="0.01") as space:
        result, receipt = space.call("shout", "hi")
        assert result == {"text": "HI"}
        assert receipt.charged_usdc == PRICE and receipt.model == "upper" and receipt.escrow_id == space.escrow_id
        result, _ = space.call("shout", text="named")
        assert result == {"text": "NAMED"}
        assert space.spent_usdc == Decimal("0.002")
        with pytest.raises(TypeError):
            space.call("shout", "a", "b")
    assert "named" in shop.ran
    statement = space.statement
    assert statement.calls == 2 and statement.charged_usdc == statement.captured_usdc == Decimal("0.002")
    [entry] = statement.escrows
    assert entry.status == "released" and entry.released
    assert entry.refunded_usdc == Decimal("0.008") and entry.held_usdc == 0
    assert wallet.balance_usdc() == Decimal("0.998")  # the rest came back


def test_next_escrow_when_one_runs_dry_then_budget_exhausted(shop):
    wallet = shop.wallet("1")
    with wallet.space(shop.url, budget_usdc="0.0055", escrow_usdc="0.002") as space:
        for _ in range(5):
            space.call("shout", "x")
        assert len(space.escrow_ids) == 3  # 0.002 + 0.002 + 0.0015
        with pytest.raises(BudgetExhausted) as caught:
            space.call("shout", "x")
        assert isinstance(caught.value.__cause__, InsufficientFunds)
        assert caught.value.charged is False and caught.value.locked_usdc == Decimal("0.0055")
    statement = space.statement
    assert [e.amount_usdc for e in statement.escrows] == [Decimal("0.002"), Decimal("0.002"), Decimal("0.0015")]
    assert statement.calls == 5 and statement.matches and statement.settled
    assert statement.refunded_usdc == Decimal("0.0005")
    assert wallet.balance_usdc() == Decimal("0.995")


def test_eight_threads_never_lock_more_than_the_budget(shop):
    wallet = shop.wallet("1")
    with wallet.space(shop.url, budget_usdc="0.0235", escrow_usdc="0.004") as space:
        results, errors = call_until_exhausted(space, 8, "shout", "t")
        assert space.locked_usdc <= Decimal("0.0235")
    assert len(errors) == 8
    statement = space.statement
    assert statement.locked_usdc <= Decimal("0.0235")
    assert sum(wallet.escrow(e.escrow_id)["amount_usdc"] for e in statement.escrows) == statement.locked_usdc
    assert len(results) == statement.calls == 23  # every whole call the budget could pay for
    assert statement.charged_usdc == statement.captured_usdc == sum(r.charged_usdc for r in results)
    assert wallet.balance_usdc() == Decimal("1") - statement.charged_usdc


def test_closed_and_expired_escrows_are_replaced(shop):
    wallet = shop.wallet("1")
    with wallet.space(shop.url, budget_usdc="0.01", escrow_usdc="0.003") as space:
        space.call("shout", "a")
        first = space.escrow_id
        wallet.release(first)  # behind the session's back
        space.call("shout", "b")
        second = space.escrow_id
        assert second != first
        shop.server.clock.tick(3601)  # past the escrow's TTL
        space.call("shout", "c")
        assert space.escrow_id not in (first, second)
    statement = space.statement
    assert [e.status for e in statement.escrows] == ["released", "expired", "released"]
    assert statement.calls == 3 and statement.matches
    assert wallet.balance_usdc() == Decimal("0.997")


def test_dry_refusals_reach_the_caller_through_budget_exhausted(shop):
    wallet = shop.wallet("1")
    with wallet.space(shop.url, budget_usdc="0.002") as space:
        space.call("shout", "a")
        wallet.release(space.escrow_id)
        with pytest.raises(BudgetExhausted) as caught:
            space.call("shout", "b")
        assert isinstance(caught.value.__cause__, EscrowClosed)
    with wallet.space(shop.url, budget_usdc="0.002") as space:
        space.call("shout", "a")
        shop.server.clock.tick(3601)
        with pytest.raises(BudgetExhausted) as caught:
            space.call("shout", "b")
        assert isinstance(caught.value.__cause__, EscrowExpired)
    assert space.statement.escrows[0].status == "expired"


def test_refusals_are_typed_and_not_charged(shop):
    wallet = shop.wallet("1")
    with wallet.space(shop.url, budget_usdc="0.01", retries=0) as space:
        with pytest.raises(InvalidInput) as caught:
            space.call("shout", "x" * 51)  # the Space's check=
        assert caught.value.code == "invalid_input" and caught.value.charged is False and caught.value.status == 422
        with pytest.raises(InvalidInput):
            space.call("shout", texte="typo")  # FastAPI's own validation
        with pytest.raises(FunctionFailed) as caught:
            space.call("shout", "fail")
        assert caught.value.charged is False and "not charged" in caught.value.message
        space.call("shout", "ok")
        shop.server.stop()  # the escrow service goes away: the gate cannot reserve
        try:
            with pytest.raises(ServiceUnavailable) as caught:
                space.call("shout", "down")
            assert caught.value.charged is False and caught.value.status == 503 and caught.value.retry_after == 5
        finally:
            shop.server.start()
    statement = space.statement
    assert statement.calls == 1 and statement.refused == 4 and statement.unknown == 0
    assert statement.charged_usdc == statement.captured_usdc == PRICE


def test_price_cap(shop):
    wallet = shop.wallet("1")
    with pytest.raises(PriceTooHigh) as caught:
        wallet.space(shop.url, budget_usdc="1", max_price_usdc="0.0009")
    assert caught.value.price_usdc == PRICE and caught.value.charged is False
    shop.list("dear", ["text"], price="0.500000")  # listed, but above the cap: refused before any escrow
    try:
        with wallet.space(shop.url, budget_usdc="1", max_price_usdc="0.01") as space:
            with pytest.raises(PriceTooHigh):
                space.call("dear", "x")
            assert space.escrow_ids == []
    finally:
        del shop.pricing["functions"]["dear"]
    assert wallet.me()["escrows_open"] == 0 and wallet.balance_usdc() == Decimal("1")


def test_lost_connection_after_sending_is_charge_unknown(shop):
    import time

    @shop.served.app.post("/v1/slow")
    @shop.gate.paid_route(__import__("gate").PerCall(PRICE), reason="slow")
    def slow(body: dict) -> str:
        time.sleep(1.5)
        return "late"

    shop.list("slow", ["body"])
    wallet = shop.wallet("1")
    try:
        with wallet.space(shop.url, budget_usdc="0.01", timeout=(3.05, 0.5), settle_timeout_s=5) as space:
            with pytest.raises(ChargeUnknown) as caught:
                space.call("slow", {"x": 1})
            assert caught.value.charged is None and caught.value.escrow_id == space.escrow_id
            assert isinstance(caught.value, PaymentError)
        # the Space did run and charge it: the statement shows what the receipts could not
        statement = space.statement
        assert statement.unknown == 1 and statement.calls == 0
    finally:
        del shop.pricing["functions"]["slow"]
