"""Settlement strategies: how a reserved maximum becomes a charge.

A strategy has a narrow interface, used by the gate and nothing else::

    reserve(escrow_id, maximum, reason, ttl_seconds, *, fresh, expires_at) -> Reservation
                                                               # or raise a GateError: not charged
    settle(reservation, amount) -> Receipt                     # or raise SettlementFailed
    release(reservation) -> None                               # void; never raises
    close() -> None                                            # release whatever is still held

``PerCallSettlement`` opens one hold per call and captures it with
``final: true`` (or, on a service without holds, deducts once the function
succeeded). A lease strategy (one hold serving many calls, captured in
batches) fits behind the same four methods.
"""

from __future__ import annotations

import logging
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from ._clock import parse_service_time
from .client import EscrowClient, new_idempotency_key
from .errors import (
    NOT_CHARGED,
    EscrowApiError,
    GateError,
    InsufficientFunds,
    ServiceUnavailable,
    SettlementFailed,
)
from .money import MICRO_USDC, format_usdc, parse_usdc

__all__ = ["PerCallSettlement", "Receipt", "Reservation", "Settlement"]

log = logging.getLogger("gate")

_HOLD_ID = re.compile(r"hold_[A-Za-z0-9]{20,40}", re.ASCII)
_DEDUCTION_ID = re.compile(r"ded_[A-Za-z0-9]{20,40}", re.ASCII)


@dataclass(frozen=True)
class Receipt:
    """What one successful call cost: the buyer's proof of payment."""

    escrow_id: str
    charge_id: str | None  # the hold (per_call) or deduction the charge was settled on
    charged_usdc: Decimal
    remaining_usdc: Decimal | None  # the escrow's remaining balance right after the charge
    reason: str
    settlement: str = "hold"  # "hold" or "deduct"

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
        return receipt


@dataclass(eq=False)
class Reservation:
    """Money set aside for one call; ``hold_id`` is None when settling by deduct."""

    escrow_id: str
    maximum: Decimal
    reason: str
    hold_id: str | None = None
    capture_key: str = field(default_factory=new_idempotency_key)


class EscrowView(Protocol):
    """What a strategy asks of the gate: fresh facts and the one refusal mapping."""

    def escrow_exists(self, escrow_id: str) -> bool: ...

    def remaining(self, escrow_id: str) -> Decimal | None: ...

    def refusal(self, escrow_id: str, error: EscrowApiError, price: Decimal) -> GateError: ...


class Settlement(ABC):
    """How reservations are made and settled; see the module docstring."""

    name: str

    @abstractmethod
    def reserve(
        self, escrow_id: str, maximum: Decimal, reason: str, ttl_seconds: int, *, fresh: bool,
        expires_at: float | None = None,
    ) -> Reservation:
        """Set ``maximum`` aside on the escrow (expiring at ``expires_at``, service clock), or raise a GateError."""

    @abstractmethod
    def settle(self, reservation: Reservation, amount: Decimal) -> Receipt:
        """Charge ``amount`` (≤ the maximum) and close the reservation, or raise SettlementFailed."""

    @abstractmethod
    def release(self, reservation: Reservation) -> None:
        """Give the reservation back to the buyer; never raises."""

    @abstractmethod
    def close(self) -> None:
        """Release every reservation still open."""


class PerCallSettlement(Settlement):
    """One hold per call, captured with ``final: true``; falls back to deduct without holds."""

    name = "per_call"

    def __init__(
        self,
        client: EscrowClient,
        view: EscrowView,
        *,
        settle_retries: int = 4,
    ):
        self._client = client
        self._clock = client.service_clock
        self._view = view
        self._settle_retries = settle_retries
        self._lock = threading.Lock()
        self._open: dict[int, Reservation] = {}
        self._hold_deadline: dict[str, float] = {}
        self._deduct = False  # set once the service turns out to have no holds route
        self._closed = False

    @property
    def uses_deduct(self) -> bool:
        return self._deduct

    # -- reserve ------------------------------------------------------------------------

    def reserve(self, escrow_id, maximum, reason, ttl_seconds, *, fresh, expires_at=None) -> Reservation:
        if self._deduct:
            return self._reserve_for_deduct(escrow_id, maximum, reason)
        amount = max(maximum, MICRO_USDC)  # a hold needs a positive amount
        sent_at = self._clock.now()  # the hold is made after this, so it lives at least ttl_seconds from here
        try:
            body = self._client.open_hold(escrow_id, amount, ttl_seconds, key=new_idempotency_key())
        except EscrowApiError as exc:
            if self._holds_route_missing(escrow_id, exc, fresh):
                self.switch_to_deduct()
                return self._reserve_for_deduct(escrow_id, maximum, reason)
            raise self._view.refusal(escrow_id, exc, maximum) from exc
        hold_id = body.get("hold_id")
        if not isinstance(hold_id, str) or not _HOLD_ID.fullmatch(hold_id):
            log.warning("escrow service answered a hold without a usable hold_id")
            raise ServiceUnavailable("The payment service gave an unusable answer")
        reservation = Reservation(escrow_id, amount, reason, hold_id)
        # Before this moment (gate clock) the hold cannot have expired on the service: it was made after
        # sent_at with our TTL, unless its escrow's expiry came first (placed with the clocks' uncertainty).
        deadline = sent_at + ttl_seconds
        try:
            deadline = min(deadline, self._clock.earliest_local(parse_service_time(body.get("expires_at"))))
        except ValueError:
            deadline = sent_at  # unreadable expiry: never infer a capture from hold_closed
        with self._lock:
            self._open[id(reservation)] = reservation
            self._hold_deadline[hold_id] = deadline
        return reservation

    def _holds_route_missing(self, escrow_id: str, exc: EscrowApiError, fresh: bool) -> bool:
        """A 404/405 on the holds route for an escrow that GET returns: the service has no holds."""
        if exc.status == 405:
            return True
        if exc.status != 404:
            return False
        return fresh or self._view.escrow_exists(escrow_id)

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
        remaining = self._view.remaining(escrow_id)
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

    def _capture(self, reservation: Reservation, amount: Decimal, *, first_hold: bool = True) -> Receipt:
        r = reservation
        try:
            body = self._client.capture(
                r.escrow_id, r.hold_id, amount, key=r.capture_key, final=True, retries=self._settle_retries
            )
        except EscrowApiError as exc:
            if exc.code == "hold_closed" and first_hold and amount > 0 and not self._closed:
                # The hold expired while the call ran (a stream longer than its TTL): its output may be out
                # already, so charge it on a fresh hold, captured now; the result is handed out only if that lands.
                # (No void first: the hold is closed already.)
                return self._capture_on_fresh_hold(r, amount, exc)
            self._void_quietly(r)
            raise self._settlement_refused(r, exc) from exc
        except ServiceUnavailable as exc:
            return self._resolve_unconfirmed_capture(r, amount, exc, first_hold=first_hold)
        return self._receipt(r, body, amount, "captured_usdc")

    def _capture_on_fresh_hold(self, r: Reservation, amount: Decimal, cause: EscrowApiError) -> Receipt:
        try:
            fresh = self.reserve(r.escrow_id, amount, r.reason, 60, fresh=False)
        except GateError as refusal:
            raise SettlementFailed(
                r.escrow_id, f"The result was ready, but its reservation had expired and {refusal.message}"
            ) from cause
        try:
            return self._capture(fresh, amount, first_hold=False)
        finally:
            self._forget(fresh)

    def _resolve_unconfirmed_capture(
        self, r: Reservation, amount: Decimal, cause: Exception, *, first_hold: bool = True
    ) -> Receipt:
        """The capture may or may not have gone through: ask the service by voiding."""
        try:
            body = self._client.void(r.escrow_id, r.hold_id, key=new_idempotency_key(), retries=self._settle_retries)
        except EscrowApiError as exc:
            if exc.code in ("hold_closed", "escrow_closed"):
                # Closed already: either our capture went through, or the hold expired (or its escrow did;
                # a released escrow answers 410 for a hold closed by our capture). Replaying the capture
                # with its own key tells which.
                unknown = False
                try:
                    body = self._client.capture(
                        r.escrow_id, r.hold_id, amount, key=r.capture_key, final=True, retries=1
                    )
                except EscrowApiError as refused:  # its stored refusal: our capture was never applied
                    if refused.code == "hold_closed" and first_hold and amount > 0 and not self._closed:
                        return self._capture_on_fresh_hold(r, amount, refused)  # the hold expired under it
                except ServiceUnavailable:
                    unknown = True
                else:
                    return self._receipt(r, body, amount, "captured_usdc")
                if exc.code == "hold_closed" and self._captured_for_sure(r):
                    # Only this gate touches its hold and it never voided it; an expired escrow
                    # answers 410, not hold_closed; the hold's TTL has not run out: so the hold
                    # closed because our capture went through. The buyer paid: hand the result out.
                    log.warning("capture on %s confirmed by hold_closed (its answer was lost)", r.hold_id)
                    return Receipt(r.escrow_id, r.hold_id, amount, None, r.reason, "hold")
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
        captured = _amount(body, "captured_usdc")
        if captured is not None and captured > 0:  # our capture had gone through after all
            return self._receipt(r, body, captured, "captured_usdc")
        raise SettlementFailed(
            r.escrow_id,
            f"The result was ready, but the payment service failed while it was being charged. {NOT_CHARGED}",
        ) from cause

    def _settlement_refused(self, r: Reservation, exc: EscrowApiError) -> SettlementFailed:
        if exc.code == "escrow_closed" or exc.status == 410:
            why = "the escrow was closed or expired while the call ran"
        elif exc.code == "hold_closed" or exc.status == 409:
            why = "the reservation expired or was released while the call ran"
        else:
            log.error("escrow service refused a settlement: %s %s", exc.status, exc.code)
            why = "the payment service refused the charge"
        return SettlementFailed(r.escrow_id, f"The result was ready, but {why}. {NOT_CHARGED}")

    def _settle_by_deduct(self, r: Reservation, amount: Decimal) -> Receipt:
        if amount <= 0:
            return Receipt(r.escrow_id, None, Decimal("0.000000"), None, r.reason, "deduct")
        try:
            body = self._client.deduct(r.escrow_id, amount, r.reason, key=r.capture_key, retries=self._settle_retries)
        except EscrowApiError as exc:
            if exc.code == "insufficient_funds":
                raise SettlementFailed(
                    r.escrow_id,
                    f"The result was ready, but the escrow no longer holds {format_usdc(amount)} USDC "
                    f"(another call used it first). {NOT_CHARGED}",
                ) from exc
            raise self._settlement_refused(r, exc) from exc
        except ServiceUnavailable as exc:
            raise SettlementFailed(
                r.escrow_id,
                "The result was ready, but the payment service stopped answering before the charge "
                "was confirmed. If the charge was not recorded, you were not charged.",
            ) from exc
        receipt = self._receipt(r, body, amount, "amount_usdc", id_field="deduction_id")
        return receipt

    def _receipt(
        self, r: Reservation, body: dict, amount: Decimal, charged_field: str, id_field: str = "hold_id"
    ) -> Receipt:
        # A 2xx means the money moved; fields we cannot read fall back to what we asked for.
        charged = _amount(body, charged_field)
        charge_id = body.get(id_field) if isinstance(body.get(id_field), str) else r.hold_id
        if id_field == "deduction_id" and not (isinstance(charge_id, str) and _DEDUCTION_ID.fullmatch(charge_id)):
            charge_id = None
        return Receipt(
            escrow_id=r.escrow_id,
            charge_id=charge_id,
            charged_usdc=amount if charged is None else charged,
            remaining_usdc=_amount(body, "remaining_usdc"),
            reason=r.reason,
            settlement="hold" if r.hold_id else "deduct",
        )

    # -- release ------------------------------------------------------------------------

    def release(self, reservation: Reservation) -> None:
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


def _amount(body: Mapping[str, Any], name: str) -> Decimal | None:
    try:
        return parse_usdc(body.get(name))
    except ValueError:
        return None
