"""Settlement strategies: how a reserved maximum becomes a charge.

A strategy has a narrow interface, used by the gate and nothing else::

    reserve(escrow_id, maximum, reason, *, fresh, expires_at, longest_call_s) -> Reservation
                                            # or raise a GateError: not charged
    settle(reservation, amount) -> Receipt  # or raise SettlementFailed: result withheld, not charged
    void(reservation) -> None               # give the reservation back to the buyer; never raises
    close() -> None                         # settle or void whatever is still open
    settles_by_deduct: bool                 # the service turned out to have no holds route

A strategy is built on the gate's ``EscrowService`` (``gate._service``: the
typed client, the service's clock, the one refusal mapping) and calls nothing
back in the gate. ``PerCallSettlement`` opens one hold per call and captures
it with ``final: true`` (or, on a service without holds, deducts once the
function succeeded); ``gate._lease.LeaseSettlement`` serves many calls from
one hold and falls back to a ``PerCallSettlement`` of its own.
"""

from __future__ import annotations

import logging
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ._answers import Deduction, Settled
from ._service import EscrowService
from .client import new_idempotency_key
from .errors import NOT_CHARGED, EscrowApiError, GateError, InsufficientFunds, ServiceUnavailable, SettlementFailed
from .money import MICRO_USDC, format_usdc

__all__ = ["PerCallSettlement", "Receipt", "Reservation", "Settlement"]

log = logging.getLogger("gate")

#: Beyond the longest call a price names (``PerSecond(max_seconds=…)``), a per-call hold lives this
#: much longer: the capture after the call has to land before the hold expires.
CAPTURE_ALLOWANCE_S = 60


@dataclass(frozen=True)
class Receipt:
    """What one successful call cost: the buyer's proof of payment."""

    escrow_id: str
    charge_id: str | None  # the hold (per_call), the deduction, or the lease's charge (chg_…) it was settled on
    charged_usdc: Decimal
    remaining_usdc: Decimal | None  # the escrow's remaining balance right after the charge
    reason: str
    settlement: str = "hold"  # "hold", "deduct" or "lease"
    usage: Mapping[str, Any] | None = None  # what the charge was measured from (Price.charge): tokens, vectors...

    def as_dict(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A JSON-able dict; money as strings with 6 decimals; ``extra`` never overrides a field."""
        receipt: dict[str, Any] = dict(extra or {})
        receipt.update(
            escrow_id=self.escrow_id,
            charge_id=self.charge_id,
            charged_usdc=format_usdc(self.charged_usdc),
            remaining_usdc=None if self.remaining_usdc is None else format_usdc(self.remaining_usdc),
            reason=self.reason,
            settlement=self.settlement,
        )
        if self.usage:
            receipt["usage"] = dict(self.usage)
        return receipt


@dataclass(eq=False)
class Reservation:
    """Money set aside for one call; ``hold_id`` is None when settling by deduct."""

    escrow_id: str
    maximum: Decimal
    reason: str
    hold_id: str | None = None
    capture_key: str = field(default_factory=new_idempotency_key)


class Settlement(ABC):
    """How reservations are made and settled; see the module docstring."""

    name: str

    @property
    def settles_by_deduct(self) -> bool:
        """True once the service turned out to have no holds route (settling by deduct instead)."""
        return False

    def open_leases(self) -> tuple[int, Decimal]:
        """Holds serving many calls now open, and what they charged that the service has not confirmed yet."""
        return 0, Decimal("0.000000")

    @abstractmethod
    def reserve(
        self, escrow_id: str, maximum: Decimal, reason: str, *, fresh: bool,
        expires_at: float | None = None, longest_call_s: float | None = None,
    ) -> Reservation:
        """Set ``maximum`` aside on the escrow (which expires at ``expires_at``, service clock) for a call
        that may run ``longest_call_s`` (None: unknown), or raise a GateError. ``fresh``: the escrow's
        facts were just fetched (a 404 then means the service has no holds route)."""

    @abstractmethod
    def settle(self, reservation: Reservation, amount: Decimal) -> Receipt:
        """Charge ``amount`` (≤ the maximum) and close the reservation, or raise SettlementFailed."""

    @abstractmethod
    def void(self, reservation: Reservation) -> None:
        """Give the reservation back to the buyer; never raises."""

    @abstractmethod
    def close(self) -> None:
        """Settle or void every reservation still open."""


class PerCallSettlement(Settlement):
    """One hold per call, captured with ``final: true``; falls back to deduct without holds.

    ``hold_ttl_s``: the TTL of a hold for a call whose price names no longest call; a price that does
    (``PerSecond(max_seconds=…)``) gets ``max_seconds + CAPTURE_ALLOWANCE_S`` when that is longer.
    """

    name = "per_call"

    def __init__(self, service: EscrowService, *, hold_ttl_s: int = 300, settle_retries: int = 4):
        if isinstance(hold_ttl_s, bool) or not isinstance(hold_ttl_s, int) or hold_ttl_s < 1:
            raise ValueError("the per-call hold TTL must be a positive int of seconds")
        self._service = service
        self._client = service.client
        self._clock = service.clock
        self.hold_ttl_s = hold_ttl_s
        self._settle_retries = settle_retries
        self._lock = threading.Lock()
        self._open: dict[int, Reservation] = {}
        self._hold_deadline: dict[str, float] = {}
        self._deduct = False  # set once the service turns out to have no holds route
        self._closed = False

    @property
    def settles_by_deduct(self) -> bool:
        return self._deduct

    def ttl_for(self, longest_call_s: float | None) -> int:
        """The TTL of a hold for a call that may run ``longest_call_s`` (None: unknown)."""
        if longest_call_s is None:
            return self.hold_ttl_s
        return max(self.hold_ttl_s, math.ceil(longest_call_s) + CAPTURE_ALLOWANCE_S)

    # -- reserve ------------------------------------------------------------------------

    def reserve(self, escrow_id, maximum, reason, *, fresh, expires_at=None, longest_call_s=None) -> Reservation:
        return self._reserve(escrow_id, maximum, reason, self.ttl_for(longest_call_s), fresh)

    def _reserve(self, escrow_id: str, maximum: Decimal, reason: str, ttl_seconds: int, fresh: bool) -> Reservation:
        if self._deduct:
            return self._reserve_for_deduct(escrow_id, maximum, reason)
        amount = max(maximum, MICRO_USDC)  # a hold needs a positive amount
        sent_at = self._clock.now()  # the hold is made after this, so it lives at least ttl_seconds from here
        try:
            hold = self._client.open_hold(escrow_id, amount, ttl_seconds, key=new_idempotency_key())
        except EscrowApiError as exc:
            if self.holds_route_missing(escrow_id, exc, fresh):
                self.switch_to_deduct()
                return self._reserve_for_deduct(escrow_id, maximum, reason)
            raise self._service.refusal(escrow_id, exc, maximum) from exc
        reservation = Reservation(escrow_id, amount, reason, hold.hold_id)
        # Before this moment (gate clock) the hold cannot have expired on the service: it was made after
        # sent_at with our TTL, unless its escrow's expiry came first (placed with the clocks' uncertainty).
        # An unreadable expiry: never infer a capture from hold_closed.
        deadline = sent_at if hold.expires_at is None else min(
            sent_at + ttl_seconds, self._clock.earliest_local(hold.expires_at)
        )
        with self._lock:
            self._open[id(reservation)] = reservation
            self._hold_deadline[hold.hold_id] = deadline
        return reservation

    def holds_route_missing(self, escrow_id: str, exc: EscrowApiError, fresh: bool) -> bool:
        """A 404/405 on the holds route for an escrow that GET returns: the service has no holds."""
        if exc.status == 405:
            return True
        if exc.status != 404:
            return False
        return fresh or self._service.exists(escrow_id)

    def switch_to_deduct(self) -> None:
        """The service has no holds route: settle by deduct from now on (said once in the log)."""
        with self._lock:
            first = not self._deduct
            self._deduct = True
        if first:
            log.warning(
                "The escrow service has no holds route: this gate now settles by deduct once each "
                "call has succeeded (a concurrent call may win the funds; that result is then withheld)."
            )

    def _reserve_for_deduct(self, escrow_id, maximum, reason) -> Reservation:
        # Without holds nothing can be set aside: check the balance now (advisory; the
        # deduct after the call is the real, atomic check) so an empty escrow costs no compute.
        remaining = self._service.remaining(escrow_id)
        if remaining is not None and remaining < maximum:
            raise InsufficientFunds(escrow_id, maximum, remaining)
        return Reservation(escrow_id, maximum, reason, None)

    # -- settle -------------------------------------------------------------------------

    def settle(self, reservation: Reservation, amount: Decimal) -> Receipt:
        if amount > reservation.maximum:
            raise AssertionError("a charge above its reservation")  # pricing guarantees this
        if reservation.hold_id is None:
            return self._settle_by_deduct(reservation, amount)
        try:
            return self._capture(reservation, amount)
        finally:
            self._forget(reservation)

    def charge_on_fresh_hold(
        self, escrow_id: str, amount: Decimal, reason: str, *, why: str, cause: Exception | None
    ) -> Receipt:
        """Charge a call whose own reservation is gone (``why``) on a fresh hold, captured before returning."""
        try:  # captured right away: the hold needs to live only as long as a capture may take
            fresh = self._reserve(escrow_id, amount, reason, CAPTURE_ALLOWANCE_S, False)
        except GateError as refusal:
            message = f"The result was ready, but {why} and {refusal.sentence}"
            raise SettlementFailed(escrow_id, message) from (cause or refusal)
        if fresh.hold_id is None:  # the service lost its holds route meanwhile
            return self._settle_by_deduct(fresh, amount)
        try:
            return self._capture(fresh, amount, first_hold=False)
        finally:
            self._forget(fresh)

    def _capture(self, reservation: Reservation, amount: Decimal, *, first_hold: bool = True) -> Receipt:
        r = reservation
        try:
            settled = self._client.capture(
                r.escrow_id, r.hold_id, amount, key=r.capture_key, final=True, retries=self._settle_retries
            )
        except EscrowApiError as exc:
            if self._expired_under_the_call(exc, amount, first_hold):
                # The hold expired while the call ran (a stream longer than its TTL): its output may be out
                # already, so charge it on a fresh hold, captured now; the result is handed out only if that lands.
                # (No void first: the hold is closed already.)
                return self._recharge(r, amount, exc)
            self._void_quietly(r)
            raise self._service.refusal(r.escrow_id, exc, amount, ran=True) from exc
        except ServiceUnavailable as exc:
            return self._resolve_unconfirmed_capture(r, amount, exc, first_hold=first_hold)
        return self._receipt(r, settled.hold_id, settled.captured, settled.remaining, amount)

    def _expired_under_the_call(self, exc: EscrowApiError, amount: Decimal, first_hold: bool) -> bool:
        return exc.code == "hold_closed" and first_hold and amount > 0 and not self._closed

    def _recharge(self, r: Reservation, amount: Decimal, cause: Exception) -> Receipt:
        return self.charge_on_fresh_hold(r.escrow_id, amount, r.reason, why="its reservation had expired", cause=cause)

    def _resolve_unconfirmed_capture(
        self, r: Reservation, amount: Decimal, cause: Exception, *, first_hold: bool = True
    ) -> Receipt:
        """The capture may or may not have gone through: ask the service by voiding."""
        try:
            voided = self._client.void(r.escrow_id, r.hold_id, key=new_idempotency_key(), retries=self._settle_retries)
        except EscrowApiError as exc:
            if exc.code in ("hold_closed", "escrow_closed"):
                # Closed already: either our capture went through, or the hold expired (or its escrow did;
                # a released escrow answers 410 for a hold closed by our capture). Replaying the capture
                # with its own key tells which.
                unknown = False
                try:
                    settled = self._client.capture(
                        r.escrow_id, r.hold_id, amount, key=r.capture_key, final=True, retries=1
                    )
                except EscrowApiError as refused:  # its stored refusal: our capture was never applied
                    if self._expired_under_the_call(refused, amount, first_hold):
                        return self._recharge(r, amount, refused)  # the hold expired under it
                except ServiceUnavailable:
                    unknown = True
                else:
                    return self._receipt(r, settled.hold_id, settled.captured, settled.remaining, amount)
                if exc.code == "hold_closed" and self._captured_for_sure(r):
                    # Only this gate touches its hold and it never voided it; an expired escrow
                    # answers 410, not hold_closed; the hold's TTL has not run out: so the hold
                    # closed because our capture went through. The buyer paid: hand the result out.
                    log.warning("capture on %s confirmed by hold_closed (its answer was lost)", r.hold_id)
                    return self._receipt(r, r.hold_id, amount, None, amount)
                if unknown:  # closed near its expiry and no answer to say whether by our capture
                    raise SettlementFailed(
                        r.escrow_id,
                        "The result was ready, but the payment service stopped answering before the charge "
                        f"was confirmed. If the charge was not recorded, you were not charged; "
                        f"if it was, {format_usdc(amount)} USDC was paid for this withheld result.",
                    ) from cause
            raise SettlementFailed(
                r.escrow_id,
                "The result was ready, but the payment service failed while it was being charged, "
                f"and the reservation is gone. {NOT_CHARGED}",
            ) from cause
        except ServiceUnavailable:
            log.error("capture on %s unconfirmed and the service is unreachable", r.hold_id)
            raise SettlementFailed(
                r.escrow_id,
                "The result was ready, but the payment service stopped answering before the charge "
                "was confirmed. If the charge was not recorded, you were not charged: the "
                f"{format_usdc(r.maximum)} USDC reserved returns to your escrow when the hold expires.",
            ) from cause
        if voided.captured is not None and voided.captured > 0:  # our capture had gone through after all
            return self._receipt(r, voided.hold_id, voided.captured, voided.remaining, voided.captured)
        raise SettlementFailed(
            r.escrow_id,
            f"The result was ready, but the payment service failed while it was being charged. {NOT_CHARGED}",
        ) from cause

    def _settle_by_deduct(self, r: Reservation, amount: Decimal) -> Receipt:
        if amount <= 0:
            return Receipt(r.escrow_id, None, Decimal("0.000000"), None, r.reason, "deduct")
        try:
            deduction: Deduction = self._client.deduct(
                r.escrow_id, amount, r.reason, key=r.capture_key, retries=self._settle_retries
            )
        except EscrowApiError as exc:
            raise self._service.refusal(r.escrow_id, exc, amount, ran=True) from exc
        except ServiceUnavailable as exc:
            raise SettlementFailed(
                r.escrow_id,
                "The result was ready, but the payment service stopped answering before the charge "
                "was confirmed. If the charge was not recorded, you were not charged.",
            ) from exc
        charged = amount if deduction.amount is None else deduction.amount
        self._service.stats.captured(charged)
        return Receipt(r.escrow_id, deduction.deduction_id, charged, deduction.remaining, r.reason, "deduct")

    def _receipt(
        self, r: Reservation, hold_id: str | None, charged: Decimal | None, remaining: Decimal | None, asked: Decimal
    ) -> Receipt:
        # A 2xx means the money moved; fields we cannot read fall back to what we asked for.
        charged = asked if charged is None else charged
        self._service.stats.captured(charged)
        return Receipt(r.escrow_id, hold_id or r.hold_id, charged, remaining, r.reason, "hold")

    # -- void ---------------------------------------------------------------------------

    def void(self, reservation: Reservation) -> None:
        if reservation.hold_id is None:
            return
        try:
            self._void_quietly(reservation)
        finally:
            self._forget(reservation)

    def _void_quietly(self, r: Reservation) -> None:
        try:
            self._client.void(r.escrow_id, r.hold_id, key=new_idempotency_key(), retries=self._settle_retries)
        except EscrowApiError as exc:
            if exc.code != "hold_closed":
                log.warning("void of %s refused: %s %s", r.hold_id, exc.status, exc.code)
        except ServiceUnavailable:
            # The hold expires on the service by itself and returns to the buyer.
            log.warning("void of %s failed; the hold will expire back to the buyer", r.hold_id)

    def _captured_for_sure(self, r: Reservation) -> bool:
        with self._lock:
            deadline = self._hold_deadline.get(r.hold_id)
        return deadline is not None and self._clock.now() < deadline

    def _forget(self, r: Reservation) -> None:
        with self._lock:
            self._open.pop(id(r), None)
            if r.hold_id is not None:
                self._hold_deadline.pop(r.hold_id, None)

    def close(self) -> None:
        with self._lock:
            self._closed = True  # a call finishing after this is not charged on a fresh hold
            still_open = list(self._open.values())
            self._open.clear()
        for reservation in still_open:
            self._void_quietly(reservation)
