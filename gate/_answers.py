"""The escrow service's answers, parsed once into typed objects (``EscrowClient`` returns these).

An answer the gate cannot act on (an escrow without a seller, a hold without a
usable ID) is ``ServiceUnavailable``: the call is refused, not charged. Money
answers are lenient about their *extra* fields: a 2xx capture means the money
moved even when its amounts cannot be read (they are None then).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ._clock import parse_service_time
from .errors import ServiceUnavailable
from .money import parse_usdc

__all__ = ["Deduction", "EscrowFacts", "Hold", "Me", "Settled", "parse_escrow", "parse_hold", "parse_me"]

log = logging.getLogger("gate")

AGENT_ID = re.compile(r"agent_[A-Za-z0-9]{20,40}", re.ASCII)
HOLD_ID = re.compile(r"hold_[A-Za-z0-9]{20,40}", re.ASCII)
DEDUCTION_ID = re.compile(r"ded_[A-Za-z0-9]{20,40}", re.ASCII)


@dataclass(frozen=True)
class Me:
    """``GET /me``: who the gate's key belongs to."""

    agent_id: str


@dataclass(frozen=True)
class EscrowFacts:
    """``GET /escrow/{id}``: what the gate needs to know before reserving on an escrow."""

    escrow_id: str
    seller_id: str
    status: str
    expires_at: float | None  # epoch seconds on the service's clock
    remaining: Decimal | None = None


@dataclass(frozen=True)
class Hold:
    """``POST …/holds``: an open hold."""

    hold_id: str
    expires_at: float | None  # service clock; None if unreadable (the TTL asked for bounds it)
    remaining: Decimal | None


@dataclass(frozen=True)
class Settled:
    """A capture's or a void's answer: the hold as it stands after it."""

    hold_id: str | None
    captured: Decimal | None
    remaining: Decimal | None


@dataclass(frozen=True)
class Deduction:
    """``POST …/deduct``."""

    deduction_id: str | None
    amount: Decimal | None
    remaining: Decimal | None


def _unusable(what: str) -> ServiceUnavailable:
    log.warning("escrow service answered an unusable %s", what)
    return ServiceUnavailable("The payment service gave an unusable answer")


def amount(body: dict, name: str) -> Decimal | None:
    try:
        return parse_usdc(body.get(name))
    except ValueError:
        return None


def time_of(value: Any) -> float | None:
    """A service time (ISO-8601, or epoch seconds as a number) or None if absent or unreadable."""
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return float(value)
    try:
        return parse_service_time(value)
    except ValueError:
        return None


def _id(body: dict, name: str, pattern: re.Pattern) -> str | None:
    value = body.get(name)
    return value if isinstance(value, str) and pattern.fullmatch(value) else None


def parse_me(body: dict) -> Me:
    agent_id = _id(body, "agent_id", AGENT_ID)
    if agent_id is None:
        raise _unusable("GET /me (no agent_id)")
    return Me(agent_id)


def parse_escrow(body: dict, escrow_id: str) -> EscrowFacts:
    answered_id = body.get("id", body.get("escrow_id", escrow_id))
    seller_id, status = body.get("seller_id"), body.get("status")
    if answered_id != escrow_id or not isinstance(seller_id, str) or not isinstance(status, str):
        raise _unusable(f"escrow object for {escrow_id}")
    return EscrowFacts(escrow_id, seller_id, status, time_of(body.get("expires_at")), amount(body, "remaining_usdc"))


def parse_hold(body: dict) -> Hold:
    hold_id = _id(body, "hold_id", HOLD_ID)
    if hold_id is None:
        raise _unusable("hold (no hold_id)")
    return Hold(hold_id, time_of(body.get("expires_at")), amount(body, "remaining_usdc"))


def parse_settled(body: dict) -> Settled:
    return Settled(_id(body, "hold_id", HOLD_ID), amount(body, "captured_usdc"), amount(body, "remaining_usdc"))


def parse_deduction(body: dict) -> Deduction:
    return Deduction(
        _id(body, "deduction_id", DEDUCTION_ID), amount(body, "amount_usdc"), amount(body, "remaining_usdc")
    )
