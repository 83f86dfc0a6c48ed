"""Lease settlement against the real sandbox escrow over HTTP (no timing assertions)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from gate import EscrowClosed, EscrowExpired, FunctionFailed, GateError, InsufficientFunds, Lease, PerCall, PerSecond

from .adapters import GradioAdapter

PRICE = PerCall("0.001")
ROOT = Path(__file__).resolve().parents[2]
CHARGE_ID = re.compile(r"chg_[A-Za-z0-9]{24}")


def echo_on(gate, adapter=GradioAdapter(), **paid):
    @adapter.paid(gate, PRICE, reason="echo", receipt=True, **paid)
    def echo(text: str) -> str:
        if text == "fail":
            raise RuntimeError("boom")
        return text

    return echo


def captured_on_service(market, escrow_id) -> Decimal:
    """The gross captured on the service for this escrow (its spent: captures are the only settlements here)."""
    return market.balance(escrow_id)["spent_usdc"]


def test_lease_is_the_default_and_sequential_receipts_are_exact(market, adapter):
    gate = market.gate()
    echo = echo_on(gate, adapter)
    escrow_id = market.escrow("1")
    market.server.clear_log()
    n = 200
    receipts = [echo(str(i), escrow_id)[1] for i in range(n)]
    for i, receipt in enumerate(receipts, start=1):
        assert receipt["settlement"] == "lease" and receipt["charged_usdc"] == "0.001000"
        assert CHARGE_ID.fullmatch(receipt["charge_id"])
        # one Space calling sequentially: remaining is exactly what the escrow will keep
        assert Decimal(receipt["remaining_usdc"]) == Decimal("1") - i * Decimal("0.001"), i
    assert len({r["charge_id"] for r in receipts}) == n
    # steady state: about 3 requests (hold, partial capture, final) per lease of 50 calls
    requests = market.requests_for(escrow_id)
    assert len(requests) <= n / 10 + 5, requests
    gate.close()
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == Decimal("0.200") and balance["held_usdc"] == 0
    assert balance["remaining_usdc"] == Decimal("0.800")
    market.server.store.check_invariants()


def test_failed_call_costs_nothing_and_returns_its_reservation(market, adapter):
    # low_water=0: no early renewal while a failing call holds the lease's last call (a legitimate second hold)
    gate = market.gate(settlement=Lease(calls=2, low_water=0))  # the lease covers exactly two calls
    echo = echo_on(gate, adapter)
    escrow_id = market.escrow("0.010")
    assert echo("a", escrow_id)[0] == "a"
    for _ in range(5):
        with pytest.raises(FunctionFailed, match="not charged"):
            echo("fail", escrow_id)
    # the failures returned their reservations: the second call still fits in the first lease
    holds_before = [p for m, p in market.requests_for(escrow_id) if p.endswith("/holds")]
    assert echo("b", escrow_id)[0] == "b"
    assert [p for m, p in market.requests_for(escrow_id) if p.endswith("/holds")] == holds_before
    assert len(holds_before) == 1
    gate.close()
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == Decimal("0.002") and balance["held_usdc"] == 0
    assert balance["remaining_usdc"] == Decimal("0.008")
    market.server.store.check_invariants()


def test_close_captures_everything_and_voids_the_rest(market):
    gate = market.gate(settlement=Lease(capture_interval_s=3600, idle_s=3600))
    echo = echo_on(gate)
    escrow_id = market.escrow("1")
    for i in range(7):
        echo(str(i), escrow_id)
    before = market.balance(escrow_id)
    assert before["held_usdc"] == Decimal("0.050") and before["spent_usdc"] == 0  # nothing captured yet
    gate.close()
    balance = market.balance(escrow_id)
    assert balance["held_usdc"] == 0 and balance["spent_usdc"] == Decimal("0.007")
    assert balance["remaining_usdc"] == Decimal("0.993")
    with pytest.raises(GateError, match="not charged"):
        echo("late", escrow_id)
    market.server.store.check_invariants()


def test_idle_lease_is_captured_and_voided(market):
    gate = market.gate(settlement=Lease(idle_s=0.2, capture_interval_s=3600))
    echo = echo_on(gate)
    escrow_id = market.escrow("1")
    echo("x", escrow_id)
    deadline = threading.Event()
    for _ in range(200):  # bounded wait for the flusher
        if market.balance(escrow_id)["held_usdc"] == 0:
            break
        deadline.wait(0.05)
    balance = market.balance(escrow_id)
    assert balance["held_usdc"] == 0 and balance["spent_usdc"] == Decimal("0.001")
    market.server.store.check_invariants()


@pytest.mark.parametrize("k", [10, 37])
def test_no_overspend_under_64_concurrent_calls_across_two_gates(market, k, adapter):
    gates = [market.gate(seller_id=market.seller.agent_id, settlement=Lease(calls=8)) for _ in range(2)]
    escrow_id = market.escrow(str(Decimal("0.001") * k))
    echoes = [echo_on(g, adapter) for g in gates]
    start = threading.Barrier(64)

    def call(i):
        start.wait()
        try:
            return echoes[i % 2](str(i), escrow_id)
        except GateError as refusal:
            return refusal

    with ThreadPoolExecutor(64) as pool:
        outcomes = list(pool.map(call, range(64)))
    results = [o for o in outcomes if not isinstance(o, GateError)]
    refusals = [o for o in outcomes if isinstance(o, GateError)]
    assert 0 < len(results) <= k
    assert all(isinstance(r, InsufficientFunds) and "not charged" in r.message for r in refusals)
    charge_ids = [receipt["charge_id"] for _, receipt in results]
    assert len(set(charge_ids)) == len(results)
    for gate in gates:
        gate.close()
    balance = market.balance(escrow_id)
    # every result paid, nothing else: captured on the service == results × price
    assert balance["spent_usdc"] == len(results) * Decimal("0.001")
    assert balance["held_usdc"] == 0
    assert balance["remaining_usdc"] + balance["spent_usdc"] == balance["amount_usdc"]
    market.server.store.check_invariants()


def test_hold_expiring_under_an_open_lease(market, caplog):
    gate = market.gate(settlement=Lease(hold_ttl_s=120, capture_interval_s=3600, idle_s=3600))
    echo = echo_on(gate)
    escrow_id = market.escrow("1")
    for i in range(3):
        echo(str(i), escrow_id)
    gate._settlement.flush()  # nothing due: the interval is long
    market.server.clock.tick(121)  # the lease's hold expires on the service, uncaptured
    with caplog.at_level(logging.ERROR, logger="gate"):
        _, receipt = echo("after", escrow_id)  # served by a new lease
        gate._settlement.flush()  # the expired lease's capture is refused: those charges are lost
    assert receipt["charged_usdc"] == "0.001000"
    assert any("lost 0.003000 USDC" in r.getMessage() for r in caplog.records)
    gate.close()
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == Decimal("0.001") and balance["held_usdc"] == 0
    assert balance["remaining_usdc"] == Decimal("0.999")
    market.server.store.check_invariants()


def test_escrow_expiring_under_an_open_lease(market):
    gate = market.gate(settlement=Lease(capture_interval_s=3600, idle_s=3600))
    echo = echo_on(gate)
    escrow_id = market.escrow("0.100", ttl_seconds=600)
    for i in range(4):
        echo(str(i), escrow_id)
    gate._settlement.flush(close_all=False)
    market.server.clock.tick(601)
    with pytest.raises(EscrowExpired, match="not charged"):
        echo("late", escrow_id)
    gate.close()
    balance = market.balance(escrow_id)
    assert balance["status"] == "expired"
    assert balance["spent_usdc"] == 0 and balance["held_usdc"] == 0  # nothing was captured in time
    assert balance["refunded_usdc"] == Decimal("0.100")
    assert all(v >= 0 for k, v in balance.items() if k != "status")
    market.server.store.check_invariants()


@pytest.mark.parametrize("capture_interval_s", [3600, 0.05])
def test_buyer_releasing_under_an_open_lease_pays_for_every_result(market, caplog, capture_interval_s):
    # The buyer releases with refund_remainder while calls served from the lease are not yet captured.
    # The release leaves the lease's hold open (escrow/README.md): every result handed out is still captured,
    # what the hold did not capture goes back to the buyer, and no charge is lost.
    gate = market.gate(settlement=Lease(capture_interval_s=capture_interval_s, idle_s=3600))
    echo = echo_on(gate)
    escrow_id = market.escrow("0.100")
    results = [echo(str(i), escrow_id) for i in range(10)]
    released = market.server.call(market.buyer, "POST", f"/escrow/{escrow_id}/release",
                                  json={"amount_usdc": 0, "refund_remainder": True})
    assert released.status_code == 200, released.text
    assert released.json()["status"] == "released"
    assert Decimal(str(released.json()["held_usdc"])) >= Decimal("0.040")  # the lease's hold (less what was captured)
    with caplog.at_level(logging.WARNING, logger="gate"):
        results += [echo(f"after {i}", escrow_id) for i in range(5)]  # the buyer's hold still covers these
        gate._settlement.flush(close_all=True)  # the final capture on the released escrow's hold
        with pytest.raises(EscrowClosed, match="not charged") as refused:
            echo("late", escrow_id)  # a new lease needs a new hold: the escrow takes none
        assert "released" in refused.value.message
    assert not [r for r in caplog.records if "lost" in r.getMessage()]
    assert all(receipt["charged_usdc"] == "0.001000" for _, receipt in results)
    assert gate._settlement.journal.totals()["lost"] == 0
    balance = market.balance(escrow_id)
    assert balance["status"] == "released" and balance["held_usdc"] == 0 and balance["remaining_usdc"] == 0
    assert balance["spent_usdc"] == len(results) * Decimal("0.001")
    assert balance["refunded_usdc"] == balance["amount_usdc"] - balance["spent_usdc"]
    gate.close()
    market.server.store.check_invariants()


def test_a_long_call_outliving_its_lease_is_charged_on_its_own_hold(market):
    gate = market.gate(settlement=Lease(hold_ttl_s=120, capture_interval_s=3600, idle_s=3600))
    escrow_id = market.escrow("1")

    @gate.paid(PRICE, reason="slow", receipt=True)
    def slow(text: str) -> str:
        market.server.clock.tick(118)  # past the lease's charge deadline (hold TTL - settle margin)
        return text

    _, receipt = slow("x", escrow_id)
    assert receipt["charged_usdc"] == "0.001000" and receipt["settlement"] == "hold"
    assert market.balance(escrow_id)["spent_usdc"] == Decimal("0.001")  # captured before returning
    gate.close()
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == Decimal("0.001") and balance["held_usdc"] == 0
    market.server.store.check_invariants()


# -- the journal across a crash ---------------------------------------------------------

CHILD = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from gate import EscrowGate, Lease, PerCall
url, key, seller, escrow_id, journal, now, n, mode = sys.argv[2:10]
gate = EscrowGate(url, key, seller_id=seller, clock=lambda: float(now),
                  settlement=Lease(journal=journal, capture_interval_s=3600, idle_s=3600))

@gate.paid(PerCall("0.001"), reason="echo")
def echo(text):
    return text

for i in range(int(n)):
    assert echo(str(i), escrow_id) == str(i)
if mode == "capture_then_die":
    session = gate._client._session
    real = session.request
    def die_after_capture(method, url, **kwargs):
        response = real(method, url, **kwargs)
        if url.endswith("/capture"):
            os._exit(3)  # the service applied it; the journal still says pending
        return response
    session.request = die_after_capture
    gate._settlement.flush(close_all=True)
os._exit(3)  # crash: no close(), no flush
"""


def crash_child(market, escrow_id, journal, n, mode="die"):
    args = [
        sys.executable, "-c", CHILD, str(ROOT), market.server.url, market.seller.api_key, market.seller.agent_id,
        escrow_id, str(journal), str(market.server.clock.now()), str(n), mode,
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 3, done.stderr[-3000:]


@pytest.mark.parametrize("mode", ["die", "capture_then_die"])
def test_restart_replays_the_journal_exactly_once(market, tmp_path, mode, caplog):
    journal = tmp_path / "gate" / "journal.sqlite"
    escrow_id = market.escrow("1")
    n = 7
    crash_child(market, escrow_id, journal, n, mode)
    balance = market.balance(escrow_id)
    if mode == "die":
        assert balance["spent_usdc"] == 0 and balance["held_usdc"] == Decimal("0.050")
    else:
        assert balance["spent_usdc"] == Decimal("0.007") and balance["held_usdc"] == 0  # applied, unconfirmed
    captures_before = sum(1 for m, p in market.requests_for(escrow_id) if p.endswith("/capture"))
    with caplog.at_level(logging.WARNING, logger="gate"):
        restarted = market.gate(settlement=Lease(journal=journal))
    assert any("lease journal replayed" in r.getMessage() for r in caplog.records)
    totals = restarted._settlement.journal.totals()
    assert totals["captured"] == 7000 and totals["lost"] == 0  # the resent intent was replayed, not refused
    assert totals["pending"] == 0 and totals["unassigned"] == 0
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == Decimal("0.007") and balance["held_usdc"] == 0
    assert balance["remaining_usdc"] == Decimal("0.993")
    captures = [p for m, p in market.requests_for(escrow_id) if p.endswith("/capture")]
    assert len(captures) == captures_before + 1  # one replay (a resend with the same key in capture_then_die)
    restarted.close()  # one open journal per file (gate/_journal.py)
    market.gate(settlement=Lease(journal=journal))  # and again: nothing left to do
    assert sum(1 for m, p in market.requests_for(escrow_id) if p.endswith("/capture")) == len(captures)
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == Decimal("0.007") and balance["held_usdc"] == 0
    market.server.store.check_invariants()


def test_replay_after_the_hold_expired_loses_only_those_charges(market, tmp_path, caplog):
    journal = tmp_path / "journal.sqlite"
    escrow_id = market.escrow("1")
    crash_child(market, escrow_id, journal, 4)
    market.server.clock.tick(121)  # the crashed lease's hold (120 s) expired before the restart
    with caplog.at_level(logging.WARNING, logger="gate"):
        gate = market.gate(settlement=Lease(journal=journal))
    assert any("0.004000 USDC lost" in r.getMessage() for r in caplog.records)
    echo = echo_on(gate)
    echo("x", escrow_id)  # the restarted gate works normally
    gate.close()
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == Decimal("0.001") and balance["held_usdc"] == 0
    assert balance["remaining_usdc"] == Decimal("0.999")  # the lost charges went back to the buyer
    market.server.store.check_invariants()


def test_journal_records_every_charge_before_the_result(market, tmp_path):
    journal = tmp_path / "journal.sqlite"
    gate = market.gate(settlement=Lease(journal=journal, capture_interval_s=3600, idle_s=3600))
    echo = echo_on(gate)
    escrow_id = market.escrow("1")
    receipts = [echo(str(i), escrow_id)[1] for i in range(3)]
    import sqlite3

    with sqlite3.connect(journal) as db:
        rows = db.execute("SELECT charge_id, amount_micro, capture_key FROM charges ORDER BY created_at").fetchall()
        hold_ids = {h for (h,) in db.execute("SELECT hold_id FROM holds")}
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert sorted(r[0] for r in rows) == sorted(r["charge_id"] for r in receipts)
    assert all(amount == 1000 and key is None for _, amount, key in rows)
    assert len(hold_ids) == 1
    gate.close()
    with sqlite3.connect(journal) as db:
        assert db.execute("SELECT COUNT(*) FROM charges WHERE capture_key IS NULL").fetchone()[0] == 0
        assert db.execute("SELECT status FROM captures").fetchall() == [("done",)]
    assert market.balance(escrow_id)["spent_usdc"] == Decimal("0.003")
    market.server.store.check_invariants()


def test_lease_options_are_validated():
    for bad in (dict(calls=0), dict(max_usdc=0.5), dict(max_usdc="0"), dict(capture_interval_s=0),
                dict(low_water=1), dict(hold_ttl_s=1), dict(synchronous="OFF")):
        with pytest.raises((ValueError, TypeError)):
            Lease(**bad)
    assert Lease(max_usdc="0.02").max_usdc == Decimal("0.02")


def test_lease_size_cap_in_usdc(market):
    gate = market.gate(settlement=Lease(max_usdc="0.003"))
    echo = echo_on(gate)
    escrow_id = market.escrow("1")
    echo("x", escrow_id)
    assert market.balance(escrow_id)["held_usdc"] == Decimal("0.003")
    gate.close()
    assert market.balance(escrow_id)["spent_usdc"] == Decimal("0.001")
    market.server.store.check_invariants()


def test_a_per_second_call_longer_than_any_lease_is_covered_by_its_own_hold(market):
    # Lease holds live 120 s; a PerSecond call may run 200 s. On a lease its charge would fall after the lease's
    # deadline, with the whole escrow held by that lease: the result was withheld. Its own hold outlives it.
    clock = market.server.clock
    gate = market.gate()  # the default lease
    escrow_id = market.escrow("0.020")  # exactly one call's maximum

    @gate.paid(PerSecond("0.0001", max_seconds=200, clock=clock.now), reason="render", receipt=True)
    def render(scene: str) -> str:
        clock.tick(190)
        return scene

    result, receipt = render("x", escrow_id)
    assert result == "x" and receipt["settlement"] == "hold" and receipt["charged_usdc"] == "0.019000"
    gate.close()
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == Decimal("0.019") and balance["held_usdc"] == 0

