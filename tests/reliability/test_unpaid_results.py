"""Issue 11's findings over a real Space process (`python app.py`): no result is handed out unpaid.

Buyers call `/classify` over Gradio's plain HTTP API. After each test the Space is stopped
(SIGTERM: its gate captures what it owes) and the escrow ledger (SQLite) is reconciled against
what the callers saw (tests/support/audit.py): every result came with a receipt whose charge is
on the ledger exactly once, or the call was refused saying "not charged"; here every refusal
must say "not charged". The gate-level tests of the same findings are in
tests/gate/test_unpaid_results.py.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from decimal import Decimal

import pytest

from escrow import Store
from gate import Lease
from tests.support.audit import Ledger, assert_none_served_late_in_outage, micro
from tests.support.processes import SIGTERM_EXITS, space_process
from tests.support.realtime_clock import RealTime
from tests.support.space import EscrowApi, classify_over_http, final_event

pytestmark = [pytest.mark.slow]


@dataclass
class Outcome:
    started: float  # time.monotonic()
    ended: float
    receipt: dict | None = None
    refusal: str | None = None


def classify(base_url: str, escrow_id: str) -> Outcome:
    started = time.monotonic()
    answer, stream = classify_over_http(base_url, ["what a lovely day", escrow_id])
    assert stream is not None and stream.status_code == 200, answer.text
    event, payload = final_event(stream.text)
    if event == "complete":
        result, receipt = payload
        assert result["label"] in ("negative", "neutral", "positive"), result
        return Outcome(started, time.monotonic(), receipt=receipt)
    return Outcome(started, time.monotonic(), refusal=(payload or {}).get("error") or "")


def record(audit, outcome: Outcome) -> Outcome:
    if outcome.receipt is not None:
        audit.paid("result", outcome.receipt)
    else:
        audit.refused(outcome.refusal)
    return outcome


def assert_refusals_say_not_charged(outcomes: list[Outcome]) -> None:
    wrong = [o.refusal for o in outcomes if o.receipt is None and "not charged" not in o.refusal.lower()]
    assert not wrong, f"refusals that do not say 'not charged': {wrong[:3]}"


# -- 1. short-TTL escrows, sandbox Space, default (lease) settlement ------------------------------


def test_short_ttl_escrows_over_the_space_pay_for_every_result(tmp_path, books):
    """Finding 1 over the Space: 0.05 USDC escrows with ttl_seconds 1 and 2 (four of each, opened a
    quarter of their life apart), 35 calls each over HTTP, as fast as one caller goes.

    Before: 105 of 210 calls unpaid over the Space with TTL 2 (a lease's final capture landed after
    its escrow expired). Now: every result captured, the rest refused "not charged"."""
    space = space_process(tmp_path, MODEL_ID="vader").start()
    data_dir = tmp_path / "space-data"
    base = space.base_url + "/"
    try:
        seller_id = json.loads((data_dir / "sandbox-seller.json").read_text())["agent_id"]
        sandbox = EscrowApi(space.base_url + "/sandbox/api")
        buyer = sandbox.register("short-ttl-buyer")
        sandbox.fund(buyer, "10")
        db_path = data_dir / "sandbox-escrow.db"
        audit = books.open(Ledger(db_path), seller_id=seller_id, buyer_ids=[buyer.agent_id], per_call=False)
        outcomes: list[Outcome] = []
        expires: list[float] = []

        def buyer_thread(ttl: int, n: int) -> None:
            time.sleep(n * ttl / 4)
            escrow_id = sandbox.open_escrow(buyer, seller_id, "0.050", ttl_seconds=ttl)
            expires.append(time.monotonic() + ttl)
            for _ in range(35):
                outcomes.append(record(audit, classify(base, escrow_id)))

        threads = [threading.Thread(target=buyer_thread, args=(ttl, n)) for ttl in (1, 2) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        time.sleep(max(max(expires) + 0.5 - time.monotonic(), 0))  # every escrow has expired
    finally:
        assert space.stop() in SIGTERM_EXITS, space.log()[-3000:]
    store = Store(db_path)  # let time close what expired (the Space's sweeper has stopped with it)
    try:
        store.sweep()
    finally:
        store.close()
    assert len(outcomes) == 8 * 35
    assert any(o.receipt is not None for o in outcomes), "no call was served at all"
    assert_refusals_say_not_charged(outcomes)
    summary = audit.reconcile(holds_closed=True)
    print(f"\nshort TTL over the Space: {summary}; refusals: {dict(audit.outcomes.error_mix())}")


# -- 3. an outage longer than the hold, production Space ---------------------------------------------


@pytest.mark.crash
def test_an_outage_longer_than_the_hold_over_the_space(tmp_path, books, escrow_server_factory):
    """Finding 3 over the Space: a production Space (PF_API_KEY, ESCROW_URL) on the sandbox escrow
    server of this test, whose FakeClock runs with real time. While a lease serves, the escrow service
    stops; calls go on; the clock jumps past the lease's hold TTL (120 s); the service comes back.

    Bound (the Space's Lease defaults: capture_interval_s 2, max_unconfirmed_s 3): calls made more than
    max_unconfirmed_s + capture_interval_s after the outage began are all refused "not charged"; what is
    lost (receipts whose charge the expired hold took with it) is at most the results handed out from
    capture_interval_s (+ 0.5 s) before the outage to max_unconfirmed_s (+ 0.5 s) into it.
    Before: the Space went on serving from its lease through the outage, and all of it was lost."""
    config = Lease()
    interval = config.capture_interval_s
    max_unconfirmed = getattr(config, "max_unconfirmed_s", None) or interval + 1.0
    server = escrow_server_factory()
    with RealTime(server.clock, from_wall_time=True) as real_time:
        seller, buyer = server.register("space-seller"), server.register("buyer")
        server.faucet(buyer, "10")
        escrow_id = server.open_escrow(buyer, seller.agent_id, "5")["id"]
        audit = books.open(Ledger(server.store.db_path), seller_id=seller.agent_id,
                           buyer_ids=[buyer.agent_id], per_call=False)
        space = space_process(tmp_path, PF_API_KEY=seller.api_key, ESCROW_URL=server.url, MODEL_ID="vader").start()
        base = space.base_url + "/"
        outcomes: list[Outcome] = []
        stop = threading.Event()
        try:
            def caller() -> None:
                while not stop.is_set():
                    outcomes.append(record(audit, classify(base, escrow_id)))
                    time.sleep(0.2)

            thread = threading.Thread(target=caller, daemon=True)
            thread.start()
            deadline = time.monotonic() + 20
            while not any(p.endswith("/capture") for _, p in server.request_log):  # the lease has been captured
                assert time.monotonic() < deadline, f"no capture: {outcomes[-3:]}"
                time.sleep(0.01)
            time.sleep(0.3)
            outage_began = time.monotonic()
            server.stop()
            down = time.monotonic()
            time.sleep(max_unconfirmed + interval + 2.0)
            real_time.jump(config.hold_ttl_s + 10)  # the outage outlasts the lease's hold
            server.store.sweep()
            stop.set()
            thread.join(30)
            outage_ended = time.monotonic()
            server.start()
            recovered = []
            for _ in range(60):  # served (and paid) again once the service is back
                outcome = record(audit, classify(base, escrow_id))
                outcomes.append(outcome)
                if outcome.receipt is not None:
                    recovered.append(outcome)
                    if len(recovered) == 3:
                        break
                time.sleep(0.2)
        finally:
            stop.set()
            assert space.stop() in SIGTERM_EXITS, space.log()[-3000:]  # the gate settles what it owes

    assert_none_served_late_in_outage(outcomes, down=down, outage_began=outage_began, outage_ended=outage_ended,
                                      window=max_unconfirmed + interval)
    assert recovered, "no call was served after the service came back"
    assert_refusals_say_not_charged(outcomes)

    receipts = sum(micro(o.receipt["charged_usdc"]) for o in outcomes if o.receipt is not None)
    spent = Ledger(server.store.db_path).escrow(escrow_id)["spent_micro"]
    lost = receipts - spent
    window = sum(micro(o.receipt["charged_usdc"]) for o in outcomes if o.receipt is not None
                 and outage_began - interval - 0.5 <= o.ended <= down + max_unconfirmed + 0.5)
    assert 0 <= lost <= window, (
        f"lost {lost} µUSDC of receipts; at most the {window} µUSDC handed out from {interval + 0.5} s before the "
        f"outage to {max_unconfirmed + 0.5} s into it may be"
    )
    summary = audit.reconcile(holds_closed=True, lost_micro={escrow_id: lost})
    print(f"\noutage over the Space: lost {Decimal(lost) / 10**6} USDC (bound {Decimal(window) / 10**6}); {summary}")
