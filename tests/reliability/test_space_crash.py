"""The Space SIGKILLed mid-load with open leases, restarted on the same DATA_DIR: its journal is replayed.

Production mode: the escrow service is a separate process (it outlives the Space), the Space
charges through it with the default lease settlement and its journal in DATA_DIR. Callers are
gradio_client threads. What a call that was in flight at the kill cost is unknowable to its
caller: the gate journals a charge *before* it returns the result, so a kill between the two
leaves a charge journaled (and captured on replay) whose result never reached anyone. The
books must show exactly that and no more: every charge on the ledger is a journaled charge,
each captured once; the journaled charges without a delivered result are at most the calls
that were in flight at the kill.

Two restarts: within the hold TTL (everything journaled is captured, nothing lost), and after it
(the test sweeps the ledger with a clock moved past the TTL while the Space is down: what was not
yet captured is lost to the seller, never more than the leases held, and the buyer keeps it).

The test kills only while every hold open on the service is in the journal: a hold is journaled
when its answer arrives, so a kill while a hold is being opened leaves one the restarted Space
does not know. It has no charge on it (none can be made before the answer) and returns to the
buyer at its TTL (120 s), which this test does not wait for.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from gradio_client import Client

from escrow import Store
from escrow.clock import FakeClock
from gate import Lease
from tests.support.audit import Ledger, micro
from tests.support.processes import SIGTERM_EXITS, ServerProcess, escrow_process, space_process
from tests.support.space import EscrowApi

pytestmark = [pytest.mark.crash, pytest.mark.slow]

CALLERS = 12
BUYERS = 2
ESCROWS_EACH = 2
HOLD_TTL_S = Lease().hold_ttl_s  # the Space's leases use the defaults
CAPTURE_INTERVAL_S = Lease().capture_interval_s


def _journal(path: Path) -> dict:
    """The Space's lease journal (gate/_journal.py), read-only, from outside the process."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        charges = {
            row[0]: {"hold_id": row[1], "escrow_id": row[2], "amount": row[3], "capture_key": row[4]}
            for row in db.execute("SELECT charge_id, hold_id, escrow_id, amount_micro, capture_key FROM charges")
        }
        captures = [
            {"key": r[0], "hold_id": r[1], "escrow_id": r[2], "amount": r[3], "final": bool(r[4]), "status": r[5]}
            for r in db.execute(
                "SELECT key, hold_id, escrow_id, amount_micro, final, status FROM captures ORDER BY seq"
            )
        ]
        holds = {
            r[0]: {"escrow_id": r[1], "status": r[2]}
            for r in db.execute("SELECT hold_id, escrow_id, status FROM holds")
        }
    finally:
        db.close()
    done = {c["key"] for c in captures if c["status"] == "done"}
    return {
        "charges": charges,
        "captures": captures,
        "holds": holds,
        "charged": sum(c["amount"] for c in charges.values()),
        "captured": sum(c["amount"] for c in charges.values() if c["capture_key"] in done),
    }


class Callers:
    """Threads calling /classify through gradio_client; what each caller saw, split at the kill."""

    def __init__(self, url: str, escrow_ids: list[str], audit, threads: int):
        self.url, self.escrow_ids, self.audit = url, escrow_ids, audit
        self.stop = threading.Event()
        self.killed = threading.Event()
        self.lock = threading.Lock()
        self.unknown: list[tuple[str, str]] = []  # (escrow, error): in flight at the kill, outcome unknown
        self.errors_before_kill: list[str] = []
        self.calls = 0
        self.clients = [Client(url, verbose=False) for _ in range(threads)]
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def start(self) -> Callers:
        for thread in self.threads:
            thread.start()
        return self

    def _run(self, n: int) -> None:
        client, i = self.clients[n], 0
        while not self.stop.is_set():
            escrow_id = self.escrow_ids[(n + i) % len(self.escrow_ids)]
            i += 1
            with self.lock:
                self.calls += 1
            try:
                job = client.submit(f"caller {n} call {i}: what a lovely day", escrow_id, api_name="/classify")
                result, receipt = job.result(timeout=60)
            except Exception as exc:  # noqa: BLE001 - classified below
                message = f"{type(exc).__name__}: {exc}"
                if "not charged" in message.lower():
                    self.audit.refused(message)
                    continue
                with self.lock:
                    if self.killed.is_set():
                        self.unknown.append((escrow_id, message))
                    else:
                        self.errors_before_kill.append(message)
                return  # after the kill this client is dead; before it, the test fails
            if result.get("label") not in ("negative", "neutral", "positive") or receipt["escrow_id"] != escrow_id:
                with self.lock:
                    self.errors_before_kill.append(f"a wrong answer: {result!r} {receipt!r}")
            self.audit.paid(result, receipt)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(90)
            assert not thread.is_alive(), "a caller hung"
        for client in self.clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - the server may be gone
                pass


def _receipts_total(audit) -> int:
    with audit.outcomes.lock:
        return sum(micro(r["charged_usdc"]) for r in audit.outcomes.receipts)


def _by_escrow(charges) -> Counter:
    total: Counter = Counter()
    for charge in charges:
        total[charge["escrow_id"]] += charge["amount"]
    return total


class Crash:
    """One run: the escrow service, a production Space on it, load, SIGKILL; the test goes on from there."""

    def __init__(self, tmp_path: Path, tiny_model_dir: Path, books):
        self.started = time.monotonic()
        self.service = escrow_process(tmp_path).start()
        self.space: ServerProcess | None = None
        api = EscrowApi(self.service.base_url + "/api")
        self.seller = api.register("space-seller")
        self.buyers = [api.register(f"buyer-{i}") for i in range(BUYERS)]
        for buyer in self.buyers:
            api.fund(buyer, "10")
        self.escrow_ids = [
            api.open_escrow(b, self.seller.agent_id, "3.000") for b in self.buyers for _ in range(ESCROWS_EACH)
        ]
        self.db_path = tmp_path / f"escrow-{self.service.port}.db"
        self.ledger = Ledger(self.db_path)
        self.audit = books.open(self.ledger, seller_id=self.seller.agent_id,
                                buyer_ids=[b.agent_id for b in self.buyers], per_call=False)
        data_dir = tmp_path / "space-data"
        self.journal_path = data_dir / "gate-journal.sqlite"
        self.space = space_process(
            tmp_path, PF_API_KEY=self.seller.api_key, ESCROW_URL=self.service.base_url + "/api",
            MODEL_ID=str(tiny_model_dir), DATA_DIR=str(data_dir),
        )
        self.callers: list[Callers] = []

    def close(self) -> None:
        if self.space is not None:
            self.space.kill()
        self.service.stop()

    # -- what the ledger and the journal say ----------------------------------------------------

    def escrows(self) -> list[dict]:
        return self.ledger.escrows(self.seller.agent_id)

    def spent(self) -> int:
        return sum(e["spent_micro"] for e in self.escrows())

    def open_holds(self) -> dict[str, dict]:
        return {h["id"]: h for h in self.ledger._query(
            "SELECT h.* FROM holds h JOIN escrows e ON e.id = h.escrow_id WHERE e.seller_id = ? AND h.status = 'open'",
            (self.seller.agent_id,),
        )}

    def journal_knows_holds(self) -> bool:
        """No hold open right now whose answer the Space has not journaled yet (see the module doc)."""
        return set(self.open_holds()) <= set(_journal(self.journal_path)["holds"])

    # -- the run -------------------------------------------------------------------------------

    def load_then_kill(self) -> None:
        """Load, then SIGKILL while leases hold journaled, uncaptured charges; check there is work for the replay."""
        self.space.start()
        callers = Callers(self.space.base_url + "/", self.escrow_ids, self.audit, CALLERS).start()
        self.callers.append(callers)
        deadline = time.monotonic() + 60
        last_spent, captured_at = 0, time.monotonic()
        while True:  # some charges captured already, others not yet, no hold being opened: kill now
            now = time.monotonic()
            assert now < deadline, f"no moment to kill: {len(self.audit.outcomes.receipts)} receipts"
            assert not callers.errors_before_kill, callers.errors_before_kill[:3]
            spent = self.spent()
            if spent != last_spent:
                last_spent, captured_at = spent, now
            # Midway between two of the flusher's captures (every CAPTURE_INTERVAL_S), so the next one
            # cannot land between this check and the kill and leave the replay nothing to do.
            between_captures = 0.15 * CAPTURE_INTERVAL_S <= now - captured_at <= 0.6 * CAPTURE_INTERVAL_S
            if (len(self.audit.outcomes.receipts) >= 60 and 0 < spent < _receipts_total(self.audit)
                    and between_captures and self.journal_knows_holds()):
                break
            time.sleep(0.05)
        callers.killed.set()
        self.space.kill()  # SIGKILL: no close(), no flush
        callers.stop.set()
        callers.join()
        assert not callers.errors_before_kill, callers.errors_before_kill[:3]
        self.unknown = callers.unknown
        self.paid_before = len(self.audit.outcomes.receipts)
        self.delivered_before = {r["charge_id"] for r in self.audit.outcomes.receipts}

        # The kill left something for the replay to do (else the test would pass vacuously).
        self.at_kill = _journal(self.journal_path)
        escrows = self.escrows()
        self.held_at_kill = {e["id"]: e["held_micro"] for e in escrows}
        self.spent_at_kill = sum(e["spent_micro"] for e in escrows)
        self.open_at_kill = [h for h, v in self.at_kill["holds"].items() if v["status"] == "open"]
        assert sum(self.held_at_kill.values()) > 0 and self.open_at_kill, "no lease was open at the kill"
        assert self.spent_at_kill < self.at_kill["charged"], "every journaled charge was captured before the kill"
        assert self.spent_at_kill < _receipts_total(self.audit)
        assert self.spent_at_kill >= self.at_kill["captured"]  # a pending capture may be applied, unconfirmed
        assert self.delivered_before <= set(self.at_kill["charges"]), "a result delivered without a journaled charge"
        assert set(self.open_holds()) <= set(self.at_kill["holds"]), "a hold the journal does not know"

    def restart(self) -> None:
        """Start the Space again on the same DATA_DIR: it replays its journal before it serves."""
        self.space.start()
        replayed = re.findall(r"lease journal replayed: ([0-9.]+) USDC captured, ([0-9.]+) USDC lost", self.space.log())
        assert len(replayed) == 1, "the restarted Space did not replay its journal"
        self.replay_logged = {"captured": micro(replayed[0][0]), "lost": micro(replayed[0][1])}
        self.spent_after_replay = self.spent()
        assert not self.open_holds(), f"holds still open after the replay: {self.open_holds()}"
        assert sum(e["held_micro"] for e in self.escrows()) == 0

    def more_calls_then_stop(self, calls: int = 20) -> None:
        """A few more calls on the restarted Space, then a clean stop (SIGTERM: the gate settles)."""
        after = Callers(self.space.base_url + "/", self.escrow_ids, self.audit, 4).start()
        self.callers.append(after)
        target = len(self.audit.outcomes.receipts) + calls
        deadline = time.monotonic() + 30
        while len(self.audit.outcomes.receipts) < target and time.monotonic() < deadline:
            time.sleep(0.05)
        after.stop.set()
        after.join()
        assert not after.errors_before_kill and not after.unknown, (after.errors_before_kill + after.unknown)[:3]
        assert len(self.audit.outcomes.receipts) >= target
        assert self.space.stop() in SIGTERM_EXITS, self.space.log()

    def reconcile(self) -> dict:
        """Journal against receipts against the ledger, then the audit (tests/support/audit.py)."""
        final = _journal(self.journal_path)
        receipts = self.audit.outcomes.receipts
        delivered = Counter(r["charge_id"] for r in receipts)
        assert all(n == 1 for n in delivered.values()), "one charge on two receipts"
        assert all(cid.startswith("chg_") for cid in delivered), "a call was settled outside its lease"
        for receipt in receipts:  # every result a caller got is a journaled charge of its price, on its escrow
            charge = final["charges"].get(receipt["charge_id"])
            assert charge is not None, f"receipt {receipt['charge_id']} is not in the journal"
            assert (charge["escrow_id"], charge["amount"]) == (receipt["escrow_id"], micro(receipt["charged_usdc"]))

        # A charge without a delivered result only from the calls in flight at the kill, at most one each.
        undelivered = {cid: c for cid, c in final["charges"].items() if cid not in delivered}
        assert set(undelivered) <= set(self.at_kill["charges"]) - self.delivered_before
        unknown_by_escrow = Counter(e for e, _ in self.unknown)
        assert len(undelivered) <= len(self.unknown) <= CALLERS
        for escrow_id, n in Counter(c["escrow_id"] for c in undelivered.values()).items():
            assert n <= unknown_by_escrow[escrow_id], (escrow_id, n, unknown_by_escrow[escrow_id])

        # Every charge in exactly one capture intent; every intent settled (done, or lost: its hold had
        # closed); each key sent as one request the service applied once; the ledger's captures per hold
        # are exactly the journal's done intents, and each escrow's spent is exactly its captured charges.
        status = {c["key"]: c["status"] for c in final["captures"]}
        assert all(n == 1 for n in Counter(c["key"] for c in final["captures"]).values())
        assert all(c["capture_key"] in status for c in final["charges"].values()), "a charge never captured"
        unsettled = [c for c in final["captures"] if c["status"] not in ("done", "lost")]
        assert not unsettled, unsettled
        assert all(h["status"] == "closed" for h in final["holds"].values())
        applied = Counter(row["idem_key"] for row in self.ledger._query(
            "SELECT idem_key FROM idempotency_keys WHERE agent_id = ?", (self.seller.agent_id,)
        ))
        for capture in final["captures"]:
            assert applied[capture["key"]] == 1, f"capture key {capture['key']} applied {applied[capture['key']]}x"
        journal_by_hold: dict[str, list[int]] = defaultdict(list)
        for capture in final["captures"]:
            if capture["amount"] and capture["status"] == "done":
                journal_by_hold[capture["hold_id"]].append(capture["amount"])
        ledger_by_hold: dict[str, list[int]] = defaultdict(list)
        for escrow_id in self.escrow_ids:
            for settlement in self.ledger.settlements(escrow_id):
                assert settlement["kind"] == "capture", settlement
                ledger_by_hold[settlement["hold_id"]].append(settlement["gross_micro"])
        assert {h: sorted(v) for h, v in ledger_by_hold.items()} == {h: sorted(v) for h, v in journal_by_hold.items()}
        captured = [c for c in final["charges"].values() if status[c["capture_key"]] == "done"]
        lost = {cid: c for cid, c in final["charges"].items() if status[c["capture_key"]] == "lost"}
        captured_by_escrow = _by_escrow(captured)
        for escrow in self.escrows():
            assert escrow["spent_micro"] == captured_by_escrow[escrow["id"]]

        self.final, self.undelivered, self.lost = final, undelivered, lost
        summary = self.audit.reconcile(
            holds_closed=True,
            undelivered_micro=dict(_by_escrow(c for cid, c in undelivered.items() if cid not in lost)),
            lost_micro=dict(_by_escrow(c for cid, c in lost.items() if cid in delivered)),
        )
        calls = sum(c.calls for c in self.callers)
        print(
            f"\nspace crash: {calls} calls; paid {len(receipts)} ({self.paid_before} before the kill), "
            f"refused {len(self.audit.outcomes.refusals)}; in flight at the kill {len(self.unknown)} "
            f"({dict(Counter(m.split(':')[0] for _, m in self.unknown))}), of which journaled without a result "
            f"{len(undelivered)}; at the kill: journaled {self.at_kill['charged']} µUSDC, captured "
            f"{self.spent_at_kill}, held {sum(self.held_at_kill.values())} on {len(self.open_at_kill)} open leases; "
            f"after the replay captured {self.spent_after_replay}; lost {sum(c['amount'] for c in lost.values())}; "
            f"final spent {summary['spent_micro']}; {time.monotonic() - self.started:.1f} s"
        )
        return summary


@pytest.fixture
def crash(tmp_path, tiny_model_dir, books):
    run = Crash(tmp_path, tiny_model_dir, books)
    yield run
    run.close()


def test_space_sigkilled_mid_load_replays_its_journal_on_restart(crash):
    """Restart within the hold TTL: every journaled charge is captured, once; nothing is lost."""
    crash.load_then_kill()
    crash.restart()
    assert crash.spent_after_replay == crash.at_kill["charged"], "the replay did not capture exactly what was journaled"
    assert crash.replay_logged["lost"] == 0
    crash.more_calls_then_stop()
    crash.reconcile()
    assert not crash.lost


def test_space_restarted_after_its_holds_expired_loses_only_what_they_held(crash):
    """Restart after the hold TTL: the uncaptured charges are lost to the seller (the buyer keeps them),
    never more than the leases held; the replay captures nothing twice and nothing it should not."""
    crash.load_then_kill()
    # The hold TTL passes while the Space is down: the service's sweeper, with its clock moved past it.
    store = Store(crash.db_path, clock=FakeClock(time.time() + HOLD_TTL_S + 60))
    try:
        assert store.sweep() > 0
    finally:
        store.close()
    assert not crash.open_holds() and sum(e["held_micro"] for e in crash.escrows()) == 0
    crash.restart()
    assert crash.replay_logged["lost"] == crash.at_kill["charged"] - crash.spent_at_kill
    assert crash.spent_after_replay == crash.spent_at_kill, "the replay captured on an expired hold"
    crash.more_calls_then_stop()
    crash.reconcile()
    lost_by_escrow = _by_escrow(crash.lost.values())
    assert sum(lost_by_escrow.values()) == crash.at_kill["charged"] - crash.spent_at_kill > 0
    assert set(crash.lost) <= set(crash.at_kill["charges"])
    for escrow_id, amount in lost_by_escrow.items():  # the seller's exposure: what the open leases held
        assert amount <= crash.held_at_kill[escrow_id], (escrow_id, amount, crash.held_at_kill[escrow_id])
