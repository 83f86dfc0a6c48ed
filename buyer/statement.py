"""What a session paid: each call's receipt, and per escrow what the escrow service says happened."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ._money import _fmt, _parse

__all__ = ["EscrowStatement", "Receipt", "Statement"]

_FIELDS = ("escrow_id", "charge_id", "charged_usdc", "remaining_usdc", "reason", "settlement", "model")


@dataclass(frozen=True)
class Receipt:
    """What one paid call cost, as the Space reported it."""

    escrow_id: str
    charge_id: str | None
    charged_usdc: Decimal
    remaining_usdc: Decimal | None = None
    reason: str | None = None
    settlement: str | None = None
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the Space's other receipt fields

    @classmethod
    def _from_dict(cls, receipt: Any, escrow_id: str) -> Receipt:
        if not isinstance(receipt, dict):
            receipt = {}
        charged = _parse(receipt.get("charged_usdc"))
        return cls(
            escrow_id=str(receipt.get("escrow_id") or escrow_id),
            charge_id=receipt.get("charge_id"),
            charged_usdc=Decimal("0.000000") if charged is None else charged,
            remaining_usdc=_parse(receipt.get("remaining_usdc")),
            reason=receipt.get("reason"),
            settlement=receipt.get("settlement"),
            model=receipt.get("model"),
            extra={k: v for k, v in receipt.items() if k not in _FIELDS},
        )

    def as_dict(self) -> dict[str, Any]:
        """The receipt as JSON-able data, money as 6-decimal strings."""
        return {
            **self.extra,
            "escrow_id": self.escrow_id,
            "charge_id": self.charge_id,
            "charged_usdc": _fmt(self.charged_usdc),
            "remaining_usdc": None if self.remaining_usdc is None else _fmt(self.remaining_usdc),
            "reason": self.reason,
            "settlement": self.settlement,
            "model": self.model,
        }


@dataclass(frozen=True)
class EscrowStatement:
    """One escrow the session opened: its receipts against the escrow service's own figures."""

    escrow_id: str
    status: str  # the service's: active, released, refunded, expired (or "unknown" if it could not be read)
    amount_usdc: Decimal  # locked when opened
    calls: int  # paid calls (receipts) on it
    charged_usdc: Decimal  # the sum of those receipts
    captured_usdc: Decimal  # the service's spent_usdc: settled to the seller
    held_usdc: Decimal  # still in the Space's open holds (returned to the buyer when they close)
    remaining_usdc: Decimal
    refunded_usdc: Decimal  # returned to the buyer so far
    released: bool  # this session released it (or found it already closed)
    note: str = ""  # why it was not released, when it was not


@dataclass(frozen=True)
class Statement:
    """A session's account: calls, receipts, what the escrow service captured and refunded, per escrow and in all."""

    space_url: str
    seller_id: str
    budget_usdc: Decimal
    calls: int  # paid calls
    refused: int  # calls refused or failed without a charge
    unknown: int  # calls whose connection was lost after sending (ChargeUnknown)
    escrows: tuple[EscrowStatement, ...]

    @property
    def locked_usdc(self) -> Decimal:
        """The sum of the escrows' amounts (never above the budget)."""
        return self._total("amount_usdc")

    @property
    def charged_usdc(self) -> Decimal:
        """The sum of all receipts."""
        return self._total("charged_usdc")

    @property
    def captured_usdc(self) -> Decimal:
        """What the escrow service settled to the seller, all escrows together."""
        return self._total("captured_usdc")

    @property
    def held_usdc(self) -> Decimal:
        """What the Space still holds; it comes back to the buyer when its holds close."""
        return self._total("held_usdc")

    @property
    def refunded_usdc(self) -> Decimal:
        """What came back to the buyer so far."""
        return self._total("refunded_usdc")

    @property
    def matches(self) -> bool:
        """Whether the service captured exactly what the receipts say, on every escrow."""
        return all(e.captured_usdc == e.charged_usdc for e in self.escrows)

    @property
    def settled(self) -> bool:
        """Whether it is final: it matches, every escrow is closed and nothing is held any more."""
        return self.matches and all(e.status != "active" and e.held_usdc == 0 for e in self.escrows)

    def _total(self, field_name: str) -> Decimal:
        return sum((getattr(e, field_name) for e in self.escrows), Decimal("0.000000"))

    def __str__(self) -> str:
        lines = [
            f"{self.space_url}: {self.calls} paid calls, {self.refused} not charged, {self.unknown} unknown; "
            f"budget {_fmt(self.budget_usdc)} USDC",
            f"{'escrow':<30} {'status':<9} {'locked':>10} {'receipts':>10} {'captured':>10} {'held':>10} "
            f"{'refunded':>10}",
        ]
        for e in self.escrows:
            lines.append(
                f"{e.escrow_id:<30} {e.status:<9} {_fmt(e.amount_usdc):>10} {_fmt(e.charged_usdc):>10} "
                f"{_fmt(e.captured_usdc):>10} {_fmt(e.held_usdc):>10} {_fmt(e.refunded_usdc):>10}"
                + (f"  ({e.note})" if e.note else "")
            )
        lines.append(
            f"{'total':<30} {'':<9} {_fmt(self.locked_usdc):>10} {_fmt(self.charged_usdc):>10} "
            f"{_fmt(self.captured_usdc):>10} {_fmt(self.held_usdc):>10} {_fmt(self.refunded_usdc):>10}"
        )
        return "\n".join(lines)
