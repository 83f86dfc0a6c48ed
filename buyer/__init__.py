"""Pay for and call paid Gradio Spaces as a buyer: escrows within a budget, typed refusals, a statement.

    from buyer import Wallet

    wallet = Wallet.sandbox("http://127.0.0.1:7860")        # or Wallet.from_env(): PF_BUYER_KEY
    with wallet.space("http://127.0.0.1:7860", budget_usdc="0.05") as space:
        result, receipt = space.call("classify", "I love this!")
    print(space.statement)

Money is ``Decimal`` with 6 decimals; amounts are accepted as decimal strings, ints or Decimals, never
floats. ``requests`` is the only dependency; ``gradio_client`` is imported only for
``transport="gradio_client"``. The library imports nothing of the Space (``gate``, ``space``, ``app``).
"""

from .errors import (
    BudgetExhausted,
    ChargeUnknown,
    EscrowClosed,
    EscrowExpired,
    EscrowNotFound,
    EscrowServiceError,
    FunctionFailed,
    InsufficientFunds,
    InvalidEscrowId,
    InvalidInput,
    MissingEscrowId,
    PaymentError,
    PriceTooHigh,
    ServiceUnavailable,
    SettlementFailed,
)
from .session import TRANSPORTS, SpaceSession
from .statement import EscrowStatement, Receipt, Statement
from .wallet import HOSTED_ESCROW_URL, Wallet

__all__ = [
    "HOSTED_ESCROW_URL",
    "TRANSPORTS",
    "BudgetExhausted",
    "ChargeUnknown",
    "EscrowClosed",
    "EscrowExpired",
    "EscrowNotFound",
    "EscrowServiceError",
    "EscrowStatement",
    "FunctionFailed",
    "InsufficientFunds",
    "InvalidEscrowId",
    "InvalidInput",
    "MissingEscrowId",
    "PaymentError",
    "PriceTooHigh",
    "Receipt",
    "ServiceUnavailable",
    "SettlementFailed",
    "SpaceSession",
    "Statement",
    "Wallet",
]
