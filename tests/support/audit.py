"""Reconciliation: every cent the callers were told about is on the ledger, and nothing else.

An ``Audit`` collects what the callers saw (receipts, refusals, results) and, at the end of
a test, reads the escrow service's own ledger (the SQLite file, integer micro-USDC) and checks:

1. per escrow: the receipts the callers got == what the escrow service settled (``spent``),
   and the settlements on it are exactly as many as the receipts (no double charge, no
   charge without a receipt, no receipt without a charge) — per_call settles each call
   on its own hold or deduction;
2. seller income + fees == everything settled on the seller's escrows;
3. each buyer: faucet credits == balance + escrowed amounts − refunds, and each escrow's
   ``amount == spent + held + remaining + refunded``;
4. ``held == 0`` when the test says every hold must be gone (after settlement or expiry);
5. every refusal said "not charged" (or "charged" where it was), every result had a receipt;
6. ``Store.check_invariants()`` (conservation, the journal) holds.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

MICRO = Decimal("0.000001")


def micro(amount: Any) -> int:
    """A USDC amount (str, Decimal, int) as integer micro-USDC; never through float."""
    if isinstance(amount, float):
        raise TypeError("money must never be a float")
    value = Decimal(str(amount))
    units = value / MICRO
    if units != units.to_integral_value():
        raise AssertionError(f"{amount} is not a whole number of micro-USDC")
    return int(units)


@dataclass
class Outcomes:
    """What callers saw, thread-safe."""

    receipts: list[dict] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    unpaid_results: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def paid(self, result: Any, receipt: dict | None) -> None:
        with self.lock:
            if not isinstance(receipt, dict) or micro(receipt.get("charged_usdc", "0")) <= 0:
                self.unpaid_results.append((result, receipt))
            else:
                self.receipts.append(dict(receipt))

    def refused(self, message: str) -> None:
        with self.lock:
            self.refusals.append(str(message))

    def error_mix(self) -> Counter:
        """Refusals grouped by their first words (for reporting)."""
        return Counter(re.sub(r"esc_\w+|[0-9.]+", "#", m).split(";")[0].split(".")[0] for m in self.refusals)


class Ledger:
    """Read-only SQL on an escrow database (in this process or another one)."""

    def __init__(self, db_path: str | Path, store: Any = None):
        self.db_path = str(db_path)
        self.store = store

    def _query(self, sql: str, args: tuple = ()) -> list[dict]:
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            cur = conn.execute(sql, args)
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        finally:
            conn.close()

    def escrows(self, seller_id: str | None = None) -> list[dict]:
        if seller_id is None:
            return self._query("SELECT * FROM escrows")
        return self._query("SELECT * FROM escrows WHERE seller_id = ?", (seller_id,))

    def escrow(self, escrow_id: str) -> dict:
        rows = self._query("SELECT * FROM escrows WHERE id = ?", (escrow_id,))
        assert rows, f"escrow {escrow_id} not in the ledger"
        return rows[0]

    def settlements(self, escrow_id: str) -> list[dict]:
        return self._query("SELECT * FROM settlements WHERE escrow_id = ?", (escrow_id,))

    def balance(self, agent_id: str) -> int:
        rows = self._query("SELECT balance_micro FROM agents WHERE id = ?", (agent_id,))
        assert rows, f"agent {agent_id} not in the ledger"
        return rows[0]["balance_micro"]

    def minted_to(self, agent_id: str) -> int:
        rows = self._query(
            "SELECT COALESCE(SUM(amount_micro), 0) AS s FROM transfers WHERE to_account = ?"
            " AND kind IN ('faucet', 'grant')",
            (f"agent:{agent_id}",),
        )
        return rows[0]["s"]

    def referral_income(self, agent_id: str) -> int:
        rows = self._query(
            "SELECT COALESCE(SUM(amount_micro), 0) AS s FROM transfers WHERE to_account = ?"
            " AND kind LIKE '%\\_referral' ESCAPE '\\'",
            (f"agent:{agent_id}",),
        )
        return rows[0]["s"]

    def check_invariants(self) -> None:
        if self.store is not None:
            self.store.check_invariants()
            return
        from escrow import Store

        store = Store(self.db_path)
        try:
            store.check_invariants()
        finally:
            store.close()


class Audit:
    """Collects outcomes for one ledger; ``reconcile()`` checks the books (see the module doc)."""

    def __init__(self, ledger: Ledger, *, seller_id: str, buyer_ids: list[str] = (), per_call: bool = True):
        self.ledger = ledger
        self.seller_id = seller_id
        self.buyer_ids = list(buyer_ids)
        self.per_call = per_call
        self.outcomes = Outcomes()
        self.reconciled = False

    # what callers saw
    def paid(self, result: Any, receipt: dict | None) -> None:
        self.outcomes.paid(result, receipt)

    def refused(self, message: str) -> None:
        self.outcomes.refused(message)

    def reconcile(self, *, holds_closed: bool = True, uncertain: int = 0,
                  undelivered_micro: dict[str, int] | None = None, lost_micro: dict[str, int] | None = None) -> dict:
        """Check the books; returns a summary. ``uncertain``: calls whose outcome the gate could not
        know (it said so); each may account for at most one settlement without a receipt.
        Per escrow, amounts the test has established and bounded itself (a Space crash):
        ``undelivered_micro``, charges captured whose result never reached the caller; ``lost_micro``,
        charges on receipts never captured (their hold expired first: the seller's loss). The ledger's
        ``spent`` must then be exactly receipts + undelivered - lost."""
        problems: list[str] = []
        out = self.outcomes
        if out.unpaid_results:
            problems.append(f"{len(out.unpaid_results)} results handed out without a charge: {out.unpaid_results[:3]}")
        for message in out.refusals:
            if "not charged" not in message.lower() and "charged" not in message.lower():
                problems.append(f"a refusal does not say whether the buyer was charged: {message!r}")
        ids = [r.get("charge_id") for r in out.receipts]
        if ids:  # per_call: one hold or deduction per call; lease: one chg_ per call
            duplicates = [i for i, n in Counter(ids).items() if n > 1]
            if duplicates:
                problems.append(f"one charge ID on several receipts (double counted): {duplicates[:5]}")

        by_escrow: dict[str, int] = defaultdict(int)
        count_by_escrow: Counter = Counter()
        for receipt in out.receipts:
            by_escrow[receipt["escrow_id"]] += micro(receipt["charged_usdc"])
            count_by_escrow[receipt["escrow_id"]] += 1

        escrows = self.ledger.escrows(self.seller_id)
        spent_total = 0
        extra_settlements = 0
        for escrow in escrows:
            eid = escrow["id"]
            spent_total += escrow["spent_micro"]
            expected = by_escrow.get(eid, 0) + (undelivered_micro or {}).get(eid, 0)
            expected -= (lost_micro or {}).get(eid, 0)
            if escrow["spent_micro"] != expected:
                problems.append(
                    f"escrow {eid}: spent {escrow['spent_micro']} µUSDC on the ledger but receipts say "
                    f"{by_escrow.get(eid, 0)} (expected {expected} with undelivered and lost charges)"
                )
            parts = (escrow["spent_micro"], escrow["held_micro"], escrow["remaining_micro"], escrow["refunded_micro"])
            if sum(parts) != escrow["amount_micro"] or min(parts) < 0:
                problems.append(f"escrow {eid}: amount {escrow['amount_micro']} != spent+held+remaining+refunded {parts}")
            if holds_closed and escrow["held_micro"] != 0:
                problems.append(f"escrow {eid} still holds {escrow['held_micro']} µUSDC")
            if self.per_call:
                settlements = [s for s in self.ledger.settlements(eid) if s["kind"] in ("capture", "deduct")]
                extra_settlements += max(0, len(settlements) - count_by_escrow.get(eid, 0))
                if len(settlements) < count_by_escrow.get(eid, 0):
                    problems.append(f"escrow {eid}: {count_by_escrow[eid]} receipts, {len(settlements)} settlements")
        unknown = set(by_escrow) - {e["id"] for e in escrows}
        if unknown:
            problems.append(f"receipts for escrows not on the ledger (or not this seller's): {sorted(unknown)}")
        if extra_settlements > uncertain:
            problems.append(f"{extra_settlements} settlements without a receipt (double or silent charges)")

        fees = sum(s["fee_micro"] for e in escrows for s in self.ledger.settlements(e["id"]))
        income = self.ledger.balance(self.seller_id) - self.ledger.minted_to(self.seller_id)
        income -= self.ledger.referral_income(self.seller_id)
        if income + fees != spent_total:
            problems.append(f"seller income {income} + fees {fees} != settled {spent_total}")

        for buyer_id in self.buyer_ids:
            theirs = [e for e in self.ledger.escrows() if e["buyer_id"] == buyer_id]
            locked = sum(e["amount_micro"] for e in theirs)
            refunded = sum(e["refunded_micro"] for e in theirs)
            minted = self.ledger.minted_to(buyer_id)
            if self.ledger.balance(buyer_id) != minted - locked + refunded:
                problems.append(
                    f"buyer {buyer_id}: balance {self.ledger.balance(buyer_id)} != minted {minted} - escrowed "
                    f"{locked} + refunded {refunded}"
                )
        try:
            self.ledger.check_invariants()
        except AssertionError as exc:
            problems.append(str(exc))
        self.reconciled = True
        if problems:
            raise AssertionError("reconciliation failed:\n  " + "\n  ".join(problems))
        return {
            "receipts": len(out.receipts),
            "refusals": len(out.refusals),
            "spent_micro": spent_total,
            "fees_micro": fees,
        }


def assert_none_served_late_in_outage(outcomes, *, down: float, outage_began: float, outage_ended: float,
                                      window: float) -> tuple[list, list]:
    """No call started more than ``window`` s into the outage got a result (each outcome: .started, .receipt).

    Returns the outcomes of the calls started during the outage, and of those started late in it."""
    during = [o for o in outcomes if down < o.started < outage_ended]
    late = [o for o in during if o.started > outage_began + window + 0.25]
    assert late, "no calls late in the outage"
    served_late = [o for o in late if o.receipt is not None]
    assert not served_late, f"{len(served_late)} of {len(late)} results handed out more than {window} s into the outage"
    return during, late
