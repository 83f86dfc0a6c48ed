"""USDC amounts: ``Decimal`` with 6 decimals, sent as decimal strings, never floats."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

MICRO = Decimal("0.000001")


def _usdc(value: Any, name: str) -> Decimal:
    """A caller's amount (str, int or Decimal) as a Decimal of micro-USDC; TypeError for floats, ValueError if bad."""
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise TypeError(f"{name} must be a decimal string, an int or a Decimal (never a float), not {value!r}")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise ValueError(f"{name} must be a decimal amount of USDC, not {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{name} must be a finite amount of at least 0 USDC, not {value!r}")
    if amount != amount.quantize(MICRO):
        raise ValueError(f"{name} has more than 6 decimals (USDC's smallest unit is 0.000001): {value!r}")
    return amount.quantize(MICRO)


def _parse(value: Any) -> Decimal | None:
    """An amount the escrow service or a Space sent (JSON number parsed as Decimal, or a string); None if absent."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value)).quantize(MICRO)
    except InvalidOperation:
        return None


def _fmt(amount: Decimal) -> str:
    """An amount as the escrow service reads it: plain digits, 6 decimals."""
    return f"{amount.quantize(MICRO):f}"
