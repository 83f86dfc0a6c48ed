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

**A charge is taken on a lease only where its capture can land** (``settle``):
- before the lease's *charge deadline*: the earliest moment the hold may expire
  on the service, read on the service's clock with its uncertainty
  (``gate._clock.ServiceClock``: skew costs margin, never money), less
  ``Lease.settle_margin_s`` for the final capture to arrive, less two of the
  service's recent slowest round trips while it is slow (a capture in flight,
  then the final one);
- while the lease's oldest charge not yet confirmed by the service is younger
  than ``Lease.max_unconfirmed_s`` (default ``capture_interval_s + 1``), and the
  service answered something within that time (the flusher asks ``GET /me`` while
  leases are open and nothing else was asked). When the service stops confirming
  captures (down, refusing), a lease stops taking charges within that time (a
  capture merely slow is waited for, up to ``settle_margin_s``); calls are then
  served per call (their own hold,
  captured before the result is returned), which the service refuses while it
  is down: "not charged". The charges at risk in an outage are at most those
  of ``max_unconfirmed_s`` of calls per lease (and never more than the lease),
  and they are lost only if the outage outlasts the hold.
A call that cannot be charged on its lease when it finishes (deadline passed,
captures unconfirmed, lease closed) is charged on its own fresh hold, captured
before its result is returned; if that fails the result is withheld and
nothing is charged.

Escrows (or holds) with too little life left for a charging window of
``2 × settle_margin_s`` are never leased: their calls are served per call, each
hold captured before its result is returned (so a 1-second escrow is paid
call by call, or its calls are refused "not charged").

A flusher captures what was charged with one partial capture (``final:
false``) once the oldest uncaptured charge is ``capture_interval_s`` old or as
soon as the lease's unreserved part drops under ``low_water`` (then it also
opens the next lease ahead of need, so calls rarely wait for a hold). It closes
a lease (final capture of what is still owed, the rest returned to the escrow)
at its charge deadline, when it is exhausted, unused for ``idle_s``, or at
``close()``. The flusher sleeps until the next of these moments. No lock is
held across HTTP: captures and successor holds are sent from a small pool,
one request at a time per lease, so a stalled escrow stalls only itself.

Journal (``gate/_journal.py``): an outbox. Before a capture is sent, its intent
(hold, amount, Idempotency-Key, final) is committed, and it is marked done
after the service's answer. On start, a gate given the same journal path
replays: it re-sends pending intents with their SAME keys (the service replays
its answer instead of applying them twice), then closes every hold that the
journal still has open with a final capture of what was charged on it and not
captured. Each step is journaled before it is sent, so a crash during replay
is replayed again, still exactly once. One process per journal file: a second
one is refused at start (``JournalInUse``, an OS file lock), so it never replays
(final-captures) the first one's live leases.

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
import math
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from ._clock import ServiceClock
from ._journal import CaptureIntent, Journal
from ._service import EscrowService
from ._settlement import PerCallSettlement, Receipt, Reservation, Settlement
from .client import new_idempotency_key
from .errors import (
    NOT_CHARGED,
    EscrowApiError,
    GateError,
    InsufficientFunds,
    ServiceUnavailable,
    SettlementFailed,
)
from .money import MICRO_USDC, format_usdc, round_up, to_usdc

__all__ = ["Lease", "LeaseSettlement"]

log = logging.getLogger("gate")

_OPEN, _RETIRING, _CLOSING = "open", "retiring", "closing"
_RESERVE_FRACTION = 0.75  # of a lease's charging window: new calls reserve on it only during this part
_RETRY_S = 0.5  # an unconfirmed capture is re-sent (same key) at most this often
_MAX_SLEEP_S = 1.0


def new_charge_id() -> str:
    return "chg_" + secrets.token_hex(12)  # one random read (24 secrets.choice calls were 24 syscalls)


def _micro(amount: Decimal) -> int:
    return int(round_up(amount).scaleb(6))


def _usdc(micro: int) -> Decimal:
    return (Decimal(micro) * MICRO_USDC).quantize(MICRO_USDC)


def _positive_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@dataclass(frozen=True)
class Lease:
    """Lease settlement options (``EscrowGate(settlement=Lease(...))``; ``"lease"`` = ``Lease()``).

    calls: a lease holds this many times the maximum price of the call that opens it.
    max_usdc: optional cap on one lease in USDC (the exposure per escrow); never below one call.
    capture_interval_s: a charge is captured at most this long after it was taken.
    low_water: fraction of the lease; below it the used part is captured and the next lease opened early.
    idle_s: an unused lease is captured and its rest voided after this many seconds.
    hold_ttl_s: the hold's TTL on the service (capped there by the escrow's expiry).
    settle_margin_s: a lease stops charging this long before its hold may expire (service clock,
        uncertainty included), the time its final capture has to land.
    max_unconfirmed_s: a lease takes no charge while its oldest unconfirmed charge is older than this
        (default ``capture_interval_s + 1``): the most an outage can leave unpaid, in seconds of calls.
    journal: SQLite file for the durable journal; None keeps it in memory (see the module docstring
        for what a crash then loses). One process per file.
    synchronous: SQLite ``synchronous`` for the journal: "NORMAL" (process-crash safe) or "FULL".
    """

    calls: int = 50
    max_usdc: Decimal | str | int | None = None
    capture_interval_s: float = 2.0
    low_water: float = 0.25
    idle_s: float = 30.0
    hold_ttl_s: int = 120
    settle_margin_s: float = 3.0
    max_unconfirmed_s: float | None = None
    journal: str | Path | None = None
    synchronous: str = "NORMAL"

    def __post_init__(self) -> None:
        if isinstance(self.calls, bool) or not isinstance(self.calls, int) or self.calls < 1:
            raise ValueError("Lease.calls must be a positive int")
        if self.max_usdc is not None:
            cap = to_usdc(self.max_usdc, name="Lease.max_usdc")
            if cap <= 0:
                raise ValueError("Lease.max_usdc must be positive")
            object.__setattr__(self, "max_usdc", cap)
        for name in ("capture_interval_s", "idle_s", "settle_margin_s"):
            if not _positive_number(getattr(self, name)):
                raise ValueError(f"Lease.{name} must be a positive number")
        if self.max_unconfirmed_s is None:
            object.__setattr__(self, "max_unconfirmed_s", self.capture_interval_s + 1.0)
        elif not _positive_number(self.max_unconfirmed_s) or self.max_unconfirmed_s < self.capture_interval_s:
            raise ValueError("Lease.max_unconfirmed_s must be a number of at least capture_interval_s")
        if isinstance(self.low_water, bool) or not isinstance(self.low_water, (int, float)) or not 0 <= self.low_water < 1:
            raise ValueError("Lease.low_water must be in [0, 1)")
        if isinstance(self.hold_ttl_s, bool) or not isinstance(self.hold_ttl_s, int) or self.hold_ttl_s < 2:
            raise ValueError("Lease.hold_ttl_s must be an int of at least 2")
        if self.hold_ttl_s <= 3 * self.settle_margin_s:
            raise ValueError("Lease.hold_ttl_s must be more than 3 × settle_margin_s")
        if self.synchronous not in ("NORMAL", "FULL"):
            raise ValueError("Lease.synchronous must be 'NORMAL' or 'FULL'")

    @property
    def min_window_s(self) -> float:
        """The shortest charging window worth a lease; escrows with less life left are served per call."""
        return 2 * self.settle_margin_s


class _LeaseState:
    """One open hold used as a lease (all fields guarded by LeaseSettlement._lock)."""

    __slots__ = (
        "escrow_id", "hold_id", "amount", "reserved", "charged", "uncaptured", "state", "reserve_until",
        "charge_until", "last_used", "last_need", "low_mark", "pending", "pending_oldest", "uncaptured_oldest",
        "sending", "retry_at", "successor_tried",
    )

    def __init__(self, escrow_id: str, hold_id: str, amount: int, opened_at: float, charge_until: float,
                 need: int, low_water: float, mono: float):
        self.escrow_id, self.hold_id, self.amount = escrow_id, hold_id, amount
        self.reserved = self.charged = self.uncaptured = 0
        self.state = _OPEN
        self.charge_until = charge_until  # gate clock: no charge on this lease from then on
        self.reserve_until = opened_at + _RESERVE_FRACTION * max(charge_until - opened_at, 0.0)
        self.last_used = mono
        self.last_need = need
        self.low_mark = int(amount * low_water)
        self.pending: CaptureIntent | None = None  # an intent made but not confirmed (re-sent with its key)
        self.pending_oldest: float | None = None  # timer of the oldest charge in ``pending``
        self.uncaptured_oldest: float | None = None  # timer of the oldest charge in no intent yet
        self.sending = False  # a request for this lease is in flight (one at a time, in order)
        self.retry_at = 0.0
        self.successor_tried = -math.inf

    @property
    def available(self) -> int:
        return self.amount - self.reserved - self.charged

    def oldest_unconfirmed(self) -> float | None:
        times = [t for t in (self.pending_oldest, self.uncaptured_oldest) if t is not None]
        return min(times) if times else None


class _Remaining:
    """An escrow's remaining as this process last saw it (guarded by LeaseSettlement._lock)."""

    __slots__ = ("value", "in_flight", "started")

    def __init__(self) -> None:
        self.value: int | None = None  # micro-USDC
        self.in_flight = 0  # requests on the escrow now in flight
        self.started = 0  # requests on the escrow ever started


@dataclass(eq=False)
class _LeaseReservation(Reservation):
    lease: _LeaseState | None = None
    need: int = 0
    done: bool = field(default=False)


class LeaseSettlement(Settlement):
    """See the module docstring.

    ``now``: the gate's clock (epoch seconds; deadlines are placed on it through the client's
    ServiceClock); ``timer``: a monotonic clock for intervals. ``background=False`` runs no
    flusher thread and sends everything inline: the caller drives ``flush()`` (simulations).
    """

    name = "lease"

    def __init__(
        self,
        service: EscrowService,
        config: Lease | None = None,
        *,
        now: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
        settle_retries: int = 4,
        per_call_hold_ttl_s: int = 300,
        background: bool = True,
    ):
        self.config = config or Lease()
        self._service = service
        self._client = service.client
        self._clock: ServiceClock = service.clock
        self._now = now
        self._timer = timer
        self._retries = settle_retries
        # Calls a lease cannot serve (too short-lived escrows, outages, calls longer than a lease) go per call.
        self._per_call = PerCallSettlement(service, hold_ttl_s=per_call_hold_ttl_s, settle_retries=settle_retries)
        self._no_holds = False
        self._lock = threading.Lock()
        self._sent = threading.Condition(self._lock)  # notified when a request for a lease is answered
        self._replay_lock = threading.Lock()  # one replay at a time (start-up, or the flusher after an outage)
        self._current: dict[str, _LeaseState] = {}  # escrow -> the lease new calls reserve on
        self._leases: dict[str, _LeaseState] = {}  # hold -> every lease not yet closed
        self._by_escrow: dict[str, list[_LeaseState]] = {}  # the same, by escrow
        self._opening: dict[str, Future] = {}
        self._remaining: dict[str, _Remaining] = {}  # escrow -> what its remaining is, as seen from here
        self._own_holds: set[str] = set()  # holds this process opened (replay leaves them alone)
        self._recovery_due = False
        self._closed = False
        self._probing = False
        self._cap = None if self.config.max_usdc is None else _micro(self.config.max_usdc)
        self.journal = Journal(self.config.journal, synchronous=self.config.synchronous)
        self._wake = threading.Event()
        self._stopping = False
        self._pool: ThreadPoolExecutor | None = None
        self._flusher: threading.Thread | None = None
        if self.journal.durable:
            self.recover()
        if background:
            self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="gate-lease-send")
            self._flusher = threading.Thread(target=self._run, name="gate-lease-flusher", daemon=True)
            self._flusher.start()

    @property
    def settles_by_deduct(self) -> bool:
        return self._per_call.settles_by_deduct

    def open_leases(self) -> tuple[int, Decimal]:
        with self._lock:
            leases = list(self._leases.values())
            owed = sum(lease.uncaptured + (lease.pending.amount_micro if lease.pending else 0) for lease in leases)
        return len(leases), _usdc(owed)

    # -- reserve (hot path: one lock, no network while a lease covers the call) ---------

    def reserve(
        self, escrow_id: str, maximum: Decimal, reason: str, *, fresh: bool,
        expires_at: float | None = None, longest_call_s: float | None = None,
    ) -> Reservation:
        def per_call() -> Reservation:
            return self._per_call.reserve(escrow_id, maximum, reason, fresh=fresh, longest_call_s=longest_call_s)

        if self._no_holds or not self._lease_can_outlast(longest_call_s):
            return per_call()
        # A call that may run long reserves only on a lease that can still take its charge when it ends.
        call_s = longest_call_s or 0.0
        need = _micro(maximum)
        if need == 0:
            return _LeaseReservation(escrow_id, maximum, reason, None, lease=None, need=0)
        while True:
            if self._no_holds:
                return per_call()
            with self._lock:
                if self._closed:
                    raise ServiceUnavailable("This Space is shutting down")
                serve_per_call = False
                lease = self._current.get(escrow_id)
                if lease is not None:
                    if not self._confirmed_recently(lease, self._timer()) and not self._await_capture(lease):
                        serve_per_call = True  # the service is not confirming its captures: per call meanwhile
                    elif lease.available >= need and self._now() < min(
                        lease.reserve_until, lease.charge_until - call_s
                    ):
                        return self._take(lease, escrow_id, maximum, reason, need)
                    else:
                        self._retire(lease)
                if not serve_per_call and not self._worth_a_lease(expires_at, call_s):
                    serve_per_call = True  # the escrow expires too soon for a lease to be captured in time
                if not serve_per_call:
                    opening = self._opening.get(escrow_id)
                    mine = opening is None
                    if mine:
                        opening = self._opening[escrow_id] = Future()
            if serve_per_call:
                return per_call()
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
                reservation = self._open_lease(escrow_id, maximum, reason, need, fresh, call_s)
            except BaseException as exc:
                with self._lock:
                    self._opening.pop(escrow_id, None)
                opening.set_exception(exc)
                raise
            with self._lock:
                self._opening.pop(escrow_id, None)
            opening.set_result(None)
            if reservation is None:  # the service has no holds route, or the hold is too short-lived
                return per_call()
            return reservation

    def _lease_can_outlast(self, longest_call_s: float | None) -> bool:
        """A fresh lease leaves a call of ``longest_call_s`` (None: unknown) time to end before its deadline."""
        if longest_call_s is None:
            return True
        window = self.config.hold_ttl_s - self.config.settle_margin_s
        return longest_call_s + self.config.min_window_s <= _RESERVE_FRACTION * window

    def _worth_a_lease(self, expires_at: float | None, call_s: float) -> bool:
        """A hold opened now could charge for at least ``min_window_s`` (plus the call's ``call_s``) before its
        deadline."""
        window = self._charge_deadline(self._now(), expires_at) - self._slow() - self._now()
        return window >= self.config.min_window_s + call_s

    def _charge_deadline(self, sent_at: float, expires_at: float | None) -> float:
        """The gate time after which no charge may be taken on a hold requested at ``sent_at``.

        The hold lives ``hold_ttl_s`` from when the service made it (after ``sent_at``), unless its
        escrow's expiry (``expires_at``, service clock) comes first; that is placed at the earliest
        gate time the service's clock may reach it.
        """
        expiry = sent_at + self.config.hold_ttl_s
        if expires_at is not None:
            expiry = min(expiry, self._clock.earliest_local(expires_at))
        return expiry - self.config.settle_margin_s

    def _slow(self) -> float:
        """Extra margin while the service is slow: two of its recent slowest round trips (a capture in
        flight, then the final one, must both land before the hold expires)."""
        return 2 * self._client.recent_round_trip

    def _confirmed_recently(self, lease: _LeaseState, mono: float) -> bool:
        """Under the lock: the service answered lately and the lease's oldest unconfirmed charge (if any) is
        young enough to add more. An outage stops charging within ``max_unconfirmed_s`` even on a lease with
        nothing to capture: the flusher asks the service something while leases are open (``_heartbeat``)."""
        window = self.config.max_unconfirmed_s
        if self._now() - self._client.last_answer_at >= window:
            return False
        oldest = lease.oldest_unconfirmed()
        return oldest is None or mono - oldest < window

    def _await_capture(self, lease: _LeaseState) -> bool:
        """Under the lock: a slow (not failed) capture is in flight on the lease: wait for its answer, at most
        ``settle_margin_s``; True if the lease may charge again. Per call meanwhile would find its money held."""
        if not lease.sending or self._now() - self._client.last_answer_at >= self.config.max_unconfirmed_s:
            return False
        self._sent.wait_for(lambda: not lease.sending, timeout=self.config.settle_margin_s)
        return self._confirmed_recently(lease, self._timer())

    def _take(self, lease: _LeaseState, escrow_id: str, maximum: Decimal, reason: str, need: int) -> _LeaseReservation:
        """Under the lock: reserve ``need`` on the lease."""
        lease.reserved += need
        lease.last_used = self._timer()
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
            seen = self._remaining.get(lease.escrow_id)
            if seen is not None and seen.in_flight == 0:  # learnt again from the next hold's answer
                del self._remaining[lease.escrow_id]

    def _lease_size(self, need: int) -> int:
        size = need * self.config.calls
        if self._cap is not None:
            size = min(size, self._cap)
        return max(size, need)

    def _open_lease(self, escrow_id, maximum, reason, need, fresh, call_s: float) -> _LeaseReservation | None:
        """Open a hold for a new lease and reserve ``need`` on it (the opener's own call)."""
        amount = self._lease_size(need)
        for _attempt in range(4):
            try:
                lease = self._open_hold(escrow_id, amount, need)
            except EscrowApiError as exc:
                if self._per_call.holds_route_missing(escrow_id, exc, fresh):
                    self._no_holds = True
                    self._per_call.switch_to_deduct()  # says so in the log, once
                    return None
                if exc.code != "insufficient_funds":
                    raise self._service.refusal(escrow_id, exc, maximum) from exc
                # Not enough for a whole lease: free this Space's idle leases on it, then hold what remains.
                self._close_retired(escrow_id)
                remaining = self._service.remaining(escrow_id)
                if remaining is None:
                    raise self._service.refusal(escrow_id, exc, maximum) from exc
                left = _micro(remaining)
                if left < need:
                    raise InsufficientFunds(escrow_id, maximum, remaining) from exc
                amount = min(amount, left)
                continue
            with self._lock:
                if lease.charge_until - self._slow() - self._now() < self.config.min_window_s + call_s:
                    # The escrow expires sooner than its cached facts said (or than this call may run).
                    lease.state = _RETIRING
                    self._wake.set()
                    return None
                old = self._current.get(escrow_id)
                if old is not None:
                    self._retire(old)
                self._current[escrow_id] = lease
                return self._take(lease, escrow_id, maximum, reason, need)
        raise InsufficientFunds(escrow_id, maximum, None)

    def _open_hold(self, escrow_id: str, amount: int, need: int) -> _LeaseState:
        """Open the hold of a new lease; returns it, tracked but not yet current."""
        ttl = self.config.hold_ttl_s
        ticket = self._request_starts(escrow_id)
        try:
            sent_at = self._now()
            hold = self._client.open_hold(escrow_id, _usdc(amount), ttl, key=new_idempotency_key())
            received_at = self._now()
        except BaseException:
            with self._lock:
                self._request_ended(escrow_id, ticket, None, None)
            raise
        hold_id = hold.hold_id
        if hold.expires_at is not None:  # else the TTL we asked for bounds it anyway
            self._clock.observe_at_least(hold.expires_at - ttl, received_at)
        charge_until = self._charge_deadline(sent_at, hold.expires_at)
        with self._lock:
            self._own_holds.add(hold_id)
        self.journal.add_hold(hold_id, escrow_id, amount, charge_until + self.config.settle_margin_s, sent_at)
        lease = _LeaseState(escrow_id, hold_id, amount, sent_at, charge_until, need, self.config.low_water,
                            self._timer())
        with self._lock:  # its answer counts together with the lease it opened: receipts see both or neither
            self._request_ended(escrow_id, ticket, hold.remaining, -amount)
            self._track(lease)
        return lease

    def _request_starts(self, escrow_id: str) -> tuple[int, bool]:
        """Before a request on the escrow: a ticket for ``_request_ended``."""
        with self._lock:
            seen = self._remaining.setdefault(escrow_id, _Remaining())
            seen.started += 1
            seen.in_flight += 1
            return seen.started, seen.in_flight == 1

    def _request_ended(
        self, escrow_id: str, ticket: tuple[int, bool], answered: Decimal | None, delta: int | None
    ) -> None:
        """Under the lock, after it: a request that overlapped no other on this escrow tells its remaining as is;
        one that overlapped others may have been applied before or after them, so only its own change
        (``delta``, micro-USDC; None when unknown) is added. No lock is held across the request itself."""
        remaining = None if answered is None else _micro(answered)
        seen = self._remaining[escrow_id]
        seen.in_flight -= 1
        number, alone = ticket
        if alone and seen.started == number and remaining is not None:
            seen.value = remaining
        elif seen.value is not None and delta is not None:
            seen.value += delta

    # -- settle / void ------------------------------------------------------------------

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
            if micro == 0:
                if lease is not None:
                    lease.reserved -= r.need
                return self._receipt(r, None, 0)
            if not self._confirmed_recently(lease, self._timer()):
                self._await_capture(lease)  # the lock is released meanwhile: our reservation still stands
            lease.reserved -= r.need
            mono = self._timer()
            if (lease.state != _CLOSING and not self._closed and self._now() < lease.charge_until - self._slow()
                    and self._confirmed_recently(lease, mono)):
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
                if lease.uncaptured_oldest is None:
                    lease.uncaptured_oldest = mono
                    self._wake.set()  # the flusher schedules this charge's capture
                if lease.available < lease.low_mark or lease.state != _OPEN:
                    self._wake.set()
                return self._receipt(r, charge_id, micro)
        return self._settle_directly(r, amount)

    def _receipt(self, r: _LeaseReservation, charge_id: str | None, micro: int) -> Receipt:
        """Under the lock."""
        seen = self._remaining.get(r.escrow_id)
        remaining = None
        if seen is not None and seen.value is not None:
            unused = sum(max(lease.available, 0) for lease in self._by_escrow.get(r.escrow_id, ()))
            remaining = _usdc(seen.value + unused)
        return Receipt(r.escrow_id, charge_id, _usdc(micro), remaining, r.reason, "lease")

    def _settle_directly(self, r: _LeaseReservation, amount: Decimal) -> Receipt:
        """The lease cannot take this charge: charge it on its own hold, captured before the result is returned."""
        if self._closed:
            raise SettlementFailed(
                r.escrow_id, f"The result was ready, but the Space is shutting down and cannot charge it. {NOT_CHARGED}"
            )
        return self._per_call.charge_on_fresh_hold(
            r.escrow_id, amount, r.reason, why="its reservation had lapsed", cause=None
        )

    def void(self, reservation: Reservation) -> None:
        if not isinstance(reservation, _LeaseReservation):
            self._per_call.void(reservation)
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
        sleep = _MAX_SLEEP_S
        while True:
            self._wake.wait(sleep)
            self._wake.clear()
            if self._stopping:
                return
            try:
                sleep = min(max(self._flush(close_all=False, inline=False), 0.01), _MAX_SLEEP_S)
            except Exception:  # never let the flusher die
                log.exception("lease flush failed; retrying")
                sleep = _MAX_SLEEP_S

    def flush(self, *, close_all: bool = False) -> float:
        """Send what is due now, in this thread, after what is in flight; returns seconds until the next due."""
        with self._sent:
            self._sent.wait_for(lambda: not any(lease.sending for lease in self._leases.values()), timeout=60)
        return self._flush(close_all=close_all, inline=True)

    def _flush(self, *, close_all: bool, inline: bool) -> float:
        """The flusher sends from the pool (``inline=False``): a stalled escrow holds up no other."""
        if self._recovery_due and self._replay_lock.acquire(blocking=False):
            try:
                self._recovery_due = not self._replay()
            finally:
                self._replay_lock.release()
        now, mono, slow = self._now(), self._timer(), self._slow()
        interval, idle_s = self.config.capture_interval_s, self.config.idle_s
        jobs: list[tuple[_LeaseState, CaptureIntent]] = []
        preopen: list[_LeaseState] = []
        next_due = math.inf
        with self._lock:
            for lease in list(self._leases.values()):
                if lease.sending:
                    continue
                if lease.pending is not None:  # the previous capture first, in order, with its own key
                    if close_all or mono >= lease.retry_at:
                        lease.sending = True
                        jobs.append((lease, lease.pending))
                    else:
                        next_due = min(next_due, lease.retry_at - mono)
                    continue
                if lease.state == _CLOSING:
                    continue
                idle_for = mono - lease.last_used
                final = (
                    close_all
                    or now >= lease.charge_until - slow
                    or (lease.reserved == 0 and lease.state == _RETIRING)
                    or (lease.reserved == 0 and lease.available < lease.last_need)
                    or (lease.reserved == 0 and idle_for >= idle_s)
                )
                low = lease.available < lease.low_mark
                due = lease.uncaptured_oldest is not None and (low or mono - lease.uncaptured_oldest >= interval)
                if low and lease.state == _OPEN and not close_all:
                    preopen.append(lease)
                if not (final or due):
                    next_due = min(next_due, lease.charge_until - slow - now)
                    if lease.uncaptured_oldest is not None:
                        next_due = min(next_due, lease.uncaptured_oldest + interval - mono)
                    if lease.reserved == 0:
                        next_due = min(next_due, idle_s - idle_for)
                    continue
                if final:
                    if self._current.get(lease.escrow_id) is lease:
                        del self._current[lease.escrow_id]
                    lease.state = _CLOSING
                jobs.append((lease, self._make_intent(lease, final)))
        if self._leases and not self._closed:
            heartbeat = self.config.max_unconfirmed_s / 3
            quiet = now - self._client.last_answer_at
            if quiet >= heartbeat and not self._probing:
                self._probing = True
                self._dispatch(inline, self._heartbeat)
            next_due = min(next_due, heartbeat - quiet if quiet < heartbeat else heartbeat)
        for lease in preopen:  # first: calls may be waiting for it
            self._dispatch(inline, self._open_successor, lease)
        for lease, intent in jobs:
            self._dispatch(inline, self._send_for, lease, intent)
        return next_due

    def _heartbeat(self) -> None:
        """Nothing answered lately while leases are open: ask the service (GET /me) whether it is up."""
        try:
            self._client.me()
        except Exception:  # noqa: BLE001 - down: leases stop charging (``_confirmed_recently``)
            pass
        finally:
            self._probing = False

    def _make_intent(self, lease: _LeaseState, final: bool) -> CaptureIntent:
        """Under the lock: journal a capture of what the lease charged and no intent covers yet."""
        intent = self.journal.add_intent(new_idempotency_key(), lease.hold_id, lease.escrow_id, final, self._now())
        lease.uncaptured = 0
        lease.pending = intent
        lease.pending_oldest, lease.uncaptured_oldest = lease.uncaptured_oldest, None
        lease.sending = True
        return intent

    def _dispatch(self, inline: bool, job: Callable, *args) -> None:
        pool = self._pool
        if pool is not None and not inline:
            try:
                pool.submit(job, *args)
                return
            except RuntimeError:  # shut down (close() is running): send inline
                pass
        job(*args)

    def _send_for(self, lease: _LeaseState, intent: CaptureIntent) -> None:
        try:
            settled = self._send(lease, intent)
        except Exception:
            log.exception("sending a capture failed; retrying")
            settled = False
        with self._lock:
            lease.sending = False
            if not settled:
                lease.retry_at = self._timer() + _RETRY_S
            self._sent.notify_all()
        self._wake.set()

    def _send(self, lease: _LeaseState | None, intent: CaptureIntent) -> bool:
        """Send one capture intent with its own key; True once it is settled (done or lost)."""
        ticket = self._request_starts(intent.escrow_id)
        settled = None
        try:
            settled = self._client.capture(
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
        finally:
            if settled is None:
                with self._lock:
                    self._request_ended(intent.escrow_id, ticket, None, None)
        self.journal.finish_intent(intent.key, "done")
        self._service.stats.captured(_usdc(intent.amount_micro))
        if intent.final:
            self.journal.close_hold(intent.hold_id)
        self._forget_intent(lease, intent, answered=(ticket, settled.remaining))
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
                    lease.uncaptured_oldest = None
        self._forget_intent(lease, intent, closed=True)

    def _forget_intent(
        self, lease: _LeaseState | None, intent: CaptureIntent, closed: bool = False,
        answered: tuple[tuple[int, bool], Decimal | None] | None = None,
    ) -> None:
        with self._lock:
            if answered is not None:  # with the untracking below: receipts see the rest returned exactly once
                ticket, remaining = answered
                returned = 0 if not intent.final else (None if lease is None else lease.amount - lease.charged)
                self._request_ended(intent.escrow_id, ticket, remaining, returned)
            if lease is None:
                return
            if lease.pending is intent:
                lease.pending = None
                lease.pending_oldest = None
            if intent.final or closed:
                self._untrack(lease)

    def _open_successor(self, lease: _LeaseState) -> None:
        """Below low water: open the next lease before calls need it (best effort, full size only)."""
        escrow_id = lease.escrow_id
        mono = self._timer()
        with self._lock:
            if (self._closed or self._current.get(escrow_id) is not lease or escrow_id in self._opening
                    or mono - lease.successor_tried < self.config.capture_interval_s
                    or mono - lease.last_used >= self.config.idle_s):
                return
            lease.successor_tried = mono
            opening = self._opening[escrow_id] = Future()
        successor = None
        try:
            successor = self._open_hold(escrow_id, self._lease_size(lease.last_need), lease.last_need)
        except (EscrowApiError, GateError):
            successor = None  # the next call that needs it opens it (and reports any refusal)
        except Exception:
            log.exception("opening the next lease failed")
            successor = None
        finally:
            with self._lock:
                self._opening.pop(escrow_id, None)
                if successor is not None:
                    if successor.charge_until - self._slow() - self._now() < self.config.min_window_s:
                        successor.state = _RETIRING  # too short-lived to serve: closed by the flusher
                    else:
                        old = self._current.get(escrow_id)
                        if old is not None:
                            self._retire(old)
                        self._current[escrow_id] = successor
            opening.set_result(None)
            self._wake.set()

    def _close_retired(self, escrow_id: str) -> None:
        """Close this escrow's leases that take no new calls and have none in flight (frees their rest)."""
        jobs = []
        with self._lock:
            for lease in list(self._by_escrow.get(escrow_id, ())):
                if (lease.state == _RETIRING and lease.reserved == 0 and lease.pending is None
                        and not lease.sending):
                    lease.state = _CLOSING
                    jobs.append((lease, self._make_intent(lease, True)))
        for lease, intent in jobs:
            self._send_for(lease, intent)

    # -- recovery and shutdown ----------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Replay the journal: pending intents with their own keys, then close the holds still open."""
        before = self.journal.totals()
        with self._replay_lock:
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
        """Under the replay lock: settle what earlier processes left; False if the service did not answer."""
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
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(30)
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # what is in flight lands first; from here on, sent inline
            self._pool = None
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

