"""USDC amounts: request values (JSON numbers or decimal strings) -> integer micro-USDC -> answer strings. Never float."""

from __future__ import annotations

import re
from decimal import Decimal

from .errors import invalid_amount

MICRO_PER_USDC = 1_000_000
MAX_AMOUNT_MICRO = 1_000_000_000 * MICRO_PER_USDC
_DECIMAL_STRING = re.compile(r"[0-9]+(\.[0-9]+)?")  # ASCII digits only: \d would accept other scripts' digits


def parse_amount(value: object, field: str = "amount_usdc", *, allow_zero: bool = False) -> int:
    """A request amount (Decimal from the JSON parser, or a plain decimal string) as integer micro-USDC."""
    if isinstance(value, bool) or value is None:
        raise invalid_amount(f"{field} must be a number or a decimal string.")
    if isinstance(value, str):
        if not _DECIMAL_STRING.fullmatch(value):
            raise invalid_amount(f"{field} must be plain digits with at most one point, no sign or exponent.")
        value = Decimal(value)
    elif isinstance(value, int):
        value = Decimal(value)
    if not isinstance(value, Decimal):
        raise invalid_amount(f"{field} must be a number or a decimal string.")
    if not value.is_finite():
        raise invalid_amount(f"{field} must be a finite number.")
    if value.is_signed():  # also -0
        raise invalid_amount(f"{field} must not be negative.")
    if value > MAX_AMOUNT_MICRO // MICRO_PER_USDC:  # compared before scaling: 1e999999 must not overflow
        raise invalid_amount(f"{field} is above 1,000,000,000 USDC.")
    micro = _exact_micro(value)
    if micro is None:
        raise invalid_amount(f"{field} has more than 6 decimal places.")
    if micro == 0 and not allow_zero:
        raise invalid_amount(f"{field} must be greater than zero.")
    return micro


def _exact_micro(value: Decimal) -> int | None:
    """A finite value in 0..MAX as exact integer micro-units; None when a non-zero digit lies below 1e-6.

    Pure digit arithmetic, no decimal context: Decimal arithmetic rounds to the context's 28 digits (so
    1.0000000000000000000000000000001 would pass as 1) and underflows tiny exponents to 0 (so 1E-999999999
    would pass as 0).
    """
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    end = len(digits)
    while end and digits[end - 1] == 0:  # trailing zeros of the coefficient say nothing: 1.500 == 1.5
        end -= 1
    if end == 0:
        return 0
    exponent += len(digits) - end
    if exponent < -6:
        return None
    # value <= 1e9 and exponent >= -6: at most 16 significant digits, a small int.
    return int("".join(map(str, digits[:end]))) * 10 ** (exponent + 6)


def usdc(micro: int) -> Decimal:
    """Integer micro-USDC as an exact Decimal in USDC (trailing zeros dropped, never an exponent)."""
    return Money(micro)


def format_micro(micro: int) -> str:
    """Integer micro-USDC as the contract's decimal string with exactly 6 decimals: 0.002000, 10.000000."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO_PER_USDC)
    return f"{sign}{whole}.{frac:06d}"


class Money(Decimal):
    """A Decimal that remembers it came from micro-units; JSON-renders as a decimal string like "0.300000".

    Every amount in an answer is a string with exactly 6 decimals, like the gate's receipts (README: "Amounts in
    answers"): a JSON number would be read as a float by most JSON parsers.
    """

    def __new__(cls, micro: int) -> Money:
        if isinstance(micro, bool) or not isinstance(micro, int):
            raise TypeError("Money takes integer micro-USDC")
        text = format_micro(micro)
        obj = super().__new__(cls, text.rstrip("0").rstrip(".") if "." in text else text)
        obj._text = text
        return obj

    def json_text(self) -> str:
        """The JSON text: a decimal string with 6 decimals, e.g. "0.002000"."""
        return f'"{self._text}"'
