"""The one boundary to the escrow service: typed answers, cached facts, and the one refusal mapping.

``EscrowService`` is what the gate and its settlement strategies hold: the
HTTP client (``client``: typed answers, transport failures mapped in one
place), the service's clock (``clock``), the escrow facts cache, and
``refusal``, the only place a refusal of the service becomes a buyer-facing
error, before the call ran ("not charged") or after ("the result is withheld").
"""

from __future__ import annotations

import logging
import threading
from decimal import Decimal

from ._answers import EscrowFacts
from ._cache import NOT_FOUND, FactsCache
from ._clock import ServiceClock
from ._limits import LookupLimiter
from ._stats import GateStats
from .client import EscrowClient
from .errors import (
    NOT_CHARGED,
    EscrowApiError,
    EscrowClosed,
    EscrowExpired,
    EscrowNotFound,
    GateError,
    InsufficientFunds,
    ServiceUnavailable,
    SettlementFailed,
)
from .money import format_usdc

__all__ = ["EscrowService"]

log = logging.getLogger("gate")

_CLOSED_STATUSES = ("released", "refunded")


class EscrowService:
    """The escrow service as the gate sees it (see the module docstring)."""

    def __init__(
        self, client: EscrowClient, cache: FactsCache, lookups: LookupLimiter, seller_id: str | None = None,
        stats: GateStats | None = None,
    ):
        self.client = client
        self.stats = stats or GateStats(client.service_clock.now)  # what settlements confirm is counted here
        self.clock: ServiceClock = client.service_clock
        self._cache = cache
        self._lookups = lookups
        self._seller_id = seller_id
        self._seller_lock = threading.Lock()

    # -- who we are, and the escrow a call names ---------------------------------------

    @property
    def seller_id(self) -> str:
        """The gate key's agent ID (``GET /me`` once), or a refusal: not charged."""
        if self._seller_id is None:
            with self._seller_lock:
                if self._seller_id is None:
                    try:
                        self._seller_id = self.client.me().agent_id
                    except EscrowApiError as exc:
                        raise self.refusal("", exc, Decimal(0)) from exc
        return self._seller_id

    @property
    def known_seller_id(self) -> str | None:
        """The seller ID if already learned (never asks the service)."""
        return self._seller_id

    def usable_escrow(self, escrow_id: str, caller: str | None) -> tuple[EscrowFacts, bool]:
        """The escrow's facts (cached, else fetched: ``fresh``) if it can pay this seller now; else a GateError."""
        seller_id = self.seller_id
        cached = self._cache.get(escrow_id)
        if cached is NOT_FOUND:
            raise EscrowNotFound(escrow_id)
        if cached is None:
            self._lookups.check(caller)
            try:
                facts = self._fetch(escrow_id)
            except EscrowNotFound:
                self._lookups.unknown(caller)
                raise
        else:
            facts = cached
        self._refuse_unusable(facts, seller_id)
        return facts, cached is None

    def _refuse_unusable(self, facts: EscrowFacts, seller_id: str) -> None:
        """Wrong seller, closed or expired: refused without reserving anything."""
        if facts.seller_id != seller_id:
            raise EscrowNotFound(facts.escrow_id)
        # Expired only when the service's clock surely says so; near the edge the service's hold decides.
        if facts.status == "expired" or (facts.expires_at is not None and self.clock.surely_past(facts.expires_at)):
            raise EscrowExpired(facts.escrow_id)
        if facts.status != "active":
            raise EscrowClosed(facts.escrow_id, facts.status if facts.status in _CLOSED_STATUSES else "not active")

    def _fetch(self, escrow_id: str) -> EscrowFacts:
        try:
            facts = self.client.get_escrow(escrow_id)
        except EscrowApiError as exc:
            raise self.refusal(escrow_id, exc, Decimal(0)) from exc
        self._cache.put(facts)
        return facts

    def exists(self, escrow_id: str) -> bool:
        """Whether GET finds the escrow (a 404 on its holds route then means: no holds route)."""
        try:
            self._fetch(escrow_id)
        except EscrowNotFound:
            return False
        return True

    def remaining(self, escrow_id: str) -> Decimal | None:
        """The escrow's remaining balance now, or None if it cannot be read (best effort)."""
        try:
            return self.client.get_escrow(escrow_id).remaining
        except (GateError, EscrowApiError):
            return None

    # -- the one refusal mapping -------------------------------------------------------

    def refusal(self, escrow_id: str, error: EscrowApiError, price: Decimal, *, ran: bool = False) -> GateError:
        """What a refusal of the service means to the buyer: before the call ran (``ran=False``) it was
        refused; after, its result is withheld. Either way the buyer was not charged."""
        status, code = error.status, error.code
        if status == 401:
            log.error("the escrow service rejected this Space's API key (401); check PF_API_KEY")
            if not ran:
                return ServiceUnavailable(
                    "The Space cannot take payments right now (its escrow account is misconfigured)"
                )
        if ran:
            why = self._why_not_settled(error, price)
            return SettlementFailed(escrow_id, f"The result was ready, but {why}. {NOT_CHARGED}")
        if status in (403, 404) and escrow_id:
            self._cache.put_not_found(escrow_id)
            return EscrowNotFound(escrow_id)
        if code == "insufficient_funds":
            return InsufficientFunds(escrow_id, price, self.remaining(escrow_id))
        if (code == "escrow_closed" or status == 410) and escrow_id:
            return self._closed_or_expired(escrow_id)
        if status == 429:
            return ServiceUnavailable("The payment service is busy")
        log.error("escrow service refused the gate's request: %s %s %s", status, code, error.message)
        return ServiceUnavailable("The payment service refused the request")

    def _closed_or_expired(self, escrow_id: str) -> GateError:
        self._cache.forget(escrow_id)
        try:
            facts = self._fetch(escrow_id)
            self._refuse_unusable(facts, facts.seller_id)
        except (EscrowClosed, EscrowExpired) as refusal:
            return refusal
        except GateError:
            pass
        return EscrowClosed(escrow_id)

    @staticmethod
    def _why_not_settled(error: EscrowApiError, price: Decimal) -> str:
        if error.code == "insufficient_funds":
            return f"the escrow no longer holds {format_usdc(price)} USDC (another call used it first)"
        if error.code == "escrow_closed" or error.status == 410:
            return "the escrow was closed or expired while the call ran"
        if error.code == "hold_closed" or error.status == 409:
            return "the reservation expired or was released while the call ran"
        if error.status == 401:
            return "the Space's escrow account was refused"
        log.error("escrow service refused a settlement: %s %s", error.status, error.code)
        return "the payment service refused the charge"
