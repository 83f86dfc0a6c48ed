"""Every error the gate raises, each with a buyer-facing message.

    gradio.Error
     └── GateError                 .code: str (stable), .sentence: str (says charged or "not charged"),
          │                         .charged: bool; .message = "[code] sentence" (what Gradio sends);
          │                         .as_dict() = {"code", "message", "charged"} (what JSON answers carry)
          ├── InvalidEscrowId       the escrow ID is malformed (no request was sent)
          │    └── MissingEscrowId  no escrow ID in the argument nor the X-Escrow-Id header
          ├── InvalidInput          the Space's input check (``check=``) refused the inputs
          ├── EscrowNotFound        unknown escrow, or another seller's (indistinguishable by contract)
          ├── EscrowClosed          released or refunded
          ├── EscrowExpired         past its expiry
          ├── InsufficientFunds     the escrow cannot cover this call's maximum price
          ├── ServiceUnavailable    escrow service down, timing out, 5xx, nonsense, or misconfigured
          ├── FunctionFailed        the wrapped function raised; its hold was voided
          └── SettlementFailed      the function ran but the charge could not be settled:
                                    the result is withheld

    Exception
     └── EscrowApiError             internal: a well-formed error answer of the escrow
                                    service (status, code); the gate turns it into one of
                                    the above in one place, ``EscrowService.refusal``
                                    (``gate._service``), and never shows it to a buyer

Transport failures (connection refused, timeouts, 5xx, non-JSON answers) are
mapped to ServiceUnavailable in one place, ``EscrowClient._exchange``, with
``raise ... from exc``. Buyer-facing messages never contain the seller's key,
a traceback or the escrow service's URL. The ASGI adapter (``gate._asgi``)
answers each with an HTTP status: 402 payment, 422 input, 503 service, 500
function.
"""

from __future__ import annotations

from decimal import Decimal

import gradio as gr

from .money import format_usdc

__all__ = [
    "EscrowApiError",
    "EscrowClosed",
    "EscrowExpired",
    "EscrowNotFound",
    "FunctionFailed",
    "GateError",
    "InsufficientFunds",
    "InvalidEscrowId",
    "InvalidInput",
    "MissingEscrowId",
    "ServiceUnavailable",
    "SettlementFailed",
]

NOT_CHARGED = "You were not charged."


class GateError(gr.Error):
    """A refused or failed paid call; ``charged`` says whether the buyer paid for it.

    ``code`` is stable (a program acts on it); ``sentence`` says what happened to a person;
    ``message``, what Gradio sends (browser, gradio_client, MCP), is ``"[code] sentence"``.
    """

    code = "gate_error"
    title = "Payment"

    def __init__(self, message: str, *, charged: bool = False, print_exception: bool = False):
        self.sentence = message
        super().__init__(f"[{self.code}] {message}", title=self.title, print_exception=print_exception)
        self.charged = charged

    def __str__(self) -> str:  # gr.Error shows repr(message); a plain message reads better
        return self.message

    def as_dict(self) -> dict[str, object]:
        """The refusal as JSON answers carry it: ``{"code", "message", "charged"}`` (the message is the sentence)."""
        return {"code": self.code, "message": self.sentence, "charged": self.charged}


class InvalidEscrowId(GateError):
    """The escrow ID is not ``esc_`` + 20–40 letters and digits."""

    code = "invalid_escrow_id"

    def __init__(self, message: str | None = None):
        super().__init__(
            message
            or "The escrow ID is malformed: it must be 'esc_' followed by 20 to 40 "
            f"letters and digits. {NOT_CHARGED}"
        )


class MissingEscrowId(InvalidEscrowId):
    """No escrow ID was given."""

    code = "missing_escrow_id"

    def __init__(self):
        super().__init__(
            "This call is paid: pass the ID of your USDC escrow as the escrow_id "
            f"argument or in the X-Escrow-Id header. {NOT_CHARGED}"
        )


class InvalidInput(GateError):
    """The Space's own input check refused the call before anything was reserved."""

    code = "invalid_input"

    def __init__(self, reason: str):
        reason = reason.strip() or "The input was refused."
        if not reason.endswith((".", "!", "?")):
            reason += "."
        super().__init__(f"{reason} {NOT_CHARGED}")


class EscrowNotFound(GateError):
    """Unknown escrow, or one whose seller is not this Space."""

    code = "escrow_not_found"

    def __init__(self, escrow_id: str):
        super().__init__(
            f"Escrow {escrow_id} was not found, or its seller is not this Space. {NOT_CHARGED}"
        )


class EscrowClosed(GateError):
    """The escrow was released or refunded."""

    code = "escrow_closed"

    def __init__(self, escrow_id: str, status: str = "closed"):
        super().__init__(f"Escrow {escrow_id} is {status}: it cannot pay for calls. {NOT_CHARGED}")


class EscrowExpired(GateError):
    """The escrow is past its expiry."""

    code = "escrow_expired"

    def __init__(self, escrow_id: str):
        super().__init__(f"Escrow {escrow_id} has expired. {NOT_CHARGED}")


class InsufficientFunds(GateError):
    """The escrow cannot cover this call's maximum price."""

    code = "insufficient_funds"

    def __init__(self, escrow_id: str, price: Decimal, remaining: Decimal | None = None):
        self.price = price
        self.remaining = remaining
        if remaining is None:
            left = f"Escrow {escrow_id} does not have enough USDC left"
        else:
            left = f"Escrow {escrow_id} has {format_usdc(remaining)} USDC left"
        super().__init__(f"{left}; this call costs {format_usdc(price)} USDC. {NOT_CHARGED}")


class ServiceUnavailable(GateError):
    """The escrow service could not be used (down, slow, 5xx, nonsense, misconfigured)."""

    code = "service_unavailable"

    def __init__(self, detail: str = "The payment service is unavailable right now"):
        super().__init__(f"{detail}; the call was not run. {NOT_CHARGED} Please retry later.")


class FunctionFailed(GateError):
    """The wrapped function raised; its reservation was released."""

    code = "function_failed"

    def __init__(self, what: str, detail: str | None = None):
        message = detail.rstrip() if detail else f"The {what} failed"
        if not message.endswith((".", "!", "?")):
            message += "."
        super().__init__(f"{message} {NOT_CHARGED}")


class SettlementFailed(GateError):
    """The function ran, but its charge could not be settled, so its result is withheld."""

    code = "settlement_failed"

    def __init__(self, escrow_id: str, detail: str):
        super().__init__(f"{detail} The result of escrow {escrow_id}'s call is withheld.")


class EscrowApiError(Exception):
    """Internal: the escrow service answered with a well-formed error (never shown to buyers)."""

    def __init__(self, status: int, code: str | None, message: str = ""):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
