"""The gate under network faults between it and the escrow service (tests/support/fault_proxy.py).

For each fault on each kind of request, a stream of paid calls (some of which fail in the
function) runs through the gate. Every call ends in exactly one of: a result with a receipt,
or a refusal saying "not charged". The books are reconciled afterwards: the receipts are
exactly what the escrow settled, nothing settled twice, every orphaned hold returned.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from gate import FunctionFailed, GateError, PerCall, ServiceUnavailable, SettlementFailed

pytestmark = [pytest.mark.fault]

PRICE = PerCall("0.001")
FAST = dict(timeout=(0.5, 0.75))  # a black-holed request costs 0.75 s, not 10

FAULTS = {
    "delay": dict(delay_s=0.2, times=2),
    "drop": dict(times=1),
    "drop_after": dict(times=1),
    "error": dict(times=1),
    "error_after": dict(times=1),
    "reset": dict(times=1),
    "blackhole": dict(times=1),
}
TARGETS = {
    "lookup": "^GET /api/escrow/",
    "hold": "/holds$",  # POST …/holds (open), not capture/void
    "capture": "/capture$",
    "void": "/void$",
}


def run_stream(market, gate, escrow_id, calls=8, threads=2, fail_every=3):
    """Paid calls; every `fail_every`-th call's function raises (its hold must be voided)."""

    @gate.paid(PRICE, reason="echo", receipt=True)
    def echo(i: int) -> int:
        if i % fail_every == fail_every - 1:
            raise RuntimeError("model exploded")
        return i * 2

    outcomes = Counter()

    def one(i):
        try:
            result, receipt = echo(i, escrow_id)
        except SettlementFailed as refusal:
            outcomes["settlement_failed"] += 1
            market.audit.refused(refusal.message)
            assert "not charged" in refusal.message.lower(), refusal.message
        except FunctionFailed as refusal:
            assert i % fail_every == fail_every - 1
            outcomes["function_failed"] += 1
            market.audit.refused(refusal.message)
            assert "not charged" in refusal.message.lower(), refusal.message
        except GateError as refusal:
            outcomes[type(refusal).__name__] += 1
            market.audit.refused(refusal.message)
            assert "not charged" in refusal.message.lower(), refusal.message
        else:
            assert result == i * 2 and i % fail_every != fail_every - 1
            outcomes["paid"] += 1
            market.audit.paid(result, receipt)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(calls)))
    return outcomes


def assert_posts_were_safe(proxy):
    """Every POST carried an Idempotency-Key, and a key was only ever reused for the same request."""
    seen: dict[str, str] = {}
    for _, line, _, key in proxy.log:
        if line.startswith("POST"):
            assert key, f"a POST without an Idempotency-Key: {line}"
            assert seen.setdefault(key, line) == line, f"key {key} reused for {line} and {seen[key]}"


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("fault", list(FAULTS))
def test_stream_of_paid_calls_under_fault(market, fault, target):
    if target == "void" and market.settlement == "lease":
        pytest.skip("a lease closes with a final capture, never /void")
    gate = market.gate(**FAST)
    escrow_id = market.escrow("0.050")
    market.proxy.add(fault, TARGETS[target], **FAULTS[fault])
    outcomes = run_stream(market, gate, escrow_id)
    gate.close()
    assert market.proxy.faults_applied(), f"the {fault} fault never hit a {target} request"
    assert_posts_were_safe(market.proxy)
    # A single fault is absorbed by the retries: every call that ran well was paid.
    assert outcomes["paid"] == 8 - 2, (fault, target, outcomes, market.proxy.faults_applied())
    market.expire_everything_open()
    market.audit.reconcile()


@pytest.mark.parametrize("fault", ["drop", "error", "blackhole", "drop_after", "error_after", "reset"])
def test_service_down_for_good_refuses_and_charges_nothing(market, fault):
    """Every request faulted: nothing runs unpaid, every refusal says not charged."""
    gate = market.gate(**FAST, settle_retries=1)
    escrow_id = market.escrow("0.050")
    ran = []

    @gate.paid(PRICE, reason="echo", receipt=True)
    def echo(i: int) -> int:
        ran.append(i)
        return i

    market.proxy.add(fault, "^", times=None)
    for i in range(3):
        with pytest.raises(ServiceUnavailable) as refused:
            echo(i, escrow_id)
        market.audit.refused(refused.value.message)
        assert "not charged" in refused.value.message.lower()
    assert ran == []  # the model never ran for a call that could not be reserved
    assert_posts_were_safe(market.proxy)
    gate.close()
    market.expire_everything_open()
    market.audit.reconcile()


@pytest.mark.parametrize("fault", ["drop_after", "error_after", "reset", "blackhole"])
def test_capture_outcome_unknown_then_service_back(market, fault):
    """Every capture attempt faulted (the first ones applied upstream): the result is withheld,
    and the ledger shows the buyer either paid nothing for it or the gate handed the result out."""
    gate = market.gate(**FAST, settle_retries=2)
    escrow_id = market.escrow("0.050")

    @gate.paid(PRICE, reason="echo", receipt=True)
    def echo(i: int) -> int:
        return i

    market.proxy.add(fault, "/capture", times=None)
    try:
        result, receipt = echo(1, escrow_id)
    except SettlementFailed as refusal:
        market.audit.refused(refusal.message)
    else:
        market.audit.paid(result, receipt)
    market.proxy.clear()
    result, receipt = echo(2, escrow_id)  # the service is back: calls are paid again
    market.audit.paid(result, receipt)
    gate.close()
    market.expire_everything_open()
    market.audit.reconcile()
