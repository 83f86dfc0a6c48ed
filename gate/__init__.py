"""Paid functions: each call is charged to the buyer's USDC escrow.

    gate = EscrowGate(escrow_url, api_key)          # or EscrowGate.from_env()

    @gate.paid(PerCall("0.001"), reason="sentiment classification", receipt=True)
    def classify(text: str) -> str: ...             # a Gradio event, API and MCP tool

    @app.post("/v1/classify")
    @gate.paid_route(PerCall("0.001"), reason="sentiment classification")
    def classify_route(body: Text) -> dict: ...     # a plain FastAPI/Starlette route

Reserve the maximum price, run, charge what the call cost; a failed call costs nothing.
The gate settles what it holds when it is closed, at the latest when the process exits.
"""

from ._gate import EscrowGate
from ._journal import JournalInUse
from ._lease import Lease
from ._settlement import Receipt
from .errors import (
    EscrowClosed,
    EscrowExpired,
    EscrowNotFound,
    FunctionFailed,
    GateError,
    InsufficientFunds,
    InvalidEscrowId,
    InvalidInput,
    MissingEscrowId,
    ServiceUnavailable,
    SettlementFailed,
)
from .pricing import Charge, PerCall, PerItem, PerSecond, PerToken, Price

__all__ = [
    "Charge",
    "EscrowClosed",
    "EscrowExpired",
    "EscrowGate",
    "EscrowNotFound",
    "FunctionFailed",
    "GateError",
    "InsufficientFunds",
    "InvalidEscrowId",
    "InvalidInput",
    "JournalInUse",
    "Lease",
    "MissingEscrowId",
    "PerCall",
    "PerItem",
    "PerSecond",
    "PerToken",
    "Price",
    "Receipt",
    "ServiceUnavailable",
    "SettlementFailed",
]
