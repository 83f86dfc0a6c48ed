"""Price rules: small strategy objects asked twice per call.

``max_price(args, kwargs)`` runs before the call: it is what the gate reserves.
``actual_price(args, kwargs, outputs, started)`` runs after a successful call:
it is what the gate charges; it never exceeds the maximum. ``started`` is
whatever ``start()`` returned just before the function ran (PerSecond reads
its clock there). Both results are Decimal USDC rounded UP to the micro-USDC,
once per call. A listed price (PerCall) must already be whole micro-USDC; a
rate (PerToken, PerSecond) may be finer, its per-call price is rounded up.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from .money import format_usdc, round_up, to_decimal, to_usdc

__all__ = ["PerCall", "PerSecond", "PerToken", "Price", "count_words"]

_THOUSAND = Decimal(1000)


class Price(ABC):
    """A price rule: the most a call may cost before it runs, what it cost after."""

    @abstractmethod
    def max_price(self, args: tuple, kwargs: Mapping[str, Any]) -> Decimal:
        """The most this call can cost, rounded up to the micro-USDC."""

    def start(self) -> Any:
        """Called right before the function runs; its result is passed to actual_price."""
        return None

    @abstractmethod
    def actual_price(
        self, args: tuple, kwargs: Mapping[str, Any], outputs: Any, started: Any
    ) -> Decimal:
        """What this call cost, rounded up to the micro-USDC, never above max_price."""

    def describe(self) -> str:
        """A short human description, e.g. for a Space's pricing line."""
        return type(self).__name__

    @property
    def longest_call_s(self) -> float | None:
        """The longest a call at this price may run and still be charged in full (None: not limited)."""
        return None


class PerCall(Price):
    """A fixed price per successful call, charged exactly as listed.

    At most 6 decimals (whole micro-USDC): ``PerCall("0.0000001")`` raises ValueError.
    """

    def __init__(self, price: str | int | Decimal):
        amount = to_usdc(price, name="price")
        if amount <= 0:
            raise ValueError("price must be positive")
        self.price = amount

    def max_price(self, args: tuple, kwargs: Mapping[str, Any]) -> Decimal:
        return self.price

    def actual_price(self, args, kwargs, outputs, started) -> Decimal:
        return self.price

    def describe(self) -> str:
        return f"{format_usdc(self.price)} USDC per call"

    def __repr__(self) -> str:
        return f"PerCall({str(self.price)!r})"


def count_words(text: str) -> int:
    """Default token counter: whitespace-separated words (pass a real tokenizer for LLMs)."""
    return len(text.split())


def _texts(value: Any, depth: int = 0):
    """The strings inside a value: itself, or inside tuples/lists/dict values (a few levels)."""
    if isinstance(value, str):
        yield value
    elif depth < 4 and isinstance(value, (tuple, list)):
        for item in value:
            yield from _texts(item, depth + 1)
    elif depth < 4 and isinstance(value, Mapping):
        for item in value.values():
            yield from _texts(item, depth + 1)


class PerToken(Price):
    """A price per 1,000 input tokens plus per 1,000 output tokens, output capped at max_tokens.

    Tokens are counted with ``count_tokens(text) -> int`` (default: words) over the
    string arguments (input) and the strings in the outputs (output; for a stream,
    the last value yielded, as Gradio streams show the growing text).
    The rates may have more than 6 decimals: each call's price is rounded up to
    the micro-USDC.
    """

    def __init__(
        self,
        input_per_1k: str | int | Decimal,
        output_per_1k: str | int | Decimal,
        *,
        max_tokens: int,
        count_tokens: Callable[[str], int] | None = None,
    ):
        self.input_per_1k = to_decimal(input_per_1k, name="input_per_1k")
        self.output_per_1k = to_decimal(output_per_1k, name="output_per_1k")
        if self.input_per_1k == 0 and self.output_per_1k == 0:
            raise ValueError("at least one of input_per_1k and output_per_1k must be positive")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise TypeError("max_tokens must be an int")
        if max_tokens <= 0:
            raise ValueError("max_tokens must be positive")
        if count_tokens is not None and not callable(count_tokens):
            raise TypeError("count_tokens must be callable")
        self.max_tokens = max_tokens
        self.count_tokens = count_tokens or count_words

    def _count(self, value: Any) -> int:
        total = 0
        for text in _texts(value):
            count = self.count_tokens(text)
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise TypeError("count_tokens must return a non-negative int")
            total += count
        return total

    def _input_tokens(self, args: tuple, kwargs: Mapping[str, Any]) -> int:
        return self._count(list(args)) + self._count(dict(kwargs))

    def _price(self, input_tokens: int, output_tokens: int) -> Decimal:
        return round_up(
            (input_tokens * self.input_per_1k + output_tokens * self.output_per_1k) / _THOUSAND
        )

    def max_price(self, args, kwargs) -> Decimal:
        return self._price(self._input_tokens(args, kwargs), self.max_tokens)

    def actual_price(self, args, kwargs, outputs, started) -> Decimal:
        output_tokens = min(self._count(outputs), self.max_tokens)
        return self._price(self._input_tokens(args, kwargs), output_tokens)

    def describe(self) -> str:
        return (
            f"{self.input_per_1k} USDC per 1k input tokens, "
            f"{self.output_per_1k} USDC per 1k output tokens (at most {self.max_tokens})"
        )


class PerSecond(Price):
    """A price per second of run time, capped at max_seconds (the function is not stopped).

    The rate may have more than 6 decimals: each call's price is rounded up to the micro-USDC.
    """

    def __init__(
        self,
        rate: str | int | Decimal,
        max_seconds: int | float | Decimal,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rate = to_decimal(rate, name="rate")
        if self.rate <= 0:
            raise ValueError("rate must be positive")
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float, Decimal)):
            raise TypeError("max_seconds must be a number of seconds")
        if not math.isfinite(max_seconds) or max_seconds <= 0:
            raise ValueError("max_seconds must be positive and finite")
        self.max_seconds = Decimal(str(max_seconds))
        self.clock = clock

    def max_price(self, args, kwargs) -> Decimal:
        return round_up(self.rate * self.max_seconds)

    def start(self) -> float:
        return self.clock()

    def actual_price(self, args, kwargs, outputs, started) -> Decimal:
        elapsed = Decimal(repr(max(0.0, float(self.clock() - started))))
        return round_up(self.rate * min(elapsed, self.max_seconds))

    def describe(self) -> str:
        return f"{self.rate} USDC per second (at most {self.max_seconds} s)"

    @property
    def longest_call_s(self) -> float:
        return float(self.max_seconds)
