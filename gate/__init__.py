"""Paid Gradio functions: each call is charged to the buyer's USDC escrow.

    gate = EscrowGate(escrow_url, api_key)          # or EscrowGate.from_env()

    @gate.paid(PerCall("0.001"), reason="sentiment classification", receipt=True)
    def classify(text: str) -> str: ...

Reserve the maximum price, run, charge what the call cost; a failed call costs nothing.
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
from .pricing import PerCall, PerSecond, PerToken, Price

__all__ = [
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
    "PerSecond",
    "PerToken",
    "Price",
    "Receipt",
    "ServiceUnavailable",
    "SettlementFailed",
]
