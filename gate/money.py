"""USDC amounts: ``Decimal`` quantized to 6 places, never ``float``.

Owner-facing values are parsed strictly: rates with :func:`to_decimal`, listed
amounts (a per-call price, a cap) with :func:`to_usdc`, which also refuses more
than 6 decimals since they are charged as listed, never rounded. Amounts coming
back from the escrow service are parsed with :func:`parse_usdc`
(JSON numbers must already have been decoded with ``parse_float=Decimal``).
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, InvalidOperation

USDC_PLACES = 6
MICRO_USDC = Decimal("0.000001")
MAX_USDC = Decimal("1000000000")  # the contract's ceiling for one amount

__all__ = ["MAX_USDC", "MICRO_USDC", "format_usdc", "parse_usdc", "round_up", "to_decimal", "to_usdc"]


def to_decimal(value: object, *, name: str = "amount") -> Decimal:
    """Parse an owner-given amount (str, int or Decimal) into a finite, non-negative Decimal."""
    # bool is an int subclass and float cannot hold money exactly: both are refused.
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise TypeError(
            f"{name} must be a str, int or Decimal (got {type(value).__name__}); "
            f"write money as a string, e.g. \"0.001\""
        )
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise ValueError(f"{name} is not a number: {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"{name} must be finite (got {value!r})")
    if amount < 0:
        raise ValueError(f"{name} must not be negative (got {value!r})")
    if amount > MAX_USDC:
        raise ValueError(f"{name} is above {MAX_USDC} USDC (got {value!r})")
    return amount


def to_usdc(value: object, *, name: str = "amount") -> Decimal:
    """Parse a listed amount like :func:`to_decimal`; ValueError if finer than a micro-USDC."""
    amount = to_decimal(value, name=name)
    if amount != amount.quantize(MICRO_USDC):
        raise ValueError(
            f"{name} {amount:f} has more than 6 decimals: "
            f"USDC is charged in whole micro-USDC ({MICRO_USDC:f})"
        )
    return amount.quantize(MICRO_USDC)


def round_up(amount: Decimal) -> Decimal:
    """Round up to the micro-USDC: the seller is never paid below the listed price."""
    return amount.quantize(MICRO_USDC, rounding=ROUND_CEILING)


def format_usdc(amount: Decimal) -> str:
    """Render an amount with exactly 6 decimals, e.g. ``"0.001000"``."""
    return f"{amount.quantize(MICRO_USDC, rounding=ROUND_CEILING):f}"


def parse_usdc(value: object) -> Decimal:
    """Parse an amount from the escrow service; ValueError if it is not a sane USDC amount."""
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal)):
        raise ValueError(f"not a USDC amount: {type(value).__name__}")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError("not a USDC amount") from None
    if not amount.is_finite() or amount < 0 or amount > MAX_USDC:
        raise ValueError("USDC amount out of range")
    if amount != amount.quantize(MICRO_USDC):
        raise ValueError("USDC amount has more than 6 decimals")
    return amount.quantize(MICRO_USDC)
