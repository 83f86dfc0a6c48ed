"""A deterministic simulation of the gate against the real ledger (in the spirit of TigerBeetle's VOPR).

The real ``EscrowGate`` (lease with a durable journal, or per_call) talks HTTP-shaped requests
(``requests`` with an in-process adapter) to the real sandbox escrow API on a real SQLite
ledger, under one fake clock that only the simulation moves. A seeded schedule draws
escrow TTLs from 1 s to hours, calls (durations, failures, streams abandoned midway),
service outages, slow and lossy answers, clock skew of the gate up to ±10 s, process
crashes with journal replay and buyer releases mid-lease. After each schedule:

- money is conserved and no escrow overspent (``Store.check_invariants``);
- no escrow paid more than the results handed out on it (no failed call charged,
  nothing captured twice), except calls withheld as "maybe charged" (the capture's
  answer was lost and the service stayed down);
- every result handed out was captured, except lease charges taken within
  ``max_unconfirmed_s`` (+ the flusher's period) of an outage's start, and streams
  whose settlement failed because the escrow expired or the service was down while
  they ran (SECURITY.md states both exposures).

    python -m tests.simulate --schedules 100000          # a soak
    python -m tests.simulate --seed 1234 --schedules 1 -v  # replay one schedule
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from escrow import FakeClock, Store
from escrow.server import standalone_app
from gate import EscrowGate, GateError, Lease, PerCall, PerToken, SettlementFailed, _gate
from gate._clock import parse_service_time
from gate._lease import LeaseSettlement

URL = "http://escrow.sim/api"
LEASE = Lease(journal=None)  # the journal path is set per schedule
TTLS = (1, 2, 3, 5, 8, 13, 20, 45, 120, 600, 3600, 86400)


class _Inline:
    """A stand-in for the gate's background executor: runs the job now (the simulation has one thread)."""

    def submit(self, job, *args):
        job(*args)

    def shutdown(self, wait: bool = True) -> None:
        pass


class SimClock(FakeClock):
    """The one clock of a schedule. While it moves, what runs in the background in a real process runs too:
    the lease flusher (when its deadlines fall due, late by ``flush_late``) and the ledger's sweeper (every second)."""

    def __init__(self, start: float):
        super().__init__(start)
        self.background: list[tuple[float, float, object]] = []  # [next due, period, job]
        self._inside = False

    def every(self, period: float, job) -> None:
        """Run ``job`` now and then again after ``period``, or after what it returns when it returns a number."""
        self.background.append([self.now(), period, job])

    def tick(self, seconds: float) -> float:
        target = self.now() + seconds
        while True:
            due = min((entry[0] for entry in self.background), default=target)
            if self._inside or due >= target:
                return super().tick(max(target - self.now(), 0.0))
            super().tick(max(due - self.now(), 0.0))
            self._inside = True
            try:
                for entry in self.background:
                    if entry[0] <= self.now():
                        wait = entry[2]()
                        entry[0] = self.now() + (wait if isinstance(wait, float) else entry[1])
            finally:
                self._inside = False


@dataclass
class Window:
    start: float
    end: float
    kind: str  # "down", "slow" (each leg takes `delay`), "lossy" (answers lost after being applied)
    delay: float = 0.0


class SimService(BaseAdapter):
    """The escrow API in-process, reached through ``requests``; faults by the schedule's windows."""

    def __init__(self, store: Store, clock: FakeClock, rng: random.Random):
        super().__init__()
        self.app = standalone_app(store, date_from_clock=True, close_store=False)
        self.clock = clock
        self.rng = rng
        self.windows: list[Window] = []
        self.loop = asyncio.new_event_loop()
        self.up = True  # forced up at the end of a schedule

    def window(self) -> Window | None:
        now = self.clock.now()
        if not self.up:
            return None
        for window in self.windows:
            if window.start <= now < window.end:
                return window
        return None

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        window = self.window()
        if window is not None and window.kind == "down":
            self.clock.tick(0.01)
            raise requests.ConnectionError("simulated outage")
        if window is not None and window.kind == "slow":
            self.clock.tick(window.delay)
        status, headers, body = self._call(request)
        if window is not None and window.kind == "slow":
            self.clock.tick(window.delay)
        if window is not None and window.kind == "lossy" and self.rng.random() < 0.5:
            raise requests.ReadTimeout("simulated lost answer")
        response = requests.Response()
        response.status_code = status
        response._content = body
        response.headers = CaseInsensitiveDict(headers)
        response.url = request.url
        response.request = request
        return response

    def close(self) -> None:
        pass

    def _call(self, request) -> tuple[int, dict, bytes]:
        path_and_query = request.path_url
        path, _, query = path_and_query.partition("?")
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
            "root_path": "", "client": ("127.0.0.1", 5000), "server": ("escrow.sim", 80),
            "headers": [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in request.headers.items()],
        }
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        sent = False
        answer: dict = {"headers": {}, "body": b""}

        async def receive():
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                answer["headers"] = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])}
            elif message["type"] == "http.response.body":
                answer["body"] += message.get("body", b"")

        self.loop.run_until_complete(self.app(scope, receive, send))
        return answer["status"], answer["headers"], answer["body"]


@dataclass
class Books:
    """What the buyer saw, per escrow."""

    delivered: Decimal = Decimal(0)  # results handed out: what each should have cost
    at_risk: Decimal = Decimal(0)  # of which lease charges taken next to an outage's start
    maybe_charged: Decimal = Decimal(0)  # withheld results whose capture may have landed
    stream_unpaid_ok: Decimal = Decimal(0)  # streams whose settlement failed for a reason the docs allow
    calls: int = 0


@dataclass
class Outcome:
    seed: int
    settlement: str
    calls: int = 0
    served: int = 0
    problems: list[str] = field(default_factory=list)


class Schedule:
    """One seeded run."""

    def __init__(self, seed: int, workdir: Path, verbose: bool = False):
        self.seed = seed
        self.rng = random.Random(seed)
        self.verbose = verbose
        self.workdir = workdir
        self.clock = SimClock(1_767_225_600.0 + self.rng.randrange(86400))
        self.t0 = self.clock.now()
        self.store = Store(workdir / "ledger.db", clock=self.clock)
        self.service = SimService(self.store, self.clock, self.rng)
        seller = self.store.register_agent("seller")
        buyer = self.store.register_agent("buyer")
        self.seller_key, self.seller_id = seller["api_key"], seller["agent_id"]
        self.buyer_key = buyer["api_key"]
        self.store.grant(buyer["agent_id"], 1_000_000_000)
        self.skew = self.rng.choice((0.0, 0.0, self.rng.uniform(-10, 10)))
        self.settlement = self.rng.choice(("lease", "lease", "per_call"))
        self.flush_late = self.rng.choice((0.0, 0.05, 0.5))  # how late the flusher thread wakes
        self.journal = workdir / "journal.sqlite"
        self.books: dict[str, Books] = {}
        self.down: list[Window] = []
        self.gate: EscrowGate | None = None
        self.functions: dict = {}
        self.out = Outcome(seed, self.settlement)

    # -- the gate ----------------------------------------------------------------------

    def gate_now(self) -> float:
        return self.clock.now() + self.skew

    def start_gate(self) -> None:
        lease = Lease(journal=self.journal)

        hold_ttl_s = self.rng.choice((5, 30, 300))

        def settlement(service):
            # Before the settlement exists: a lease's start-up replay already talks to the service.
            client = service.client
            client._session.mount("http://escrow.sim/", self.service)
            client._sleep = self.clock.tick  # retry back-off passes simulated time
            if self.settlement == "per_call":
                from gate._settlement import PerCallSettlement

                return PerCallSettlement(service, hold_ttl_s=hold_ttl_s)
            return LeaseSettlement(service, lease, now=self.gate_now, timer=self.clock.now, background=False,
                                   per_call_hold_ttl_s=hold_ttl_s)

        gate = EscrowGate(URL, self.seller_key, seller_id=self.seller_id, clock=self.gate_now, timer=self.clock.now,
                          settlement=settlement)
        gate._cashier._background = _Inline()
        self.gate = gate
        self.functions = self._functions(gate)

    def crash(self) -> None:
        """The process dies: nothing is flushed; a new one starts on the same journal and replays it."""
        old = self.gate
        settlement = old._settlement
        if isinstance(settlement, LeaseSettlement):
            settlement.journal.close()  # the OS would drop its lock
        old._client._session.close()
        _gate._open_gates.discard(old)  # a dead process closes nothing at exit
        self.gate = None  # no flusher runs while the new process starts (and replays)
        self.start_gate()

    def _functions(self, gate: EscrowGate) -> dict:
        sim = self
        per_call = PerCall(self.rng.choice(("0.001", "0.000001", "0.013")))
        per_token = PerToken("0.0005", "0.0015", max_tokens=40)

        @gate.paid(per_call, reason="call", receipt=True)
        def call(text: str, seconds: float, fail: bool) -> str:
            sim.clock.tick(seconds)
            if fail:
                raise RuntimeError("the model failed")
            return text

        @gate.paid(per_token, reason="stream", receipt=True)
        def stream(text: str, chunks: int, seconds: float, fail_at: int):
            words = []
            for i in range(chunks):
                sim.clock.tick(seconds)
                if i == fail_at:
                    raise RuntimeError("the stream failed")
                words.append(f"w{i}")
                yield " ".join(words)

        return {"call": (call, per_call), "stream": (stream, per_token)}

    # -- the schedule ------------------------------------------------------------------

    def run(self) -> Outcome:
        rng = self.rng
        horizon = rng.choice((20.0, 60.0, 200.0))
        t0 = self.clock.now()
        for _ in range(rng.randrange(0, 4)):
            start = t0 + rng.uniform(0, horizon)
            kind = rng.choice(("down", "down", "slow", "lossy"))
            length = rng.choice((0.5, 2.0, 6.0, 30.0, 150.0)) if kind == "down" else rng.uniform(0.5, 20)
            window = Window(start, start + length, kind, rng.uniform(0.01, 1.0) if kind == "slow" else 0.0)
            if any(w.start < window.end and window.start < w.end for w in self.service.windows):
                continue  # one fault at a time: an outage's start is then the moment the service stops
            self.service.windows.append(window)
            if kind in ("down", "lossy"):  # a lossy service is down for every call whose answer is lost
                self.down.append(window)
        for w in self.service.windows:
            self.log(f"fault window {w.kind} from {w.start - self.t0:.2f} to {w.end - self.t0:.2f} (delay {w.delay:.2f})")
        self.log(f"settlement {self.settlement}, skew {self.skew:+.2f}s, flusher late by {self.flush_late}s")
        self.start_gate()
        escrows: list[str] = []
        times = [t0 + rng.uniform(0, horizon) for _ in range(rng.randrange(5, 60))]
        if self.down and rng.random() < 0.5:  # busy around an outage: where a lease's exposure shows
            outage = rng.choice(self.down)
            times += [outage.start + rng.uniform(-8, 40) for _ in range(rng.randrange(5, 40))]
        events = sorted((at, i) for i, at in enumerate(times))
        self.clock.every(1.0, self.flush)
        self.clock.every(1.0, self.store.sweep)
        for at, _ in events:
            self.clock.tick(max(at - self.clock.now(), 0.0))
            roll = rng.random()
            if not escrows or roll < 0.12:
                escrows.append(self.open_escrow())
            elif roll < 0.15 and self.settlement == "lease":
                self.log("crash and restart")
                self.crash()
            elif roll < 0.18:
                self.release(rng.choice(escrows))
            else:
                self.one_call(rng.choice(escrows[-3:]))
        self.finish()
        return self.out

    def flush(self) -> float:
        """The flusher thread: sleeps until the next deadline (at most a second), plus this schedule's lateness."""
        settlement = None if self.gate is None else self.gate._settlement
        if not isinstance(settlement, LeaseSettlement):
            return 1.0
        # The flusher thread's own pass: it never waits for requests in flight (the public flush() does).
        return min(max(settlement._flush(close_all=False, inline=True), 0.01), 1.0) + self.flush_late

    def open_escrow(self) -> str:
        ttl = self.rng.choice(TTLS)
        amount = self.rng.choice((1_000, 20_000, 100_000, 5_000_000))
        outcome = self.store.create_escrow(
            self.buyer_key, seller_id=self.seller_id, amount_micro=amount, ttl_seconds=ttl, description="",
            meta={}, release_condition=None,
        )
        escrow_id = outcome.json()["id"]
        self.books[escrow_id] = Books()
        self.log(f"escrow {escrow_id} ttl {ttl}s amount {amount}µ")
        return escrow_id

    def release(self, escrow_id: str) -> None:
        self.store.release(self.buyer_key, escrow_id, amount_micro=0, refund_remainder=True, meta=None)
        self.log(f"buyer released {escrow_id}")

    def one_call(self, escrow_id: str) -> None:
        rng, books = self.rng, self.books[escrow_id]
        self.out.calls += 1
        books.calls += 1
        started = self.clock.now()
        if rng.random() < 0.7:
            fn, price = self.functions["call"]
            seconds = rng.choice((0.0, 0.01, 0.2, 1.5, 8.0))
            fail = rng.random() < 0.1
            try:
                result, receipt = fn("hello", seconds, fail, escrow_id)
            except SettlementFailed as exc:
                self.withheld(escrow_id, exc, price.max_price((), {}))
                return
            except GateError as exc:
                self.log(f"call refused: {exc.message}")
                return
            assert not fail, "a failed call returned a result"
            self.delivered(escrow_id, Decimal(receipt["charged_usdc"]), receipt["settlement"], started)
            return
        fn, price = self.functions["stream"]
        chunks = rng.randrange(1, 8)
        abandon_after = rng.choice((None, None, rng.randrange(0, chunks + 1)))
        fail_at = rng.choice((-1, -1, -1, rng.randrange(0, chunks)))
        seconds = rng.choice((0.0, 0.3, 2.0))
        text = "say something nice"
        handed: list[str] = []
        stream = fn(text, chunks, seconds, fail_at, escrow_id)
        try:
            for item, receipt in stream:
                if receipt is not None:
                    self.delivered(escrow_id, Decimal(receipt["charged_usdc"]), receipt["settlement"], started)
                    return
                handed.append(item)
                if abandon_after is not None and len(handed) >= abandon_after:
                    stream.close()  # the client leaves: what was handed out is charged
                    if handed:
                        owed = min(price.actual_price((text,), {}, handed[-1], None), price.max_price((text,), {}))
                        self.stream_settled_in_background(escrow_id, owed, started)
                    return
        except SettlementFailed as exc:
            if handed:
                self.stream_unpaid(escrow_id, price.actual_price((text,), {}, handed[-1], None), started, exc)
            return
        except GateError as exc:
            self.log(f"stream refused or failed: {exc.message}")
            return

    # -- the books ---------------------------------------------------------------------

    def delivered(self, escrow_id: str, amount: Decimal, settlement: str, started: float) -> None:
        books = self.books[escrow_id]
        books.delivered += amount
        self.out.served += 1
        if settlement == "lease" and self.near_outage_start(self.clock.now()):
            books.at_risk += amount
        self.log(f"{escrow_id}: result paid {amount} by {settlement}")

    def stream_settled_in_background(self, escrow_id: str, owed: Decimal, started: float) -> None:
        # The gate charged it in _abandoned (inline here); its outcome is only in the ledger.
        books = self.books[escrow_id]
        books.delivered += owed
        if self.near_outage_start(self.clock.now()) or self.troubled(started, self.clock.now(), escrow_id):
            books.at_risk += owed
        self.log(f"{escrow_id}: stream abandoned, owes {owed}")

    def stream_unpaid(self, escrow_id: str, owed: Decimal, started: float, exc: Exception) -> None:
        books = self.books[escrow_id]
        books.delivered += owed
        if self.troubled(started, self.clock.now(), escrow_id):
            books.stream_unpaid_ok += owed
        if "If the charge was not recorded" in str(exc):
            books.maybe_charged += owed
        self.log(f"{escrow_id}: stream output handed out, settlement failed: {exc}")

    def withheld(self, escrow_id: str, exc: SettlementFailed, maximum: Decimal) -> None:
        if "If the charge was not recorded" in str(exc):
            self.books[escrow_id].maybe_charged += maximum
        self.log(f"{escrow_id}: result withheld: {exc}")

    def near_outage_start(self, at: float) -> bool:
        slack = LEASE.max_unconfirmed_s + self.flush_late + 1.0
        return any(w.start - slack <= at <= w.start + slack for w in self.down)

    def troubled(self, start: float, end: float, escrow_id: str) -> bool:
        """The service was down, or the escrow closed or near its end, while a stream ran."""
        slack = LEASE.max_unconfirmed_s + self.flush_late + 1.0
        if any(w.start - slack <= end and start <= w.end + slack for w in self.down):
            return True
        escrow = self.store.get_escrow(self.buyer_key, escrow_id).json()
        if escrow["status"] != "active" or Decimal(str(escrow["remaining_usdc"])) < Decimal("0.0001"):
            return True  # closed, or too little left for the fresh hold a stream outliving its own needs
        # Expired (or about to, on clocks up to 10 s apart) before the stream's capture could land.
        return parse_service_time(escrow["expires_at"]) <= end + LEASE.settle_margin_s + 10

    def finish(self) -> None:
        self.service.up = False  # no more faults
        self.service.windows.clear()
        self.clock.background.clear()
        self.gate.close()
        self.clock.tick(3 * 86400)
        self.store.sweep()
        self.store.check_invariants()
        for escrow_id, books in self.books.items():
            spent = Decimal(str(self.store.get_escrow(self.buyer_key, escrow_id).json()["spent_usdc"]))
            low = books.delivered - books.at_risk - books.stream_unpaid_ok
            high = books.delivered + books.maybe_charged
            if not low <= spent <= high:
                self.out.problems.append(
                    f"escrow {escrow_id}: spent {spent} not in [{low}, {high}] (delivered {books.delivered}, "
                    f"at risk {books.at_risk}, stream unpaid allowed {books.stream_unpaid_ok}, "
                    f"maybe charged {books.maybe_charged}, calls {books.calls})"
                )

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"[{self.clock.now() - self.t0:10.2f}] {message}")


def run_one(seed: int, verbose: bool = False) -> Outcome:
    workdir = Path(tempfile.mkdtemp(prefix="gate-sim-"))
    schedule = None
    try:
        schedule = Schedule(seed, workdir, verbose)
        return schedule.run()
    finally:
        if schedule is not None:
            schedule.store.close()
            schedule.service.loop.close()
        shutil.rmtree(workdir, ignore_errors=True)


def replay_command(seed: int) -> str:
    return f"python -m tests.simulate --seed {seed} --schedules 1 -v"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL if not args.verbose else logging.WARNING)
    failures = 0
    started = time.monotonic()
    for i in range(args.schedules):
        seed = args.seed + i
        outcome = run_one(seed, args.verbose)
        if outcome.problems:
            failures += 1
            print(f"schedule {seed} ({outcome.settlement}) FAILED:", *outcome.problems, sep="\n  ")
            print(f"  replay: {replay_command(seed)}")
    print(f"{args.schedules - failures} passed, {failures} failed in {time.monotonic() - started:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
