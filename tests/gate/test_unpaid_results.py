"""Issue 11's findings, one regression test each: no result is ever handed out unpaid.

Every test here runs the gate against the sandbox escrow service over real HTTP (a uvicorn
server in a thread, its FakeClock deciding expiries; tests/support/escrow_server.py) and checks
the money, not the gate's internals: every result handed to a caller came with a receipt whose
charge is on the ledger exactly once (per escrow, ``spent == sum of the receipts``, once the gate
is closed), or the call was refused with a message saying "not charged"; no hold is left; the
store's own invariants hold. Where real time must pass (the gate's flusher and capture interval
run on it), the FakeClock is moved in step with real time (tests/support/realtime_clock.py).

The Space-level findings (a real `python app.py` process) are in
tests/reliability/test_unpaid_results.py; the service's time format (finding 9) in
tests/gate/test_clock.py.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import gradio as gr
import pytest
import requests

from gate import EscrowGate, GateError, Lease, PerCall
from tests.support.audit import assert_none_served_late_in_outage
from tests.support.fault_proxy import FaultProxy
from tests.support.realtime_clock import RealTime

from .adapters import GradioAdapter
from .conftest import launched

PRICE = PerCall("0.001")


# -- what the callers saw, and the books ------------------------------------------------------


@dataclass
class Outcome:
    escrow_id: str
    started: float  # time.monotonic() when the call was made
    ended: float
    service_started: float  # the service's (Fake)clock when the call was made
    receipt: dict | None = None
    refusal: str | None = None


@dataclass
class Calls:
    """Every call's outcome, thread-safe."""

    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def make(self, fn, escrow_id: str, clock, *args) -> Outcome:
        started, service_started = time.monotonic(), clock.now()
        try:
            _, receipt = fn(*args, escrow_id)
        except GateError as refusal:
            outcome = Outcome(escrow_id, started, time.monotonic(), service_started, refusal=refusal.message)
        else:
            outcome = Outcome(escrow_id, started, time.monotonic(), service_started, receipt=receipt)
        with self.lock:
            self.outcomes.append(outcome)
        return outcome

    @property
    def paid(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.receipt is not None]

    @property
    def refused(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.receipt is None]

    def receipts_usdc(self, escrow_id: str) -> Decimal:
        return sum((Decimal(o.receipt["charged_usdc"]) for o in self.paid if o.escrow_id == escrow_id), Decimal(0))


def expiry_of(escrow: dict) -> float:
    return datetime.fromisoformat(escrow["expires_at"].replace("Z", "+00:00")).timestamp()


def assert_every_result_paid_once(market, calls: Calls, escrow_ids, *, lost: dict | None = None) -> None:
    """Per escrow: the ledger's spent == the receipts handed out (less ``lost``, bounded by the test);
    every refusal said "not charged"; nothing still held; one receipt per charge; the store's invariants."""
    not_saying = [o.refusal for o in calls.refused if "not charged" not in o.refusal.lower()]
    assert not not_saying, f"refusals that do not say 'not charged': {not_saying[:3]}"
    charge_ids = Counter(o.receipt["charge_id"] for o in calls.paid)
    assert all(n == 1 for n in charge_ids.values()), "one charge on two receipts"
    unpaid = {}
    for escrow_id in escrow_ids:
        balance = market.balance(escrow_id)
        receipts = calls.receipts_usdc(escrow_id)
        expected = receipts - (lost or {}).get(escrow_id, Decimal(0))
        if balance["spent_usdc"] != expected:
            results = sum(1 for o in calls.paid if o.escrow_id == escrow_id)
            unpaid[escrow_id] = (
                f"{results} results with receipts for {receipts} USDC, the ledger spent {balance['spent_usdc']}"
            )
        assert balance["held_usdc"] == 0, (escrow_id, balance)
    assert not unpaid, f"results handed out unpaid (or charged twice): {unpaid}"
    market.server.store.check_invariants()


def call_until(fn, escrow_id: str, calls: Calls, clock, *, until_service_time: float, every_s: float) -> None:
    while clock.now() < until_service_time:
        calls.make(fn, escrow_id, clock, "x")
        time.sleep(every_s)


def echo_on(gate, adapter=GradioAdapter()):
    @adapter.paid(gate, PRICE, reason="echo", receipt=True)
    def echo(text: str) -> str:
        return text

    return echo


# -- 1. short-TTL escrows (lease settlement) --------------------------------------------------


@pytest.mark.parametrize("ttl", [1, 2])
def test_short_ttl_escrows_pay_for_every_result(market, ttl, adapter):
    """Finding 1: 0.05 USDC escrows of 1-2 s, 35 calls each at once, with the default (lease) settlement;
    four escrows opened a quarter of their life apart (so their expiries fall at different moments of
    the gate's flusher).

    Before: the lease's hold ended with its escrow and its capture came after that, so almost every
    result was free. Now such an escrow is served call by call: every result is captured before it is
    handed out, the rest refused "not charged"."""
    clock = market.server.clock
    calls = Calls()
    with RealTime(clock):
        gate = market.gate()  # the default: lease
        echo = echo_on(gate, adapter)
        expiries = {}

        def buyer(n: int) -> None:
            time.sleep(n * ttl / 4)
            escrow = market.server.open_escrow(market.buyer, market.seller.agent_id, "0.050", ttl_seconds=ttl)
            expiries[escrow["id"]] = expiry_of(escrow)
            for _ in range(35):
                calls.make(echo, escrow["id"], clock, "x")

        buyers = [threading.Thread(target=buyer, args=(n,)) for n in range(4)]
        for b in buyers:
            b.start()
        for b in buyers:
            b.join(30)
        while clock.now() < max(expiries.values()) + 0.5:  # every escrow expired: its lease had to be captured
            time.sleep(0.05)
        gate.close()
    assert len(calls.outcomes) == 4 * 35
    assert calls.paid, "no call was served at all"
    assert_every_result_paid_once(market, calls, list(expiries))


# -- 2. the tail of an escrow, with the gate's clock off by ±5 s ------------------------------


@pytest.mark.slow
def test_the_tail_of_an_escrow_is_paid_under_5s_clock_skew(market):
    """Finding 2: calls at 15/s on a 12 s escrow until after its expiry, by three gates whose clocks
    are 5 s behind, right, and 5 s ahead of the service's (the FakeClock, at the speed of real time).

    Before: the gate compared the service's expiries with its own clock; 5 s behind, it charged on
    its lease after the hold had expired: those results were free, some served after the expiry.
    Now: every result is captured, and none is served from a call made after the expiry."""
    clock = market.server.clock
    calls = Calls()
    with RealTime(clock):
        escrows, threads = {}, []
        for skew in (-5.0, 0.0, 5.0):
            gate = market.gate(clock=lambda skew=skew: clock.now() + skew)
            echo = echo_on(gate)
            escrow = market.server.open_escrow(market.buyer, market.seller.agent_id, "1", ttl_seconds=12)
            escrows[skew] = escrow
            threads.append(threading.Thread(
                target=call_until, args=(echo, escrow["id"], calls, clock),
                kwargs={"until_service_time": expiry_of(escrow) + 1.0, "every_s": 1 / 15},
            ))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for gate in market._gates:
            gate.close()
    ids = [e["id"] for e in escrows.values()]
    for skew, escrow in escrows.items():
        mine = [o for o in calls.paid if o.escrow_id == escrow["id"]]
        assert any(o.receipt["settlement"] == "lease" for o in mine), f"skew {skew}: the lease was never used"
        late = [o for o in mine if o.service_started >= expiry_of(escrow)]
        assert not late, f"skew {skew}: {len(late)} results of calls made after the escrow's expiry"
    assert_every_result_paid_once(market, calls, ids)
    for skew, escrow in escrows.items():
        mine = [o for o in calls.outcomes if o.escrow_id == escrow["id"]]
        served = [o.service_started - expiry_of(escrow) for o in mine if o.receipt is not None]
        print(f"\nskew {skew:+}: {len(served)} of {len(mine)} calls paid, "
              f"{sum(o.receipt['settlement'] == 'lease' for o in mine if o.receipt)} on the lease; "
              f"the last made {-max(served):.2f} s before the expiry")


# -- 3. an outage longer than the hold ----------------------------------------------------------


@pytest.mark.slow
def test_an_outage_longer_than_the_hold_loses_at_most_the_unconfirmed_window(market):
    """Finding 3: the escrow service stops while a lease serves; the hold expires before it is back.

    Bound: what can be lost is the charges taken after the last capture the service confirmed and
    before the lease stopped charging: results handed out from ``capture_interval_s`` (+ slack)
    before the outage began to ``max_unconfirmed_s`` (+ slack) after. Calls made later than
    ``max_unconfirmed_s + capture_interval_s`` after the outage began are all refused "not charged".
    Before: the lease went on serving from its hold for the whole outage; every result lost."""
    config = Lease(hold_ttl_s=10, capture_interval_s=0.5, calls=1000)  # a lease that outlasts the outage
    interval = config.capture_interval_s
    max_unconfirmed = getattr(config, "max_unconfirmed_s", None) or interval + 1.0  # the gate's default
    server, clock = market.server, market.server.clock
    calls = Calls()
    with RealTime(clock) as real_time:
        gate = market.gate(settlement=config)
        echo = echo_on(gate)
        escrow_id = market.escrow("5")
        stop = threading.Event()

        def caller() -> None:
            while not stop.is_set():
                calls.make(echo, escrow_id, clock, "x")
                time.sleep(0.02)

        thread = threading.Thread(target=caller, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not any(p.endswith("/capture") for _, p in server.request_log):  # the lease is being captured
            assert time.monotonic() < deadline, "no capture"
            time.sleep(0.01)
        time.sleep(0.3)
        outage_began = time.monotonic()
        server.stop()
        down = time.monotonic()
        time.sleep(max_unconfirmed + interval + 1.0)
        real_time.jump(config.hold_ttl_s + 5)  # the outage outlasts the hold
        server.store.sweep()
        stop.set()
        thread.join(10)
        outage_ended = time.monotonic()
        server.start()
        recovered = []
        for _ in range(100):  # calls are served (and paid) again once the service is back
            outcome = calls.make(echo, escrow_id, clock, "x")
            if outcome.receipt is not None:
                recovered.append(outcome)
                if len(recovered) == 3:
                    break
            time.sleep(0.05)
        gate.close()

    during, late = assert_none_served_late_in_outage(
        calls.outcomes, down=down, outage_began=outage_began, outage_ended=outage_ended,
        window=max_unconfirmed + interval,
    )
    assert recovered, "no call was served after the service came back"

    receipts = calls.receipts_usdc(escrow_id)
    spent = market.balance(escrow_id)["spent_usdc"]
    lost = receipts - spent
    window = sum(
        (Decimal(o.receipt["charged_usdc"]) for o in calls.paid
         if outage_began - interval - 0.5 <= o.ended <= down + max_unconfirmed + 0.5),
        Decimal(0),
    )
    assert Decimal(0) <= lost <= window, (
        f"lost {lost} USDC of receipts; at most the {window} USDC handed out from {interval + 0.5} s before the "
        f"outage to {max_unconfirmed + 0.5} s into it may be"
    )
    assert_every_result_paid_once(market, calls, [escrow_id], lost={escrow_id: lost})
    last_served = max((o.ended for o in during if o.receipt is not None), default=down)
    print(f"\noutage: last result served {last_served - outage_began:.2f} s after it began; lost {lost} USDC "
          f"of {receipts} (bound {window}); {len(late)} late calls refused")


# -- 4. streams abandoned after their output was delivered, over a launched Gradio app ----------


def _read_chunks_then_leave(url: str, escrow_id: str, chunks: int) -> list[str]:
    answer = requests.post(url + "gradio_api/call/stream", json={"data": ["x", escrow_id]}, timeout=10)
    answer.raise_for_status()
    got: list[str] = []
    with requests.get(url + f"gradio_api/call/stream/{answer.json()['event_id']}", stream=True, timeout=10) as events:
        generating = False
        for line in events.iter_lines():
            if line.startswith(b"event: "):
                generating = line == b"event: generating"
            elif line.startswith(b"data: ") and generating:
                got.append(line[6:].decode())
                if len(got) == chunks:
                    break  # and the connection is closed: the client went away
    return got


@pytest.mark.parametrize("settlement", ["per_call", "lease"])
def test_streams_abandoned_after_delivering_output_are_charged(market, settlement):
    """Finding 4: five clients of a launched Gradio app each read 5 of 6 chunks of a paid stream
    over HTTP, then disconnect; Gradio cancels the stream. Each is charged the price (PerCall).
    Before: the gate voided the hold of an abandoned stream: 0 of 5 paid."""
    gate = market.gate(settlement=settlement)
    gone = threading.Event()
    closed, finished = [], []

    @gate.paid(PRICE, reason="stream")
    def stream(text: str):
        try:
            for i in range(5):
                yield f"{text}{i}"
            gone.wait(10)  # the sixth chunk only once every client has left
            time.sleep(0.5)
            yield f"{text}5"
            finished.append(text)
        finally:
            closed.append(text)

    with gr.Blocks() as demo:
        text, escrow, out = gr.Textbox(), gr.Textbox(), gr.Textbox()
        gr.Button().click(stream, [text, escrow], out, api_name="stream", concurrency_limit=None)
    escrow_ids = [market.escrow("0.010") for _ in range(5)]
    with launched(demo) as url:
        results: dict[str, list[str]] = {}

        def client(escrow_id: str) -> None:
            results[escrow_id] = _read_chunks_then_leave(url, escrow_id, 5)

        clients = [threading.Thread(target=client, args=(e,)) for e in escrow_ids]
        for c in clients:
            c.start()
        for c in clients:
            c.join(30)
        gone.set()
        deadline = time.monotonic() + 15
        while len(closed) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert all(len(r) == 5 for r in results.values()) and len(results) == 5, results
    assert len(closed) == 5 and not finished, "Gradio did not cancel the abandoned streams"
    gate.close()
    for escrow_id in escrow_ids:
        balance = market.balance(escrow_id)
        assert balance["spent_usdc"] == Decimal("0.001"), f"an abandoned stream paid {balance['spent_usdc']}"
        assert balance["held_usdc"] == 0
    market.server.store.check_invariants()


# -- 6. per_call: a slow hold answer, then a lost capture answer near the hold's expiry -----------


class LateAnswers(FaultProxy):
    """The fault proxy, plus: requests matching ``late_match`` are applied at once but answered
    ``late_s`` later (the FakeClock moves on by as much meanwhile: the service's time passes too)."""

    def __init__(self, upstream_port: int, clock, *, late_match: str, late_s: float):
        super().__init__(upstream_port)
        self.clock, self.late_match, self.late_s = clock, late_match, late_s

    def _forward(self, head: bytes, body: bytes) -> bytes | None:
        answer = super()._forward(head, body)
        method, path = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")[:2]
        if re.search(self.late_match, f"{method} {path}"):
            time.sleep(self.late_s)
            self.clock.tick(self.late_s)
        return answer


@pytest.mark.fault
def test_per_call_never_reads_an_expired_hold_as_captured(market):
    """Finding 6: per_call, hold TTL 2 s; the hold's answer arrives 1.5 s after the service made it;
    the call runs 0.7 s, so its capture reaches the service after the hold expired (refused there);
    every capture's answer is lost; the void answers hold_closed (the hold expired).

    Before: the deadline for "captured for sure" counted from the hold's answer (1 s from then), so the
    gate read the expired hold as captured and handed out the result: the ledger shows 0 spent.
    Now: the result is withheld, "not charged"."""
    server, clock = market.server, market.server.clock
    proxy = LateAnswers(server.port, clock, late_match=r"^POST /api/escrow/[^/]+/holds$", late_s=1.5)
    proxy.add("drop_after", match=r"/capture$", times=None)
    gate = EscrowGate(proxy.url(), market.seller.api_key, seller_id=market.seller.agent_id, clock=clock,
                      settlement="per_call", per_call_hold_ttl_s=2, settle_retries=0)
    calls = Calls()
    try:
        @gate.paid(PRICE, reason="work", receipt=True)
        def work(text: str) -> str:
            clock.tick(0.7)  # the call takes a while: the hold (made 2.2 s ago) expires meanwhile
            return text

        escrow_id = market.escrow("0.010")
        outcome = calls.make(work, escrow_id, clock, "x")
        gate.close()
    finally:
        gate.close()
        proxy.close()
    assert any(line.endswith("/capture") and fault == "drop_after" for _, line, fault, _ in proxy.log)
    assert outcome.receipt is None, f"a receipt for an expired hold: {outcome.receipt}"
    assert_every_result_paid_once(market, calls, [escrow_id])


def per_call_with_capture_answers_lost(market, *, hold_answer_late_s: float):
    """One per_call call (hold TTL 2 s) whose hold's answer comes late and whose capture answers are all lost."""
    server, clock = market.server, market.server.clock
    proxy = LateAnswers(server.port, clock, late_match=r"^POST /api/escrow/[^/]+/holds$", late_s=hold_answer_late_s)
    proxy.add("drop_after", match=r"/capture$", times=None)
    gate = EscrowGate(proxy.url(), market.seller.api_key, seller_id=market.seller.agent_id, clock=clock,
                      settlement="per_call", per_call_hold_ttl_s=2, settle_retries=0)
    calls = Calls()
    try:
        escrow_id = market.escrow("0.010")
        outcome = calls.make(echo_on(gate), escrow_id, clock, "x")
    finally:
        gate.close()
        proxy.close()
    return outcome, calls, escrow_id


@pytest.mark.fault
def test_per_call_reads_hold_closed_as_captured_only_when_it_was(market):
    """The other side of finding 6 (a control: it passed before too): the capture went through and
    only its answers were lost, well within the hold's life: the result is handed out and paid."""
    outcome, calls, escrow_id = per_call_with_capture_answers_lost(market, hold_answer_late_s=0.3)
    assert outcome.receipt is not None, outcome.refusal
    assert_every_result_paid_once(market, calls, [escrow_id])


@pytest.mark.fault
def test_per_call_capture_landed_near_expiry_says_it_may_have_been_charged(market):
    """The other side of finding 6, near the edge: hold TTL 2 s, its answer 1.2 s late, the capture applied
    at once (0.8 s before the hold expires), every capture answer lost. The gate cannot tell an expired hold
    from its own capture there (Date has a 1 s resolution), so it withholds the result and says that it
    may have been charged: never a bare "not charged" for a charge the ledger shows."""
    outcome, calls, escrow_id = per_call_with_capture_answers_lost(market, hold_answer_late_s=1.2)
    assert outcome.receipt is None
    assert "if it was, 0.001000 USDC was paid for this withheld result" in outcome.refusal
    assert market.balance(escrow_id)["spent_usdc"] in (Decimal("0"), Decimal("0.001"))
    market.server.store.check_invariants()


# -- 8. one escrow's stalled captures do not stall another's calls ------------------------------


@pytest.mark.fault
def test_a_stalled_capture_on_one_escrow_does_not_hold_up_another(market):
    """Finding 8: escrow A's capture is held up 3 s at the proxy; a first call on an unrelated escrow B
    (its facts, its lease's hold) must complete while A's capture has still not reached the service.
    Before: a lock held across HTTP made B's call wait for A's capture."""
    server, clock = market.server, market.server.clock
    proxy = FaultProxy(server.port)
    gate = EscrowGate(proxy.url(), market.seller.api_key, seller_id=market.seller.agent_id, clock=clock,
                      settlement=Lease(capture_interval_s=0.5))
    calls = Calls()
    try:
        echo = echo_on(gate)
        a, b = market.escrow("1"), market.escrow("1")
        proxy.add("delay", match=rf"^POST /api/escrow/{a}/holds/[^/]+/capture$", delay_s=3.0)
        assert calls.make(echo, a, clock, "x").receipt is not None  # A's lease is open and owes one charge
        deadline = time.monotonic() + 5
        while not any(a in line and line.endswith("/capture") for _, line, _, _ in proxy.log):
            assert time.monotonic() < deadline, "A's capture was never sent"
            time.sleep(0.005)
        a_capture_landed = []

        def first_call_on_b() -> None:
            calls.make(echo, b, clock, "y")
            a_capture_landed.append(any(a in p and p.endswith("/capture") for _, p in server.request_log))

        thread = threading.Thread(target=first_call_on_b, daemon=True)
        thread.start()
        thread.join(2.5)
        assert not thread.is_alive(), "B's first call waited for A's stalled capture"
        assert a_capture_landed == [False], "B's call finished only after A's capture reached the service"
        assert calls.outcomes[-1].receipt is not None, calls.outcomes[-1].refusal
        gate.close()
    finally:
        gate.close()
        proxy.close()
    assert_every_result_paid_once(market, calls, [a, b])
