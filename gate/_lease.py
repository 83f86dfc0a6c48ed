"""Lease settlement: one hold serves many calls; what was used is captured in batches.

Per escrow this Space keeps one open hold, the *lease*, of
``min(lease size, what remains on the escrow)``; the lease size is
``Lease.calls`` × the maximum price of the call that opens it, capped by
``Lease.max_usdc`` (never below that call's maximum). A call reserves its
maximum from the lease locally, under one lock, with no network call. When it
succeeds its actual price becomes a local *charge*: first one committed insert
in the journal (its own charge ID ``chg_…``, the hold ID, the amount), then the
in-memory totals; then the result is returned. A failed call's reservation
simply returns to the lease. Locally reserved + charged never exceeds the hold.

A background flusher captures what was charged with one partial capture
(``final: false``) every ``capture_interval_s`` or as soon as the lease's
unreserved part drops under ``low_water`` (then it also opens the next lease
ahead of need, so calls rarely wait for a hold). It closes a lease (final
capture of what is still owed, the rest returned to the escrow) when it is
exhausted, unused for ``idle_s``, near its hold's expiry, or at ``close()``.
When the lease cannot cover a call, the call opens a new hold: one opener per
escrow at a time, the others wait for it; no lock is held across HTTP. If the
escrow cannot fund a whole lease, the opener reads what remains (GET) and holds
that if it covers the call, else the call is refused, not charged.

Timing per lease (hold TTL ``hold_ttl_s``, capped by the escrow's expiry):
calls reserve on it during its first 75 % of life, charge on it locally until
90 %, and the flusher closes it then. A call that finishes later (a very long
call) is charged on its own fresh hold, captured at once, before its result is
returned; if that fails the result is withheld and nothing is charged.

Journal (``gate/_journal.py``): an outbox. Before a capture is sent, its intent
(hold, amount, Idempotency-Key, final) is committed, and it is marked done
after the service's answer. On start, a gate given the same journal path
replays: it re-sends pending intents with their SAME keys (the service replays
its answer instead of applying them twice), then closes every hold that the
journal still has open with a final capture of what was charged on it and not
captured. Each step is journaled before it is sent, so a crash during replay
is replayed again, still exactly once. One journal file per process: do not
share it between replicas running at the same time.

Exposure (what a crash can cost the seller, then the buyer):
- without a journal path (the default) the journal is in memory: a crash loses
  the charges not yet captured, at most one lease per escrow (its size) plus
  what a failed capture left pending; the holds expire back to the buyer.
- with a journal path, only the charges on holds that expired (or whose escrow
  closed) before the restart replayed them; a restart within the hold TTL loses
  nothing. ``synchronous='NORMAL'`` (default) survives a process crash but not a
  power loss; ``'FULL'`` survives both and costs an fsync per charge.
Either way every capture is exactly the sum of journaled charges, and a charge
is journaled only for a call whose result is ready (a failed call is never
charged). The charge is journaled before the result is sent, so a crash between
the two leaves a charge for a result that never reached its caller, captured on
replay like any other: at most one per call in flight at the crash
(``tests/reliability/test_space_crash.py``).

Receipts: ``settlement = "lease"``, ``charge_id = "chg_…"`` (the journal maps it
to its hold). ``remaining_usdc`` is the escrow's remaining as seen by this
Space: the ``remaining_usdc`` of the service's latest answer plus the unused,
unreserved part of this Space's own leases on the escrow. It excludes what
other replicas hold and what concurrent calls have reserved (so it is a lower
bound when those succeed); for one Space calling sequentially it is exactly
what the escrow will have left once the leases are closed.

Several replicas on one escrow each hold their own leases; the service's
atomic holds keep their sum within the escrow, nothing else is shared.
"""

from __future__ import annotations

import logging
import secrets
import string
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from ._journal import CaptureIntent, Journal
from ._settlement import _HOLD_ID, EscrowView, PerCallSettlement, Receipt, Reservation, Settlement
from .client import EscrowClient, new_idempotency_key
from .errors import (
    NOT_CHARGED,
    EscrowApiError,
    GateError,
    InsufficientFunds,
    ServiceUnavailable,
    SettlementFailed,
)
from .money import MICRO_USDC, format_usdc, parse_usdc, round_up, to_decimal

__all__ = ["Lease", "LeaseSettlement"]

log = logging.getLogger("gate")

_ALPHANUMERICS = string.ascii_letters + string.digits
_OPEN, _RETIRING, _CLOSING = "open", "retiring", "closing"
_RESERVE_FRACTION, _SETTLE_FRACTION = 0.75, 0.90


def new_charge_id() -> str:
    return "chg_" + "".join(secrets.choice(_ALPHANUMERICS) for _ in range(24))


def _micro(amount: Decimal) -> int:
    return int(round_up(amount).scaleb(6))


def _usdc(micro: int) -> Decimal:
    return (Decimal(micro) * MICRO_USDC).quantize(MICRO_USDC)


@dataclass(frozen=True)
class Lease:
    """Lease settlement options (``EscrowGate(settlement=Lease(...))``; ``"lease"`` = ``Lease()``).

    calls: a lease holds this many times the maximum price of the call that opens it.
    max_usdc: optional cap on one lease in USDC (the exposure per escrow); never below one call.
    capture_interval_s: what was charged is captured at least this often (wall-clock seconds).
    low_water: fraction of the lease; below it the used part is captured and the next lease opened early.
    idle_s: an unused lease is captured and its rest voided after this many seconds.
    hold_ttl_s: the hold's TTL on the service (capped there by the escrow's expiry).
    journal: SQLite file for the durable journal; None keeps it in memory (see the module docstring
        for what a crash then loses). Use one file per process.
    synchronous: SQLite ``synchronous`` for the journal: "NORMAL" (process-crash safe) or "FULL".
    """

    calls: int = 50
    max_usdc: Decimal | str | int | None = None
    capture_interval_s: float = 2.0
    low_water: float = 0.25
    idle_s: float = 30.0
    hold_ttl_s: int = 120
    journal: str | Path | None = None
    synchronous: str = "NORMAL"

    def __post_init__(self) -> None:
        if isinstance(self.calls, bool) or not isinstance(self.calls, int) or self.calls < 1:
            raise ValueError("Lease.calls must be a positive int")
        if self.max_usdc is not None:
            cap = to_decimal(self.max_usdc, name="Lease.max_usdc")
            if cap <= 0:
                raise ValueError("Lease.max_usdc must be positive")
            object.__setattr__(self, "max_usdc", cap)
        for name in ("capture_interval_s", "idle_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Lease.{name} must be a positive number")
        if isinstance(self.low_water, bool) or not isinstance(self.low_water, (int, float)) or not 0 <= self.low_water < 1:
            raise ValueError("Lease.low_water must be in [0, 1)")
        if isinstance(self.hold_ttl_s, bool) or not isinstance(self.hold_ttl_s, int) or self.hold_ttl_s < 2:
            raise ValueError("Lease.hold_ttl_s must be an int of at least 2")
        if self.synchronous not in ("NORMAL", "FULL"):
            raise ValueError("Lease.synchronous must be 'NORMAL' or 'FULL'")


class _LeaseState:
    """One open hold used as a lease (all fields guarded by LeaseSettlement._lock)."""

    __slots__ = (
        "escrow_id", "hold_id", "amount", "reserved", "charged", "uncaptured", "state", "reserve_until",
        "settle_until", "expires_at", "last_used", "last_capture", "last_need", "low_mark", "pending",
        "successor_tried",
    )

    def __init__(self, escrow_id: str, hold_id: str, amount: int, opened_at: float, expires_at: float, need: int,
                 low_water: float):
        life = max(expires_at - opened_at, 0.0)
        self.escrow_id, self.hold_id, self.amount = escrow_id, hold_id, amount
        self.reserved = self.charged = self.uncaptured = 0
        self.state = _OPEN
        self.expires_at = expires_at
        self.reserve_until = opened_at + _RESERVE_FRACTION * life
        self.settle_until = opened_at + _SETTLE_FRACTION * life
        self.last_used = self.last_capture = time.monotonic()
        self.last_need = need
        self.low_mark = int(amount * low_water)
        self.pending: CaptureIntent | None = None  # an intent sent but not confirmed (retried first)
        self.successor_tried = 0.0

    @property
    def available(self) -> int:
        return self.amount - self.reserved - self.charged


@dataclass(eq=False)
class _LeaseReservation(Reservation):
    lease: _LeaseState | None = None
    need: int = 0
    done: bool = field(default=False)


class LeaseSettlement(Settlement):
    """See the module docstring."""

    name = "lease"

    def __init__(
        self,
        client: EscrowClient,
        view: EscrowView,
        config: Lease | None = None,
        *,
        now: Callable[[], float] = time.time,
        settle_retries: int = 4,
        on_fallback: Callable[[], None] | None = None,
    ):
        self.config = config or Lease()
        self._client = client
        self._view = view
        self._now = now
        self._retries = settle_retries
        self._per_call = PerCallSettlement(client, view, settle_retries=settle_retries, on_fallback=on_fallback)
        self._no_holds = False
        self._lock = threading.Lock()
        self._flush_lock = threading.RLock()  # one sender of captures at a time; never taken on the hot path
        self._current: dict[str, _LeaseState] = {}  # escrow -> the lease new calls reserve on
        self._leases: dict[str, _LeaseState] = {}  # hold -> every lease not yet closed
        self._by_escrow: dict[str, list[_LeaseState]] = {}  # the same, by escrow
        self._opening: dict[str, Future] = {}
        self._seen_remaining: dict[str, int] = {}
        self._own_holds: set[str] = set()  # holds this process opened (replay leaves them alone)
        self._recovery_due = False
        self._closed = False
        self._cap = None if self.config.max_usdc is None else _micro(self.config.max_usdc)
        self.journal = Journal(self.config.journal, synchronous=self.config.synchronous)
        if self.journal.durable:
            self.recover()
        self._wake = threading.Event()
        self._stopping = False
        self._tick = max(0.05, min(self.config.capture_interval_s / 2, self.config.idle_s / 2, 1.0))
        self._flusher = threading.Thread(target=self._run, name="gate-lease-flusher", daemon=True)
        self._flusher.start()

    @property
    def uses_deduct(self) -> bool:
        return self._per_call.uses_deduct

    # -- reserve (hot path: one lock, no network while a lease covers the call) ---------

    def reserve(self, escrow_id: str, maximum: Decimal, reason: str, ttl_seconds: int, *, fresh: bool) -> Reservation:
        if self._no_holds:
            return self._per_call.reserve(escrow_id, maximum, reason, ttl_seconds, fresh=fresh)
        need = _micro(maximum)
        if need == 0:
            return _LeaseReservation(escrow_id, maximum, reason, None, lease=None, need=0)
        while True:
            if self._no_holds:
                return self._per_call.reserve(escrow_id, maximum, reason, ttl_seconds, fresh=fresh)
            with self._lock:
                if self._closed:
                    raise ServiceUnavailable("This Space is shutting down")
                lease = self._current.get(escrow_id)
                if lease is not None:
                    if lease.available >= need and self._now() < lease.reserve_until:
                        return self._take(lease, escrow_id, maximum, reason, need)
                    self._retire(lease)
                opening = self._opening.get(escrow_id)
                mine = opening is None
                if mine:
                    opening = self._opening[escrow_id] = Future()
            if not mine:
                try:
                    opening.result()
                except InsufficientFunds as refusal:
                    if refusal.remaining is not None and refusal.remaining < maximum:
                        raise InsufficientFunds(escrow_id, maximum, refusal.remaining) from refusal
                except GateError:
                    raise
                except Exception:
                    pass  # the opener's own problem; try again
                continue
            try:
                reservation = self._open_lease(escrow_id, maximum, reason, need, fresh)
            except BaseException as exc:
                with self._lock:
                    self._opening.pop(escrow_id, None)
                opening.set_exception(exc)
                raise
            with self._lock:
                self._opening.pop(escrow_id, None)
            opening.set_result(None)
            if reservation is None:  # the service has no holds route: per-call from now on
                return self._per_call.reserve(escrow_id, maximum, reason, ttl_seconds, fresh=fresh)
            return reservation

    def _take(self, lease: _LeaseState, escrow_id: str, maximum: Decimal, reason: str, need: int) -> _LeaseReservation:
        """Under the lock: reserve ``need`` on the lease."""
        lease.reserved += need
        lease.last_used = time.monotonic()
        lease.last_need = need
        if lease.available < lease.low_mark:
            self._wake.set()
        return _LeaseReservation(escrow_id, maximum, reason, lease.hold_id, lease=lease, need=need)

    def _retire(self, lease: _LeaseState) -> None:
        """Under the lock: no new reservations on it; the flusher closes it once nothing is in flight."""
        if lease.state == _OPEN:
            lease.state = _RETIRING
        if self._current.get(lease.escrow_id) is lease:
            del self._current[lease.escrow_id]
        self._wake.set()

    def _track(self, lease: _LeaseState) -> None:
        """Under the lock."""
        self._leases[lease.hold_id] = lease
        self._by_escrow.setdefault(lease.escrow_id, []).append(lease)

    def _untrack(self, lease: _LeaseState) -> None:
        """Under the lock."""
        if self._leases.pop(lease.hold_id, None) is None:
            return
        same = self._by_escrow.get(lease.escrow_id, [])
        if lease in same:
            same.remove(lease)
        if not same:
            self._by_escrow.pop(lease.escrow_id, None)

    def _lease_size(self, need: int) -> int:
        size = need * self.config.calls
        if self._cap is not None:
            size = min(size, self._cap)
        return max(size, need)

    def _open_lease(self, escrow_id, maximum, reason, need, fresh) -> _LeaseReservation | None:
        """Open a hold for a new lease and reserve ``need`` on it (the opener's own call)."""
        amount = self._lease_size(need)
        for _attempt in range(4):
            try:
                lease, remaining = self._open_hold(escrow_id, amount, need)
            except EscrowApiError as exc:
                if exc.status == 405 or (exc.status == 404 and (fresh or self._view.escrow_exists(escrow_id))):
                    self._no_holds = True
                    self._per_call._switch_to_deduct()  # says so in the log, once
                    return None
                if exc.code != "insufficient_funds":
                    raise self._view.refusal(escrow_id, exc, maximum) from exc
                # Not enough for a whole lease: free this Space's idle leases on it, then hold what remains.
                self._close_retired(escrow_id)
                remaining = self._view.remaining(escrow_id)
                if remaining is None:
                    raise self._view.refusal(escrow_id, exc, maximum) from exc
                left = _micro(remaining)
                if left < need:
                    raise InsufficientFunds(escrow_id, maximum, remaining) from exc
                amount = min(amount, left)
                continue
            with self._lock:
                old = self._current.get(escrow_id)
                if old is not None:
                    self._retire(old)
                self._current[escrow_id] = lease
                self._track(lease)
                if remaining is not None:
                    self._seen_remaining[escrow_id] = remaining
                return self._take(lease, escrow_id, maximum, reason, need)
        raise InsufficientFunds(escrow_id, maximum, None)

    def _open_hold(self, escrow_id: str, amount: int, need: int) -> tuple[_LeaseState, int | None]:
        """Open the hold of a new lease; returns it (not yet tracked) and the escrow's remaining after it.

        Under the flush lock: this process's requests that move an escrow's remaining are then answered
        in the order they were sent, so the remaining each answer reports is never older than the last.
        """
        ttl = self.config.hold_ttl_s
        with self._flush_lock:
            sent_at = self._now()
            body = self._client.open_hold(escrow_id, _usdc(amount), ttl, key=new_idempotency_key())
            hold_id = body.get("hold_id")
            if not isinstance(hold_id, str) or not _HOLD_ID.fullmatch(hold_id):
                log.warning("escrow service answered a hold without a usable hold_id")
                raise ServiceUnavailable("The payment service gave an unusable answer")
            expires_at = sent_at + ttl
            try:
                expires_at = min(expires_at, _parse_time(body.get("expires_at")))
            except (TypeError, ValueError):
                pass
            with self._lock:
                self._own_holds.add(hold_id)
            self.journal.add_hold(hold_id, escrow_id, amount, expires_at, sent_at)
        lease = _LeaseState(escrow_id, hold_id, amount, sent_at, expires_at, need, self.config.low_water)
        return lease, _remaining_in(body)

    # -- settle / release ---------------------------------------------------------------

    def settle(self, reservation: Reservation, amount: Decimal) -> Receipt:
        if not isinstance(reservation, _LeaseReservation):
            return self._per_call.settle(reservation, amount)
        if amount > reservation.maximum:
            raise AssertionError("a charge above its reservation")  # pricing guarantees this
        r, micro, lease = reservation, _micro(amount), reservation.lease
        with self._lock:
            if r.done:
                raise AssertionError("a reservation settled twice")
            r.done = True
            if lease is not None:
                lease.reserved -= r.need
            if micro == 0:
                return self._receipt(r, None, 0)
            if lease.state != _CLOSING and not self._closed and self._now() < lease.settle_until:
                charge_id = new_charge_id()
                try:
                    self.journal.add_charge(charge_id, lease.hold_id, r.escrow_id, micro, self._now())
                except Exception as exc:
                    log.error("the journal refused a charge; the call is not charged", exc_info=exc)
                    raise SettlementFailed(
                        r.escrow_id, f"The result was ready, but the Space could not record the charge. {NOT_CHARGED}"
                    ) from exc
                lease.charged += micro
                lease.uncaptured += micro
                if lease.available < lease.low_mark or lease.state != _OPEN:
                    self._wake.set()
                return self._receipt(r, charge_id, micro)
        return self._settle_directly(r, amount)

    def _receipt(self, r: _LeaseReservation, charge_id: str | None, micro: int) -> Receipt:
        """Under the lock."""
        seen = self._seen_remaining.get(r.escrow_id)
        remaining = None
        if seen is not None:
            unused = sum(
                max(lease.available, 0) for lease in self._by_escrow.get(r.escrow_id, ())
            )
            remaining = _usdc(seen + unused)
        return Receipt(r.escrow_id, charge_id, _usdc(micro), remaining, r.reason, "lease")

    def _settle_directly(self, r: _LeaseReservation, amount: Decimal) -> Receipt:
        """The lease closed while the call ran: charge it on its own hold, captured now."""
        if self._closed:
            raise SettlementFailed(
                r.escrow_id, f"The result was ready, but the Space is shutting down and cannot charge it. {NOT_CHARGED}"
            )
        try:
            own = self._per_call.reserve(r.escrow_id, amount, r.reason, 60, fresh=False)
        except GateError as refusal:
            raise SettlementFailed(
                r.escrow_id, f"The result was ready, but its reservation had lapsed and {refusal.message}"
            ) from refusal
        return self._per_call.settle(own, amount)

    def release(self, reservation: Reservation) -> None:
        if not isinstance(reservation, _LeaseReservation):
            self._per_call.release(reservation)
            return
        with self._lock:
            if reservation.done or reservation.lease is None:
                reservation.done = True
                return
            reservation.done = True
            lease = reservation.lease
            lease.reserved -= reservation.need
            if lease.state != _OPEN and lease.reserved == 0:
                self._wake.set()

    # -- the flusher --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self._tick)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.flush()
            except Exception:  # never let the flusher die
                log.exception("lease flush failed; retrying")

    def flush(self, *, close_all: bool = False) -> None:
        """Capture what is due now (the flusher calls this; tests and close() may too)."""
        with self._flush_lock:
            now, mono = self._now(), time.monotonic()
            if self._recovery_due:
                self._recovery_due = not self._replay()
            jobs: list[tuple[_LeaseState, CaptureIntent]] = []
            preopen: list[_LeaseState] = []
            with self._lock:
                for lease in list(self._leases.values()):
                    if lease.pending is not None:  # the previous capture first, in order
                        jobs.append((lease, lease.pending))
                        continue
                    if lease.state == _CLOSING:
                        continue
                    final = (
                        close_all
                        or now >= lease.settle_until
                        or (lease.reserved == 0 and lease.state == _RETIRING)
                        or (lease.reserved == 0 and lease.available < lease.last_need)
                        or (lease.reserved == 0 and mono - lease.last_used >= self.config.idle_s)
                    )
                    low = lease.available < lease.low_mark
                    if final:
                        if self._current.get(lease.escrow_id) is lease:
                            del self._current[lease.escrow_id]
                        lease.state = _CLOSING
                    elif not (lease.uncaptured and (low or mono - lease.last_capture >= self.config.capture_interval_s)):
                        if low and lease.state == _OPEN and not close_all:
                            preopen.append(lease)
                        continue
                    intent = self.journal.add_intent(new_idempotency_key(), lease.hold_id, lease.escrow_id, final, now)
                    lease.uncaptured = 0
                    lease.last_capture = mono
                    lease.pending = intent
                    jobs.append((lease, intent))
                    if low and lease.state == _OPEN and not close_all:
                        preopen.append(lease)
            for lease in preopen:  # first: calls may be waiting for it
                self._open_successor(lease, mono)
            for lease, intent in jobs:
                self._send(lease, intent)

    def _send(self, lease: _LeaseState | None, intent: CaptureIntent) -> bool:
        """Send one capture intent with its own key; True once it is settled (done or lost)."""
        try:
            body = self._client.capture(
                intent.escrow_id, intent.hold_id, _usdc(intent.amount_micro), key=intent.key, final=intent.final,
                retries=self._retries,
            )
        except ServiceUnavailable:
            log.warning("capture of %s USDC on %s not confirmed; retrying with the same key",
                        format_usdc(_usdc(intent.amount_micro)), intent.hold_id)
            return False
        except EscrowApiError as exc:
            if exc.status in (404, 409, 410):
                self._lost(lease, intent, exc)
                return True
            log.error("escrow service refused a capture (%s %s); retrying later", exc.status, exc.code)
            return False
        self.journal.finish_intent(intent.key, "done")
        if intent.final:
            self.journal.close_hold(intent.hold_id)
        self._forget_intent(lease, intent, remaining=_remaining_in(body))
        return True

    def _lost(self, lease: _LeaseState | None, intent: CaptureIntent, exc: EscrowApiError) -> None:
        """The hold is gone (expired, or its escrow closed): its uncaptured charges went back to the buyer."""
        self.journal.finish_intent(intent.key, "lost")
        self.journal.close_hold(intent.hold_id)
        if intent.amount_micro:
            log.error(
                "lost %s USDC of charges on hold %s (escrow %s): the hold closed before they were captured "
                "(%s); the buyer keeps them", format_usdc(_usdc(intent.amount_micro)), intent.hold_id,
                intent.escrow_id, exc.code,
            )
        if lease is not None:
            with self._lock:
                lease.state = _CLOSING  # later settles on it are charged on their own holds
                if self._current.get(lease.escrow_id) is lease:
                    del self._current[lease.escrow_id]
                if lease.uncaptured:  # charged after this intent: lost as well
                    rest = self.journal.add_intent(new_idempotency_key(), lease.hold_id, lease.escrow_id, True,
                                                   self._now())
                    self.journal.finish_intent(rest.key, "lost")
                    log.error("lost %s USDC more on hold %s", format_usdc(_usdc(rest.amount_micro)), lease.hold_id)
                    lease.uncaptured = 0
        self._forget_intent(lease, intent, closed=True)

    def _forget_intent(
        self, lease: _LeaseState | None, intent: CaptureIntent, closed: bool = False, remaining: int | None = None
    ) -> None:
        with self._lock:
            if remaining is not None:
                self._seen_remaining[intent.escrow_id] = remaining
            if lease is None:
                return
            if lease.pending is intent:
                lease.pending = None
            if intent.final or closed:
                self._untrack(lease)

    def _open_successor(self, lease: _LeaseState, mono: float) -> None:
        """Below low water: open the next lease before calls need it (best effort, full size only)."""
        escrow_id = lease.escrow_id
        with self._lock:
            if (self._closed or self._current.get(escrow_id) is not lease or escrow_id in self._opening
                    or mono - lease.successor_tried < self.config.capture_interval_s
                    or mono - lease.last_used >= self.config.idle_s):
                return
            lease.successor_tried = mono
            opening = self._opening[escrow_id] = Future()
        successor, remaining = None, None
        try:
            successor, remaining = self._open_hold(escrow_id, self._lease_size(lease.last_need), lease.last_need)
        except (EscrowApiError, GateError):
            successor = None  # the next call that needs it opens it (and reports any refusal)
        except Exception:
            log.exception("opening the next lease failed")
            successor = None
        finally:
            with self._lock:
                self._opening.pop(escrow_id, None)
                if successor is not None:
                    old = self._current.get(escrow_id)
                    if old is not None:
                        self._retire(old)
                    self._current[escrow_id] = successor
                    self._track(successor)
                    if remaining is not None:
                        self._seen_remaining[escrow_id] = remaining
            opening.set_result(None)

    def _close_retired(self, escrow_id: str) -> None:
        """Close this escrow's leases that take no new calls and have none in flight (frees their rest)."""
        with self._flush_lock:
            jobs = []
            with self._lock:
                for lease in list(self._leases.values()):
                    if (lease.escrow_id == escrow_id and lease.state == _RETIRING and lease.reserved == 0
                            and lease.pending is None):
                        lease.state = _CLOSING
                        intent = self.journal.add_intent(new_idempotency_key(), lease.hold_id, escrow_id, True,
                                                         self._now())
                        lease.uncaptured = 0
                        lease.pending = intent
                        jobs.append((lease, intent))
            for lease, intent in jobs:
                self._send(lease, intent)

    # -- recovery and shutdown ----------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Replay the journal: pending intents with their own keys, then close the holds still open."""
        before = self.journal.totals()
        with self._flush_lock:
            self._recovery_due = not self._replay()
        after = self.journal.totals()
        recovered = after["captured"] - before["captured"]
        lost = after["lost"] - before["lost"]
        if recovered or lost or after["pending"] or after["unassigned"]:
            log.warning(
                "lease journal replayed: %s USDC captured, %s USDC lost (holds closed before the restart: "
                "returned to the buyers), %s USDC not yet confirmed (retried)", format_usdc(_usdc(recovered)),
                format_usdc(_usdc(lost)), format_usdc(_usdc(after["pending"] + after["unassigned"])),
            )
        if not self._recovery_due:
            self.journal.prune(self._now() - 7 * 86400)
        return {"recovered": recovered, "lost": lost, "pending": after["pending"] + after["unassigned"]}

    def _replay(self) -> bool:
        """Under the flush lock: settle what earlier processes left; False if the service did not answer."""
        with self._lock:
            own = set(self._own_holds)
        for intent in self.journal.pending_intents():  # in order, each with its own key
            if intent.hold_id not in own and not self._send(None, intent):
                return False
        for hold in self.journal.open_holds():
            if hold.hold_id in own:
                continue
            intent = self.journal.add_intent(new_idempotency_key(), hold.hold_id, hold.escrow_id, True, self._now())
            if not self._send(None, intent):
                return False
        return True

    def close(self) -> None:
        """Capture everything charged and void the rest of every lease; later calls are refused."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stopping = True
        self._wake.set()
        if self._flusher is not threading.current_thread():
            self._flusher.join(30)
        try:
            for _ in range(3):
                self.flush(close_all=True)
                with self._lock:
                    if not self._leases and not self._recovery_due:
                        break
            with self._lock:
                unsettled = len(self._leases) + int(self._recovery_due)
            if unsettled:
                log.error(
                    "%d lease captures are unconfirmed at shutdown; %s", unsettled,
                    "the journal replays them on restart" if self.journal.durable
                    else "without a journal their charges are lost and the holds expire back to the buyers",
                )
        finally:
            self._per_call.close()
            self.journal.close()


def _remaining_in(body: dict) -> int | None:
    try:
        return _micro(parse_usdc(body.get("remaining_usdc")))
    except ValueError:
        return None


def _parse_time(value: Any) -> float:
    if isinstance(value, str):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    raise ValueError("not a time")
