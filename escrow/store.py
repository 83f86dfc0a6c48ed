"""The sandbox ledger on SQLite: agents, escrows, holds, settlements, an append-only transfer journal.

Every write is one `BEGIN IMMEDIATE` transaction that also stores its idempotency record. All access goes
through one connection guarded by a lock: SQLite serialises writers anyway, and a Python lock hands the
connection over far faster than SQLite's busy-wait backoff does under contention (see bench/bench_ledger.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from .amounts import MICRO_PER_USDC, usdc
from .clock import SystemClock
from .errors import ApiError, invalid_request, not_found
from .jsonio import dumps

ESCROW_ID = re.compile(r"esc_[A-Za-z0-9]{20,40}")
HOLD_ID = re.compile(r"hold_[A-Za-z0-9]{20,40}")
AGENT_ID = re.compile(r"agent_[A-Za-z0-9]{20,40}")

FEE_PERCENT = 1
REFERRAL_PERCENT_OF_FEE = 15
FAUCET_DEFAULT_MICRO = 10 * MICRO_PER_USDC
FAUCET_DAILY_MICRO = 100 * MICRO_PER_USDC
FAUCET_WINDOW_S = 86_400
IDEMPOTENCY_TTL_S = 86_400
ESCROW_TTL_MAX_S = 172_800
HOLD_TTL_DEFAULT_S = 60
PLATFORM = "platform:fees"
MINT = "mint"

_SCHEMA = (Path(__file__).with_name("schema.sql")).read_text()


def new_id(prefix: str) -> str:
    """A fresh ID: prefix + 24 random alphanumerics."""
    return prefix + secrets.token_hex(12)


def hash_key(api_key: str) -> str:
    """How an API key is stored: its sha256, never the key."""
    return hashlib.sha256(api_key.encode("utf-8", "surrogateescape")).hexdigest()


def iso(ts: float) -> str:
    """Epoch seconds as an ISO-8601 UTC time with milliseconds (floored), e.g. 2026-01-01T00:00:00.000Z."""
    import datetime as dt

    millis = math.floor(ts * 1000)
    moment = dt.datetime.fromtimestamp(millis // 1000, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis % 1000:03d}Z"


def _agent_account(agent_id: str) -> str:
    return f"agent:{agent_id}"


def _remaining_account(escrow_id: str) -> str:
    return f"escrow:{escrow_id}:remaining"


def _held_account(escrow_id: str) -> str:
    return f"escrow:{escrow_id}:held"


@dataclass
class Outcome:
    """One request's answer: status, exact JSON text and extra headers (what idempotency replays)."""

    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body parsed, numbers as Decimal and amounts (``*_usdc``, decimal strings on the wire) as Decimal."""
        return _amounts_as_decimal(json.loads(self.body, parse_float=Decimal))


def _amounts_as_decimal(value: Any) -> Any:
    """A parsed answer with each ``*_usdc`` string (its amounts) read as a Decimal, for in-process callers."""
    if isinstance(value, dict):
        return {
            key: Decimal(item) if key.endswith("_usdc") and isinstance(item, str) else _amounts_as_decimal(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_amounts_as_decimal(item) for item in value]
    return value


@dataclass(frozen=True)
class Idempotency:
    """A request's Idempotency-Key with what makes a replay legitimate: the same route and body."""

    key: str
    route: str
    fingerprint: str


@dataclass
class _Tx:
    conn: sqlite3.Connection
    now: float

    def one(self, sql: str, args: tuple = ()) -> dict | None:
        cur = self.conn.execute(sql, args)
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([c[0] for c in cur.description], row))

    def all(self, sql: str, args: tuple = ()) -> list[dict]:
        cur = self.conn.execute(sql, args)
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def run(self, sql: str, args: tuple = ()) -> int:
        return self.conn.execute(sql, args).rowcount


class Store:
    """The escrow ledger. Thread-safe; every public write is one transaction."""

    def __init__(self, db_path: str | Path, clock: Any = None) -> None:
        self.db_path = str(db_path)
        self.clock = clock or SystemClock()
        if self.db_path != ":memory:":
            Path(self.db_path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a killed process (the crash test); only an OS crash may lose the last commits.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=10000")
        with self._lock:
            self._conn.executescript(_SCHEMA)
            self._conn.execute("BEGIN IMMEDIATE")
            for name in (PLATFORM, MINT):
                if self._conn.execute("SELECT 1 FROM system_accounts WHERE name = ?", (name,)).fetchone() is None:
                    self._conn.execute("INSERT INTO system_accounts (name, balance_micro) VALUES (?, 0)", (name,))
            self._conn.execute("COMMIT")
        self._agents_by_key: dict[str, str] = {}  # key hash -> agent id; agents are never deleted
        self._referrer: dict[str, str | None] = {}
        self._closed = False

    def set_sql_trace(self, callback: Callable[[str], None] | None) -> None:
        """Call `callback(sql)` for every statement this store runs (None: stop); for tests and debugging."""
        with self._lock:
            self._conn.set_trace_callback(callback)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    # ------------------------------------------------------------------ transactions

    def _write(
        self,
        op: Callable[[_Tx, str | None], tuple[int, Any]],
        *,
        api_key: str | None = None,
        authenticated: bool = True,
        idempotency: Idempotency | None = None,
    ) -> Outcome:
        """Run `op(tx, agent_id)` in one BEGIN IMMEDIATE transaction with auth and idempotency around it."""
        with self._lock:
            if self._closed:
                raise ApiError(503, "unavailable", "The ledger is closed.")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                tx = _Tx(self._conn, self.clock.now())
                agent_id = self._authenticate(tx, api_key) if authenticated else None
                if idempotency is not None and agent_id is not None:
                    stored = self._idempotency_lookup(tx, agent_id, idempotency)
                    if stored is not None:
                        self._conn.execute("COMMIT")
                        return stored
                try:
                    status, body = op(tx, agent_id)
                    headers: dict[str, str] = {}
                except ApiError as refusal:
                    # Ops check everything before they move money, so the only effects before a refusal
                    # are lazy expiries, which are due regardless and are kept.
                    status, body, headers = refusal.status, refusal.body(), refusal.headers
                outcome = Outcome(status, dumps(body), headers)
                if idempotency is not None and agent_id is not None:
                    tx.run(
                        "INSERT INTO idempotency_keys (agent_id, idem_key, route, fingerprint, status_code,"
                        " response_body, retry_after, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            agent_id,
                            idempotency.key,
                            idempotency.route,
                            idempotency.fingerprint,
                            outcome.status,
                            outcome.body,
                            int(headers["Retry-After"]) if "Retry-After" in headers else None,
                            tx.now,
                        ),
                    )
                self._conn.execute("COMMIT")
                return outcome
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _authenticate(self, tx: _Tx, api_key: str | None) -> str:
        if not api_key:
            raise ApiError(401, "unauthorized", "A valid API key is required (Authorization: Bearer <key>).")
        digest = hash_key(api_key)
        agent_id = self._agents_by_key.get(digest)
        if agent_id is None:
            row = tx.one("SELECT id FROM agents WHERE key_hash = ?", (digest,))
            if row is None:
                raise ApiError(401, "unauthorized", "A valid API key is required (Authorization: Bearer <key>).")
            agent_id = row["id"]
            if len(self._agents_by_key) > 100_000:
                self._agents_by_key.clear()
            self._agents_by_key[digest] = agent_id
        return agent_id

    def cached_agent(self, api_key: str) -> str | None:
        """The agent of a key seen before, without touching the database (None: unknown or not yet seen)."""
        return self._agents_by_key.get(hash_key(api_key))

    def is_known_key(self, api_key: str) -> bool:
        """Whether the key belongs to a registered agent."""
        with self._lock:
            try:
                self._authenticate(_Tx(self._conn, 0.0), api_key)
                return True
            except ApiError:
                return False

    def _idempotency_lookup(self, tx: _Tx, agent_id: str, idem: Idempotency) -> Outcome | None:
        row = tx.one(
            "SELECT route, fingerprint, status_code, response_body, retry_after, created_at"
            " FROM idempotency_keys WHERE agent_id = ? AND idem_key = ?",
            (agent_id, idem.key),
        )
        if row is None:
            return None
        if row["created_at"] <= tx.now - IDEMPOTENCY_TTL_S:
            tx.run("DELETE FROM idempotency_keys WHERE agent_id = ? AND idem_key = ?", (agent_id, idem.key))
            return None
        if row["route"] != idem.route or row["fingerprint"] != idem.fingerprint:
            raise ApiError(
                422, "idempotency_key_reused", "This Idempotency-Key was already used with another route or body."
            )
        headers = {"Idempotency-Replayed": "true"}
        if row["retry_after"] is not None:
            headers["Retry-After"] = str(row["retry_after"])
        return Outcome(row["status_code"], row["response_body"], headers)

    # ------------------------------------------------------------------ money movements

    def _move(
        self, tx: _Tx, kind: str, source: str, target: str, micro: int, escrow_id: str | None = None,
        hold_id: str | None = None,
    ) -> None:
        """Journal one transfer and keep agent/system balances in step (escrow columns: the caller's UPDATE)."""
        if micro == 0:
            return
        if micro < 0:
            raise AssertionError(f"negative transfer {micro} {kind}")
        tx.run(
            "INSERT INTO transfers (kind, from_account, to_account, amount_micro, escrow_id, hold_id, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (kind, source, target, micro, escrow_id, hold_id, tx.now),
        )
        self._adjust(tx, source, -micro)
        self._adjust(tx, target, micro)

    @staticmethod
    def _adjust(tx: _Tx, account: str, delta: int) -> None:
        if account.startswith("agent:"):
            tx.run("UPDATE agents SET balance_micro = balance_micro + ? WHERE id = ?", (delta, account[6:]))
        elif account in (PLATFORM, MINT):
            tx.run("UPDATE system_accounts SET balance_micro = balance_micro + ? WHERE name = ?", (delta, account))
        # escrow:… accounts live in escrow columns, updated by the operation in the same transaction.

    def _referrer_of(self, tx: _Tx, agent_id: str) -> str | None:
        if agent_id not in self._referrer:
            row = tx.one("SELECT referred_by FROM agents WHERE id = ?", (agent_id,))
            self._referrer[agent_id] = row["referred_by"] if row else None
        return self._referrer[agent_id]

    def _settle(
        self, tx: _Tx, escrow: dict, gross: int, source: str, kind: str, hold_id: str | None = None,
        note: dict | None = None, settlement_prefix: str = "set_",
    ) -> tuple[str, int]:
        """Pay `gross` from an escrow account to its seller less the fee; returns (settlement id, fee)."""
        fee = gross * FEE_PERCENT // 100
        referrer = self._referrer_of(tx, escrow["seller_id"])
        referral = fee * REFERRAL_PERCENT_OF_FEE // 100 if referrer else 0
        escrow_id = escrow["id"]
        self._move(tx, kind, source, _agent_account(escrow["seller_id"]), gross - fee, escrow_id, hold_id)
        self._move(tx, kind + "_fee", source, PLATFORM, fee - referral, escrow_id, hold_id)
        if referrer:
            self._move(tx, kind + "_referral", source, _agent_account(referrer), referral, escrow_id, hold_id)
        settlement_id = new_id(settlement_prefix)
        tx.run(
            "INSERT INTO settlements (id, escrow_id, hold_id, kind, gross_micro, fee_micro, referral_micro, note_json,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (settlement_id, escrow_id, hold_id, kind, gross, fee, referral, dumps(note) if note else None, tx.now),
        )
        return settlement_id, fee

    # ------------------------------------------------------------------ expiry

    def _close_open_holds(self, tx: _Tx, escrow: dict, status: str, only_due: bool) -> int:
        """Close open holds, returning what they still hold (see _return_held); returns the micro-USDC freed."""
        if escrow["held_micro"] == 0 and only_due and escrow["status"] == "active":
            return 0  # the hot path's shortcut (a released escrow's fully captured holds must still close)
        sql = "SELECT id, amount_micro, captured_micro FROM holds WHERE escrow_id = ? AND status = 'open'"
        args: tuple = (escrow["id"],)
        if only_due:
            sql += " AND expires_at <= ?"
            args += (tx.now,)
        released = 0
        for hold in tx.all(sql, args):
            outstanding = hold["amount_micro"] - hold["captured_micro"]
            self._return_held(tx, escrow, hold["id"], outstanding, "hold_" + status)
            tx.run("UPDATE holds SET status = ?, closed_at = ? WHERE id = ?", (status, tx.now, hold["id"]))
            released += outstanding
        if released:
            self._write_escrow_parts(tx, escrow)
        return released

    def _return_held(self, tx: _Tx, escrow: dict, hold_id: str, micro: int, kind: str) -> None:
        """What a closing hold did not capture: back to `remaining` on an active escrow; on a released escrow
        (its holds outlive the release) to the buyer as a refund. Updates `escrow` in memory only."""
        escrow_id = escrow["id"]
        if escrow["status"] == "active":
            self._move(tx, kind, _held_account(escrow_id), _remaining_account(escrow_id), micro, escrow_id, hold_id)
            escrow["remaining_micro"] += micro
        elif escrow["status"] == "released":
            self._move(tx, "refund", _held_account(escrow_id), _agent_account(escrow["buyer_id"]), micro, escrow_id,
                       hold_id)
            escrow["refunded_micro"] += micro
        else:  # expired/refunded escrows close their holds as they close
            raise AssertionError(f"an open hold on a {escrow['status']} escrow")
        escrow["held_micro"] -= micro

    @staticmethod
    def _write_escrow_parts(tx: _Tx, escrow: dict) -> None:
        tx.run(
            "UPDATE escrows SET held_micro = ?, remaining_micro = ?, refunded_micro = ? WHERE id = ?",
            (escrow["held_micro"], escrow["remaining_micro"], escrow["refunded_micro"], escrow["id"]),
        )

    def _refund_and_close(self, tx: _Tx, escrow: dict, status: str) -> int:
        """Refund what remains to the buyer and close the escrow with `status`; returns the refund."""
        refund = escrow["remaining_micro"]
        self._move(tx, "refund", _remaining_account(escrow["id"]), _agent_account(escrow["buyer_id"]), refund,
                   escrow["id"])
        escrow["remaining_micro"] = 0
        escrow["refunded_micro"] += refund
        escrow["status"] = status
        escrow["closed_at"] = tx.now
        tx.run(
            "UPDATE escrows SET remaining_micro = 0, refunded_micro = ?, status = ?, closed_at = ? WHERE id = ?",
            (escrow["refunded_micro"], status, tx.now, escrow["id"]),
        )
        return refund

    def _apply_expiry(self, tx: _Tx, escrow: dict) -> dict:
        """Lazily apply what time has already decided: expired holds, an expired escrow."""
        if escrow["status"] == "released":
            # Holds that outlived the release (their TTL never passes the escrow's expiry): refund their rest.
            self._close_open_holds(tx, escrow, "expired", only_due=True)
            return escrow
        if escrow["status"] != "active":
            return escrow
        if tx.now >= escrow["expires_at"]:
            self._close_open_holds(tx, escrow, "expired", only_due=False)
            self._refund_and_close(tx, escrow, "expired")
        else:
            self._close_open_holds(tx, escrow, "expired", only_due=True)
        return escrow

    def _load_escrow(self, tx: _Tx, escrow_id: str, agent_id: str, role: str | None) -> dict:
        """The escrow as seen by a party: 404 to non-parties, 403 to the wrong party, expiry applied."""
        if not ESCROW_ID.fullmatch(escrow_id):
            raise not_found("No such escrow.")
        escrow = tx.one("SELECT * FROM escrows WHERE id = ?", (escrow_id,))
        if escrow is None or agent_id not in (escrow["buyer_id"], escrow["seller_id"]):
            raise not_found("No such escrow.")
        self._apply_expiry(tx, escrow)
        if role is not None and escrow[f"{role}_id"] != agent_id:
            raise ApiError(403, "forbidden", f"Only this escrow's {role} may make this call.")
        return escrow

    @staticmethod
    def _require_active(escrow: dict) -> None:
        if escrow["status"] != "active":
            raise ApiError(410, "escrow_closed", f"This escrow is {escrow['status']}.")

    # ------------------------------------------------------------------ rendering

    @staticmethod
    def _escrow_json(escrow: dict) -> dict:
        return {
            "id": escrow["id"],
            "buyer_id": escrow["buyer_id"],
            "seller_id": escrow["seller_id"],
            "status": escrow["status"],
            "amount_usdc": usdc(escrow["amount_micro"]),
            "spent_usdc": usdc(escrow["spent_micro"]),
            "held_usdc": usdc(escrow["held_micro"]),
            "remaining_usdc": usdc(escrow["remaining_micro"]),
            "refunded_usdc": usdc(escrow["refunded_micro"]),
            "created_at": iso(escrow["created_at"]),
            "expires_at": iso(escrow["expires_at"]),
            "description": escrow["description"],
            "meta": json.loads(escrow["meta_json"], parse_float=Decimal, parse_int=Decimal),
            "release_condition": (
                json.loads(escrow["release_condition_json"], parse_float=Decimal, parse_int=Decimal)
                if escrow["release_condition_json"]
                else None
            ),
        }

    # ------------------------------------------------------------------ sandbox calls

    def register(self, name: str | None = None, referred_by: str | None = None) -> Outcome:
        """POST /agents: a new agent with a fresh key; `referred_by` is a referral code."""

        def op(tx: _Tx, _: str | None) -> tuple[int, Any]:
            referrer_id = None
            if referred_by is not None:
                row = tx.one("SELECT id FROM agents WHERE referral_code = ?", (referred_by,))
                if row is None:
                    raise invalid_request("referred_by is not a known referral code.")
                referrer_id = row["id"]
            agent_id = new_id("agent_")
            api_key = "pf_test_" + secrets.token_hex(24)
            referral_code = "ref" + secrets.token_hex(8)
            tx.run(
                "INSERT INTO agents (id, name, key_hash, referral_code, referred_by, balance_micro, created_at)"
                " VALUES (?, ?, ?, ?, ?, 0, ?)",
                (agent_id, name or "", hash_key(api_key), referral_code, referrer_id, tx.now),
            )
            return 201, {"agent_id": agent_id, "api_key": api_key, "referral_code": referral_code}

        return self._write(op, authenticated=False)

    def register_agent(self, name: str | None = None, referred_by: str | None = None) -> dict:
        """Register an agent in-process; returns {agent_id, api_key, referral_code}."""
        outcome = self.register(name, referred_by)
        if outcome.status != 201:
            raise ValueError(outcome.body)
        return json.loads(outcome.body)

    def agent_exists(self, agent_id: str) -> bool:
        """Whether an agent with this ID is registered."""
        with self._lock:
            return self._conn.execute("SELECT 1 FROM agents WHERE id = ?", (agent_id,)).fetchone() is not None

    def faucet(self, api_key: str | None, amount_micro: int | None, idempotency: Idempotency | None = None) -> Outcome:
        """POST /faucet: mint test USDC to the caller, at most 100 USDC per rolling 24 h."""
        amount = FAUCET_DEFAULT_MICRO if amount_micro is None else amount_micro

        def op(tx: _Tx, agent_id: str | None) -> tuple[int, Any]:
            account = _agent_account(agent_id)
            grants = tx.all(
                "SELECT amount_micro, created_at FROM transfers WHERE to_account = ? AND kind = 'faucet'"
                " AND created_at > ? ORDER BY created_at",
                (account, tx.now - FAUCET_WINDOW_S),
            )
            used = sum(g["amount_micro"] for g in grants)
            if used + amount > FAUCET_DAILY_MICRO:
                # Wait until enough of the oldest grants leave the rolling window.
                freed, wait_until = 0, tx.now
                for grant in grants:
                    freed += grant["amount_micro"]
                    wait_until = grant["created_at"] + FAUCET_WINDOW_S
                    if used - freed + amount <= FAUCET_DAILY_MICRO:
                        break
                retry_after = max(1, math.ceil(wait_until - tx.now))
                raise ApiError(
                    429, "rate_limited", "The faucet gives at most 100 USDC per agent per 24 hours.",
                    {"Retry-After": str(retry_after)},
                )
            self._move(tx, "faucet", MINT, account, amount)
            balance = tx.one("SELECT balance_micro FROM agents WHERE id = ?", (agent_id,))["balance_micro"]
            return 200, {"agent_id": agent_id, "credited_usdc": usdc(amount), "balance_usdc": usdc(balance)}

        return self._write(op, api_key=api_key, idempotency=idempotency)

    def grant(self, agent_id: str, amount_micro: int) -> None:
        """Admin grant: mint `amount_micro` to an agent with no daily cap (tests, benchmarks)."""

        def op(tx: _Tx, _: str | None) -> tuple[int, Any]:
            if not self.agent_exists_tx(tx, agent_id):
                raise not_found("No such agent.")
            self._move(tx, "grant", MINT, _agent_account(agent_id), amount_micro)
            return 200, {}

        outcome = self._write(op, authenticated=False)
        if outcome.status != 200:
            raise ValueError(outcome.body)

    @staticmethod
    def agent_exists_tx(tx: _Tx, agent_id: str) -> bool:
        return tx.one("SELECT 1 AS x FROM agents WHERE id = ?", (agent_id,)) is not None

    # ------------------------------------------------------------------ contract calls

    def me(self, api_key: str | None) -> Outcome:
        """GET /me: balance and open escrows, after applying the caller's pending expiries."""

        def op(tx: _Tx, agent_id: str | None) -> tuple[int, Any]:
            for escrow in tx.all(
                "SELECT * FROM escrows WHERE (buyer_id = ? OR seller_id = ?) AND"
                " ((status = 'active' AND expires_at <= ?) OR (status = 'released' AND EXISTS (SELECT 1 FROM holds"
                " WHERE holds.escrow_id = escrows.id AND holds.status = 'open' AND holds.expires_at <= ?)))",
                (agent_id, agent_id, tx.now, tx.now),
            ):
                self._apply_expiry(tx, escrow)
            agent = tx.one("SELECT balance_micro, referral_code FROM agents WHERE id = ?", (agent_id,))
            open_count = tx.one(
                "SELECT COUNT(*) AS n FROM escrows WHERE status = 'active' AND (buyer_id = ? OR seller_id = ?)",
                (agent_id, agent_id),
            )["n"]
            return 200, {
                "agent_id": agent_id,
                "balance_usdc": usdc(agent["balance_micro"]),
                "referral_code": agent["referral_code"],
                "escrows_open": open_count,
            }

        return self._write(op, api_key=api_key)

    def create_escrow(
        self, api_key: str | None, *, seller_id: str, amount_micro: int, ttl_seconds: int, description: str,
        meta: dict, release_condition: dict | None, idempotency: Idempotency | None = None,
    ) -> Outcome:
        """POST /escrow: lock `amount` of the buyer's balance for `seller_id`."""

        def op(tx: _Tx, buyer_id: str | None) -> tuple[int, Any]:
            if not AGENT_ID.fullmatch(seller_id) or not self.agent_exists_tx(tx, seller_id):
                raise not_found("No such seller.")
            if seller_id == buyer_id:
                raise invalid_request("An agent cannot open an escrow with itself as the seller.")
            balance = tx.one("SELECT balance_micro FROM agents WHERE id = ?", (buyer_id,))["balance_micro"]
            if balance < amount_micro:
                raise ApiError(409, "insufficient_funds", "Your balance is below the escrow amount.")
            escrow = {
                "id": new_id("esc_"), "buyer_id": buyer_id, "seller_id": seller_id, "status": "active",
                "amount_micro": amount_micro, "spent_micro": 0, "held_micro": 0, "remaining_micro": amount_micro,
                "refunded_micro": 0, "created_at": tx.now, "expires_at": tx.now + ttl_seconds, "closed_at": None,
                "description": description, "meta_json": dumps(meta),
                "release_condition_json": dumps(release_condition) if release_condition is not None else None,
            }
            tx.run(
                "INSERT INTO escrows (" + ", ".join(escrow) + ") VALUES (" + ", ".join("?" * len(escrow)) + ")",
                tuple(escrow.values()),
            )
            self._move(tx, "fund", _agent_account(buyer_id), _remaining_account(escrow["id"]), amount_micro,
                       escrow["id"])
            return 201, self._escrow_json(escrow)

        return self._write(op, api_key=api_key, idempotency=idempotency)

    def get_escrow(self, api_key: str | None, escrow_id: str) -> Outcome:
        """GET /escrow/{id}: the escrow object, to its buyer or seller only."""

        def op(tx: _Tx, agent_id: str | None) -> tuple[int, Any]:
            return 200, self._escrow_json(self._load_escrow(tx, escrow_id, agent_id, None))

        return self._write(op, api_key=api_key)

    def create_hold(
        self, api_key: str | None, escrow_id: str, *, amount_micro: int, ttl_seconds: int,
        idempotency: Idempotency | None = None,
    ) -> Outcome:
        """POST /escrow/{id}/holds: reserve `amount` of what remains, until min(now + ttl, escrow expiry)."""

        def op(tx: _Tx, agent_id: str | None) -> tuple[int, Any]:
            escrow = self._load_escrow(tx, escrow_id, agent_id, "seller")
            self._require_active(escrow)
            if amount_micro > escrow["remaining_micro"]:
                raise ApiError(409, "insufficient_funds", "The escrow's remaining amount is below the hold.")
            hold_id = new_id("hold_")
            expires_at = min(tx.now + ttl_seconds, escrow["expires_at"])
            tx.run(
                "INSERT INTO holds (id, escrow_id, status, amount_micro, captured_micro, created_at, expires_at)"
                " VALUES (?, ?, 'open', ?, 0, ?, ?)",
                (hold_id, escrow_id, amount_micro, tx.now, expires_at),
            )
            self._move(tx, "hold", _remaining_account(escrow_id), _held_account(escrow_id), amount_micro,
                       escrow_id, hold_id)
            remaining = escrow["remaining_micro"] - amount_micro
            tx.run(
                "UPDATE escrows SET held_micro = held_micro + ?, remaining_micro = ? WHERE id = ?",
                (amount_micro, remaining, escrow_id),
            )
            return 201, {
                "hold_id": hold_id,
                "escrow_id": escrow_id,
                "amount_usdc": usdc(amount_micro),
                "captured_usdc": usdc(0),
                "held_usdc": usdc(amount_micro),
                "expires_at": iso(expires_at),
                "remaining_usdc": usdc(remaining),
                "status": "open",
            }

        return self._write(op, api_key=api_key, idempotency=idempotency)

    def capture(
        self, api_key: str | None, escrow_id: str, hold_id: str, *, amount_micro: int, final: bool,
        idempotency: Idempotency | None = None,
    ) -> Outcome:
        """POST …/holds/{hold_id}/capture (and /void as a final capture of 0)."""

        def op(tx: _Tx, agent_id: str | None) -> tuple[int, Any]:
            escrow = self._load_escrow(tx, escrow_id, agent_id, "seller")
            hold = None
            if HOLD_ID.fullmatch(hold_id):
                hold = tx.one("SELECT * FROM holds WHERE id = ? AND escrow_id = ?", (hold_id, escrow_id))
            if not (escrow["status"] == "released" and hold is not None and hold["status"] == "open"):
                # A release leaves open holds capturable until they close; everything else on a closed escrow is 410.
                self._require_active(escrow)
            if hold is None:
                raise not_found("No such hold.")
            if hold["status"] != "open":
                raise ApiError(409, "hold_closed", f"This hold is already closed ({hold['status']}).")
            if hold["expires_at"] <= tx.now:  # fully captured, so the lazy expiry skipped it (nothing held)
                raise ApiError(409, "hold_closed", "This hold is already closed (expired).")
            outstanding = hold["amount_micro"] - hold["captured_micro"]
            if amount_micro > outstanding:
                raise ApiError(409, "exceeds_hold", "The capture is larger than what the hold still holds.")
            fee = 0
            if amount_micro:
                _, fee = self._settle(tx, escrow, amount_micro, _held_account(escrow_id), "capture", hold_id)
            captured = hold["captured_micro"] + amount_micro
            still_held = outstanding - amount_micro
            escrow["spent_micro"] += amount_micro
            escrow["held_micro"] -= amount_micro
            status = "open"
            if final:
                self._return_held(tx, escrow, hold_id, still_held, "hold_release")
                still_held = 0
                status = "closed"
            remaining = escrow["remaining_micro"]
            tx.run(
                "UPDATE holds SET captured_micro = ?, status = ?, closed_at = ? WHERE id = ?",
                (captured, "open" if not final else ("captured" if captured else "voided"),
                 tx.now if final else None, hold_id),
            )
            tx.run(
                "UPDATE escrows SET spent_micro = ?, held_micro = ?, remaining_micro = ?, refunded_micro = ?"
                " WHERE id = ?",
                (escrow["spent_micro"], escrow["held_micro"], remaining, escrow["refunded_micro"], escrow_id),
            )
            return 200, {
                "hold_id": hold_id,
                "amount_usdc": usdc(amount_micro),
                "captured_usdc": usdc(captured),
                "held_usdc": usdc(still_held),
                "fee_usdc": usdc(fee),
                "remaining_usdc": usdc(remaining),
                "status": status,
            }

        return self._write(op, api_key=api_key, idempotency=idempotency)

    def deduct(
        self, api_key: str | None, escrow_id: str, *, amount_micro: int, reason: str | None,
        idempotency: Idempotency | None = None,
    ) -> Outcome:
        """POST /escrow/{id}/deduct: settle `amount` of what remains to the seller in one step."""

        def op(tx: _Tx, agent_id: str | None) -> tuple[int, Any]:
            escrow = self._load_escrow(tx, escrow_id, agent_id, "seller")
            self._require_active(escrow)
            if amount_micro > escrow["remaining_micro"]:
                raise ApiError(409, "insufficient_funds", "The escrow's remaining amount is below the deduct.")
            deduction_id, fee = self._settle(
                tx, escrow, amount_micro, _remaining_account(escrow_id), "deduct",
                note={"reason": reason} if reason else None, settlement_prefix="ded_",
            )
            remaining = escrow["remaining_micro"] - amount_micro
            tx.run(
                "UPDATE escrows SET spent_micro = spent_micro + ?, remaining_micro = ? WHERE id = ?",
                (amount_micro, remaining, escrow_id),
            )
            return 200, {
                "deduction_id": deduction_id,
                "amount_usdc": usdc(amount_micro),
                "fee_usdc": usdc(fee),
                "remaining_usdc": usdc(remaining),
                "status": escrow["status"],
            }

        return self._write(op, api_key=api_key, idempotency=idempotency)

    def release(
        self, api_key: str | None, escrow_id: str, *, amount_micro: int, refund_remainder: bool, meta: dict | None,
        idempotency: Idempotency | None = None,
    ) -> Outcome:
        """POST /escrow/{id}/release: the buyer settles `amount`; with refund_remainder also closes the escrow."""

        def op(tx: _Tx, agent_id: str | None) -> tuple[int, Any]:
            escrow = self._load_escrow(tx, escrow_id, agent_id, "buyer")
            self._require_active(escrow)
            # Open holds are the seller's (like card authorisations): a release never voids them, with or
            # without refund_remainder. They stay capturable; what they do not capture is refunded later.
            if amount_micro > escrow["remaining_micro"]:
                raise ApiError(409, "insufficient_funds", "The escrow's remaining amount is below the release.")
            fee = 0
            if amount_micro:
                _, fee = self._settle(tx, escrow, amount_micro, _remaining_account(escrow_id), "release",
                                      note={"meta": meta} if meta else None)
                escrow["spent_micro"] += amount_micro
                escrow["remaining_micro"] -= amount_micro
                tx.run(
                    "UPDATE escrows SET spent_micro = ?, remaining_micro = ? WHERE id = ?",
                    (escrow["spent_micro"], escrow["remaining_micro"], escrow_id),
                )
            if refund_remainder:
                self._refund_and_close(tx, escrow, "released")
            body = self._escrow_json(escrow)
            body["payout_usdc"] = usdc(amount_micro)
            body["fee_usdc"] = usdc(fee)
            return 200, body

        return self._write(op, api_key=api_key, idempotency=idempotency)

    def submit_result(
        self, api_key: str | None, escrow_id: str, *, metric: str, score: Decimal, model_repo: str | None,
        idempotency: Idempotency | None = None,
    ) -> Outcome:
        """POST /escrow/{id}/submit-result: pay out everything when the benchmark condition is met."""

        def op(tx: _Tx, agent_id: str | None) -> tuple[int, Any]:
            escrow = self._load_escrow(tx, escrow_id, agent_id, "seller")
            self._require_active(escrow)
            if not escrow["release_condition_json"]:
                raise invalid_request("This escrow has no release condition.")
            condition = json.loads(escrow["release_condition_json"], parse_float=Decimal, parse_int=Decimal)
            if condition["metric"] != metric:
                raise invalid_request(f"This escrow's release condition is on metric {condition['metric']!r}.")
            threshold = condition["threshold"]
            met = score >= threshold if condition.get("higher_is_better", True) else score <= threshold
            tx.run(
                "INSERT INTO results (escrow_id, metric, score, model_repo, met, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (escrow_id, metric, str(score), model_repo, 1 if met else 0, tx.now),
            )
            if not met:
                return 200, {"status": "active", "payout_usdc": usdc(0), "fee_usdc": usdc(0)}
            self._close_open_holds(tx, escrow, "voided", only_due=False)
            payout = escrow["remaining_micro"]
            fee = 0
            if payout:
                _, fee = self._settle(tx, escrow, payout, _remaining_account(escrow_id), "benchmark",
                                      note={"metric": metric, "score": score, "model_repo": model_repo})
            tx.run(
                "UPDATE escrows SET spent_micro = spent_micro + ?, remaining_micro = 0, status = 'released',"
                " closed_at = ? WHERE id = ?",
                (payout, tx.now, escrow_id),
            )
            return 200, {"status": "released", "payout_usdc": usdc(payout), "fee_usdc": usdc(fee)}

        return self._write(op, api_key=api_key, idempotency=idempotency)

    # ------------------------------------------------------------------ background work and checks

    def sweep(self, batch: int = 500) -> int:
        """Expire due escrows and holds, forget idempotency records older than 24 h; returns how many expired."""

        def op(tx: _Tx, _: str | None) -> tuple[int, Any]:
            count = 0
            for escrow in tx.all(
                "SELECT * FROM escrows WHERE status = 'active' AND expires_at <= ? ORDER BY expires_at LIMIT ?",
                (tx.now, batch),
            ):
                self._apply_expiry(tx, escrow)
                count += 1
            # A fully captured hold holds nothing, so the escrow pass skips it on an active escrow with nothing
            # held; close it here (no money moves) or every sweep would pick its escrow again until it expires.
            tx.run(
                "UPDATE holds SET status = 'expired', closed_at = ? WHERE status = 'open' AND expires_at <= ?"
                " AND captured_micro = amount_micro",
                (tx.now, tx.now),
            )
            due_escrows = tx.all(
                "SELECT DISTINCT escrow_id FROM holds WHERE status = 'open' AND expires_at <= ? LIMIT ?",
                (tx.now, batch),
            )
            for row in due_escrows:
                escrow = tx.one("SELECT * FROM escrows WHERE id = ?", (row["escrow_id"],))
                self._apply_expiry(tx, escrow)
                count += 1
            tx.run("DELETE FROM idempotency_keys WHERE created_at <= ?", (tx.now - IDEMPOTENCY_TTL_S,))
            return 200, {"expired": count}

        return json.loads(self._write(op, authenticated=False).body)["expired"]

    def totals(self) -> dict[str, int]:
        """Ledger totals in micro-USDC: minted, agents, held, remaining, platform fees."""
        with self._lock:
            tx = _Tx(self._conn, self.clock.now())
            escrows = tx.one(
                "SELECT COALESCE(SUM(held_micro), 0) AS held, COALESCE(SUM(remaining_micro), 0) AS remaining"
                " FROM escrows"
            )
            return {
                "minted": -tx.one("SELECT balance_micro FROM system_accounts WHERE name = ?", (MINT,))["balance_micro"],
                "agents": tx.one("SELECT COALESCE(SUM(balance_micro), 0) AS s FROM agents")["s"],
                "held": escrows["held"],
                "remaining": escrows["remaining"],
                "platform": tx.one("SELECT balance_micro FROM system_accounts WHERE name = ?", (PLATFORM,))[
                    "balance_micro"
                ],
            }

    def balance_micro(self, agent_id: str) -> int:
        """An agent's balance in micro-USDC."""
        with self._lock:
            row = self._conn.execute("SELECT balance_micro FROM agents WHERE id = ?", (agent_id,)).fetchone()
            if row is None:
                raise KeyError(agent_id)
            return row[0]

    def check_invariants(self) -> None:
        """Raise AssertionError listing every broken ledger rule (conservation, per-escrow sums, journal)."""
        problems: list[str] = []
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                tx = _Tx(self._conn, self.clock.now())
                totals = self.totals()
                if totals["agents"] + totals["held"] + totals["remaining"] + totals["platform"] != totals["minted"]:
                    problems.append(f"conservation broken: {totals}")
                if totals["platform"] < 0:
                    problems.append(f"platform fee account negative: {totals['platform']}")
                for row in tx.all("SELECT id, balance_micro FROM agents WHERE balance_micro < 0"):
                    problems.append(f"agent {row['id']} balance negative: {row['balance_micro']}")
                journal: dict[str, int] = {}
                for row in tx.all("SELECT to_account AS a, SUM(amount_micro) AS s FROM transfers GROUP BY to_account"):
                    journal[row["a"]] = journal.get(row["a"], 0) + row["s"]
                for row in tx.all(
                    "SELECT from_account AS a, SUM(amount_micro) AS s FROM transfers GROUP BY from_account"
                ):
                    journal[row["a"]] = journal.get(row["a"], 0) - row["s"]
                for row in tx.all("SELECT id, balance_micro FROM agents"):
                    if journal.get(_agent_account(row["id"]), 0) != row["balance_micro"]:
                        problems.append(f"agent {row['id']} balance {row['balance_micro']} != journal")
                for row in tx.all("SELECT name, balance_micro FROM system_accounts"):
                    if journal.get(row["name"], 0) != row["balance_micro"]:
                        problems.append(f"{row['name']} balance {row['balance_micro']} != journal")
                open_held = {
                    row["escrow_id"]: row["s"]
                    for row in tx.all(
                        "SELECT escrow_id, SUM(amount_micro - captured_micro) AS s FROM holds WHERE status = 'open'"
                        " GROUP BY escrow_id"
                    )
                }
                settled = {
                    row["escrow_id"]: row["s"]
                    for row in tx.all("SELECT escrow_id, SUM(gross_micro) AS s FROM settlements GROUP BY escrow_id")
                }
                refunded = {
                    row["escrow_id"]: row["s"]
                    for row in tx.all(
                        "SELECT escrow_id, SUM(amount_micro) AS s FROM transfers WHERE kind = 'refund'"
                        " GROUP BY escrow_id"
                    )
                }
                for e in tx.all("SELECT * FROM escrows"):
                    eid = e["id"]
                    parts = (e["spent_micro"], e["held_micro"], e["remaining_micro"], e["refunded_micro"])
                    if min(parts) < 0:
                        problems.append(f"escrow {eid} has a negative part: {parts}")
                    if sum(parts) != e["amount_micro"]:
                        problems.append(f"escrow {eid}: amount {e['amount_micro']} != spent+held+remaining+refunded {parts}")
                    if e["held_micro"] != open_held.get(eid, 0):
                        problems.append(f"escrow {eid}: held {e['held_micro']} != open holds {open_held.get(eid, 0)}")
                    if e["spent_micro"] != settled.get(eid, 0):
                        problems.append(f"escrow {eid}: spent {e['spent_micro']} != settlements {settled.get(eid, 0)}")
                    if e["refunded_micro"] != refunded.get(eid, 0):
                        problems.append(f"escrow {eid}: refunded {e['refunded_micro']} != journal")
                    if journal.get(_remaining_account(eid), 0) != e["remaining_micro"]:
                        problems.append(f"escrow {eid}: remaining {e['remaining_micro']} != journal")
                    if journal.get(_held_account(eid), 0) != e["held_micro"]:
                        problems.append(f"escrow {eid}: held {e['held_micro']} != journal")
                    if e["status"] != "active" and e["remaining_micro"]:
                        problems.append(f"escrow {eid} is {e['status']} but still has money remaining")
                    if e["status"] not in ("active", "released") and e["held_micro"]:
                        problems.append(f"escrow {eid} is {e['status']} but still has money held")
                    if e["status"] not in ("active", "released", "refunded", "expired"):
                        problems.append(f"escrow {eid} has unknown status {e['status']}")
                for h in tx.all(
                    "SELECT holds.id, escrows.status FROM holds JOIN escrows ON escrows.id = holds.escrow_id"
                    " WHERE holds.status = 'open' AND escrows.status NOT IN ('active', 'released')"
                ):
                    problems.append(f"hold {h['id']} is open on a {h['status']} escrow")
                for h in tx.all("SELECT * FROM holds WHERE captured_micro < 0 OR captured_micro > amount_micro"):
                    problems.append(f"hold {h['id']} captured {h['captured_micro']} outside 0..{h['amount_micro']}")
            finally:
                self._conn.execute("COMMIT")
        if problems:
            raise AssertionError("ledger invariants broken:\n" + "\n".join(problems))
