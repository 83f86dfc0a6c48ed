"""EscrowGate.stats(): the seller's counters, checked against the receipts handed out and the real ledger."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gate import GateError, Lease, PerCall

PRICE = PerCall("0.001")


@pytest.mark.parametrize("settlement", ["per_call", "lease"])
def test_counters_match_the_receipts_and_the_ledger(market, settlement, adapter):
    gate = market.gate(settlement=Lease(capture_interval_s=3600) if settlement == "lease" else "per_call")
    escrow_id, poor = market.escrow("0.010"), market.escrow("0.0005")

    @adapter.paid(gate, PRICE, reason="echo", receipt=True)
    def echo(text: str) -> str:
        if text == "fail":
            raise RuntimeError("boom")
        return text

    receipts = [echo(str(i), escrow_id)[1] for i in range(3)]
    for escrow, text in ((poor, "x"), (escrow_id, "fail"), ("esc_" + "Q" * 24, "x")):
        with pytest.raises(GateError):
            echo(text, escrow)
    stats = gate.stats()
    assert stats["calls"] == {"paid": 3, "refused": 2, "failed": 1, "withheld": 0, "cancelled": 0,
                              "abandoned": 0, "empty": 0}
    assert stats["refusals"] == {"insufficient_funds": 1, "escrow_not_found": 1}
    assert stats["charged_usdc"] == sum(Decimal(r["charged_usdc"]) for r in receipts) == Decimal("0.003")
    assert [r["charge_id"] for r in stats["recent"]] == [r["charge_id"] for r in receipts]
    assert sum(minute["calls"] for minute in stats["per_minute"]) == 3
    assert stats["latency_s"]["reserve"]["count"] == 6  # every call that got past its input check
    assert stats["latency_s"]["settle"]["count"] == 3
    assert stats["requests"]["POST /escrow/{id}/holds"] >= 1
    if settlement == "lease":
        assert stats["open_leases"] == 1 and stats["owed_usdc"] == Decimal("0.003")
        assert stats["captured_usdc"] == 0  # nothing captured yet: a capture interval of an hour
    else:
        assert stats["open_leases"] == 0 and stats["captured_usdc"] == Decimal("0.003")
    gate.close()
    stats = gate.stats()
    assert stats["captured_usdc"] == stats["charged_usdc"] == market.balance(escrow_id)["spent_usdc"]
    assert stats["open_leases"] == 0 and stats["owed_usdc"] == 0


def test_streams_count_as_abandoned_or_empty(market):
    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("0.010")

    @gate.paid(PRICE, reason="stream")
    def stream(n: int):
        yield from (f"item {i}" for i in range(int(n)))

    abandoned = stream(5, escrow_id)
    assert next(abandoned) == "item 0"
    abandoned.close()  # the client went away after one item: charged for it
    assert list(stream(0, escrow_id)) == []  # yielded nothing: voided
    gate.close()  # the abandoned stream is charged in the background: closing waits for it
    stats = gate.stats()
    assert stats["calls"]["abandoned"] == 1 and stats["calls"]["empty"] == 1 and stats["calls"]["paid"] == 0
    assert stats["charged_usdc"] == stats["captured_usdc"] == market.balance(escrow_id)["spent_usdc"] == Decimal("0.001")
