"""Every error a paid call can raise, each with the code a program acts on.

    PaymentError                 .code, .message, .charged (True, False, or None: unknown)
     ├── InvalidEscrowId         the Space refused the escrow ID's form
     │    └── MissingEscrowId    the Space got no escrow ID
     ├── EscrowNotFound          unknown escrow, or another seller's
     ├── EscrowClosed            released or refunded
     ├── EscrowExpired           past its expiry
     ├── InsufficientFunds       the escrow cannot cover the call's price
     ├── InvalidInput            the Space refused the input (also FastAPI's 422, a 413)
     ├── ServiceUnavailable      the Space's escrow service, or the Space itself, could not be reached
     ├── FunctionFailed          the Space's function failed: not charged
     ├── SettlementFailed        the function ran but its charge could not be settled: result withheld
     ├── BudgetExhausted         this library: the session's budget cannot pay for another escrow
     ├── PriceTooHigh            this library: the Space's price is above ``max_price_usdc``
     ├── ChargeUnknown           this library: the connection was lost after the call was sent
     └── EscrowServiceError      this library: the buyer's own call to the escrow service failed

The Space sends each refusal's code: as ``error.code`` on its plain routes, as a ``[code]``
prefix of the message over Gradio's API. A message without one is classified by its words.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

__all__ = [
    "BudgetExhausted",
    "ChargeUnknown",
    "EscrowClosed",
    "EscrowExpired",
    "EscrowNotFound",
    "EscrowServiceError",
    "FunctionFailed",
    "InsufficientFunds",
    "InvalidEscrowId",
    "InvalidInput",
    "MissingEscrowId",
    "PaymentError",
    "PriceTooHigh",
    "ServiceUnavailable",
    "SettlementFailed",
]

_UNSET: Any = object()


class PaymentError(Exception):
    """A paid call that was refused, failed, or whose charge is unknown; ``charged`` says whether it was paid."""

    code = "payment_error"
    _charged: bool | None = False  # what a refusal of this kind means when the Space does not say

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        charged: bool | None = _UNSET,
        status: int | None = None,
        escrow_id: str | None = None,
        retry_after: float | None = None,
        payment: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.charged = type(self)._charged if charged is _UNSET else charged
        self.status = status  # the HTTP status, when the refusal came as one
        self.escrow_id = escrow_id  # the escrow the call was paid from, when there was one
        self.retry_after = retry_after  # seconds the Space asked to wait (503 Retry-After)
        self.payment = payment  # a 402's "payment" block: seller_id, price_usdc, escrow_api

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class InvalidEscrowId(PaymentError):
    """The Space refused the escrow ID's form."""

    code = "invalid_escrow_id"


class MissingEscrowId(InvalidEscrowId):
    """The Space got no escrow ID."""

    code = "missing_escrow_id"


class EscrowNotFound(PaymentError):
    """The Space does not know the escrow, or its seller is not that Space."""

    code = "escrow_not_found"


class EscrowClosed(PaymentError):
    """The escrow was released or refunded."""

    code = "escrow_closed"


class EscrowExpired(PaymentError):
    """The escrow is past its expiry."""

    code = "escrow_expired"


class InsufficientFunds(PaymentError):
    """The escrow cannot cover the call's price."""

    code = "insufficient_funds"


class InvalidInput(PaymentError):
    """The Space refused the input before anything was reserved."""

    code = "invalid_input"


class ServiceUnavailable(PaymentError):
    """The Space's escrow service (or the Space) could not be used; nothing ran, so a retry is safe."""

    code = "service_unavailable"


class FunctionFailed(PaymentError):
    """The Space's function failed; its reservation was released."""

    code = "function_failed"


class SettlementFailed(PaymentError):
    """The function ran but its charge could not be settled, so the Space withheld the result."""

    code = "settlement_failed"


class BudgetExhausted(PaymentError):
    """The session's budget cannot pay for another escrow; ``__cause__`` is the last escrow's refusal."""

    code = "budget_exhausted"

    def __init__(self, message: str, *, budget_usdc: Decimal, locked_usdc: Decimal, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.budget_usdc = budget_usdc
        self.locked_usdc = locked_usdc


class PriceTooHigh(PaymentError):
    """The Space's price is above the session's ``max_price_usdc`` (or unknown); nothing was spent."""

    code = "price_too_high"

    def __init__(self, message: str, *, price_usdc: Decimal | None, max_price_usdc: Decimal, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.price_usdc = price_usdc
        self.max_price_usdc = max_price_usdc


class ChargeUnknown(PaymentError):
    """The connection was lost after the call was sent: it may have been charged, so it is not retried."""

    code = "charge_unknown"
    _charged = None


class EscrowServiceError(PaymentError):
    """The buyer's own call to the escrow service (open, read, release, faucet) failed; ``code`` is the service's."""

    code = "escrow_service_error"
    _charged = None


_SPACE_ERRORS: dict[str, type[PaymentError]] = {
    cls.code: cls
    for cls in (
        InvalidEscrowId, MissingEscrowId, EscrowNotFound, EscrowClosed, EscrowExpired, InsufficientFunds,
        InvalidInput, ServiceUnavailable, FunctionFailed, SettlementFailed,
    )
}

_CODE_PREFIX = re.compile(r"\s*\[([a-z][a-z0-9_]*)\]\s*(.*)", re.DOTALL)

# A message without a [code] prefix (an older gate): its words, first match wins; any other
# "You were not charged." sentence is an input check's refusal (invalid_input).
_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("this call is paid: pass the id", "missing_escrow_id"),
    ("escrow id is malformed", "invalid_escrow_id"),
    ("was not found", "escrow_not_found"),
    ("has expired", "escrow_expired"),
    ("cannot pay for calls", "escrow_closed"),
    ("usdc left", "insufficient_funds"),
    ("payment service is unavailable", "service_unavailable"),
    ("please retry later", "service_unavailable"),
    ("is withheld", "settlement_failed"),
    ("failed", "function_failed"),
)


def _space_error(code: str | None, message: str, **kw: Any) -> PaymentError:
    """The typed error for a Space's refusal code (an unknown code: a plain PaymentError carrying it)."""
    cls = _SPACE_ERRORS.get(code or "")
    if cls is None:
        kw.setdefault("charged", None)
        return PaymentError(message, code=code or "unknown", **kw)
    return cls(message, **kw)


def _gradio_error(text: Any, **kw: Any) -> PaymentError:
    """The typed error for a Gradio error message: ``"[code] sentence"``, else classified by its words."""
    message = text if isinstance(text, str) and text.strip() else "The Space reported an error without a message."
    match = _CODE_PREFIX.fullmatch(message)
    if match:
        return _space_error(match.group(1), match.group(2).strip(), **kw)
    lowered = message.lower()
    if "not charged" in lowered:
        kw.setdefault("charged", False)
    code = next((code for words, code in _KEYWORDS if words in lowered), None)
    if "not charged" not in lowered and code in (None, "function_failed"):
        kw.setdefault("charged", None)  # not the gate's words: nothing says it was not charged
        return PaymentError(message, code="unknown", **kw)
    # The gate's other refusals say "not charged" after a sentence of the Space's own: its input check's.
    return _space_error(code or "invalid_input", message, **kw)
