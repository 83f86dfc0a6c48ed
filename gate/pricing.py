"""Price rules: small strategy objects asked twice per call.

``max_price(args, kwargs)`` runs before the call: it is what the gate reserves.
``actual_price(args, kwargs, outputs, started)`` runs after a successful call:
it is what the gate charges; it never exceeds the maximum. ``started`` is
whatever ``start()`` returned just before the function ran (PerSecond reads
its clock there). Both results are Decimal USDC rounded UP to the micro-USDC,
once per call. A listed price (PerCall) must already be whole micro-USDC; a
rate (PerToken, PerSecond, PerItem) may be finer, its per-call price is rounded up.

The gate charges through ``charge(...)``: the price and the ``usage`` it was
measured from (token counts, seconds, items), which the receipt names.
Functions a rule is given (``input_tokens``, ``output_limit``, ``count``) are
called with the paid function's own arguments, as the gate's ``check`` is.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .money import format_usdc, round_up, to_decimal, to_usdc

__all__ = ["Charge", "PerCall", "PerItem", "PerSecond", "PerToken", "Price", "count_words"]

_THOUSAND = Decimal(1000)


@dataclass(frozen=True)
class Charge:
    """What a call cost and what that was measured from (named in the receipt as ``usage``)."""

    amount: Decimal
    usage: Mapping[str, Any] = field(default_factory=dict)


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

    def charge(self, args: tuple, kwargs: Mapping[str, Any], outputs: Any, started: Any) -> Charge:
        """``actual_price`` with what it was measured from; a rule that counts something overrides this."""
        return Charge(self.actual_price(args, kwargs, outputs, started))

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


def _count_of(value: Any, what: str) -> int:
    """A count a rule was given by the owner's function: a non-negative int, else TypeError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{what} must return a non-negative int")
    return value


def _optional_callable(value: Any, name: str) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable")
    return value


class PerToken(Price):
    """A price per 1,000 input tokens plus per 1,000 output tokens, output capped at max_tokens.

    Tokens are counted with ``count_tokens(text) -> int`` (default: words) over the
    string arguments (input) and the strings in the outputs (output; for a stream,
    the last value yielded, as Gradio streams show the growing text).
    ``input_tokens(*args, **kwargs) -> int`` counts a call's input itself instead
    (e.g. a chat prompt as the model's template renders it); ``output_limit(*args,
    **kwargs) -> int`` is the most output tokens this call may have (e.g. its
    ``max_new_tokens``), at most ``max_tokens``: the call reserves that many and is
    never charged for more. The receipt names ``input_tokens`` and ``output_tokens``.
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
        input_tokens: Callable[..., int] | None = None,
        output_limit: Callable[..., int] | None = None,
    ):
        self.input_per_1k = to_decimal(input_per_1k, name="input_per_1k")
        self.output_per_1k = to_decimal(output_per_1k, name="output_per_1k")
        if self.input_per_1k == 0 and self.output_per_1k == 0:
            raise ValueError("at least one of input_per_1k and output_per_1k must be positive")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise TypeError("max_tokens must be an int")
        if max_tokens <= 0:
            raise ValueError("max_tokens must be positive")
        self.max_tokens = max_tokens
        self.count_tokens = _optional_callable(count_tokens, "count_tokens") or count_words
        self.input_tokens = _optional_callable(input_tokens, "input_tokens")
        self.output_limit = _optional_callable(output_limit, "output_limit")

    def _count(self, value: Any) -> int:
        return sum(_count_of(self.count_tokens(text), "count_tokens") for text in _texts(value))

    def _input_count(self, args: tuple, kwargs: Mapping[str, Any]) -> int:
        if self.input_tokens is not None:
            return _count_of(self.input_tokens(*args, **kwargs), "input_tokens")
        return self._count(list(args)) + self._count(dict(kwargs))

    def _output_cap(self, args: tuple, kwargs: Mapping[str, Any]) -> int:
        if self.output_limit is None:
            return self.max_tokens
        return min(_count_of(self.output_limit(*args, **kwargs), "output_limit"), self.max_tokens)

    def _price(self, input_tokens: int, output_tokens: int) -> Decimal:
        return round_up(
            (input_tokens * self.input_per_1k + output_tokens * self.output_per_1k) / _THOUSAND
        )

    def max_price(self, args, kwargs) -> Decimal:
        return self._price(self._input_count(args, kwargs), self._output_cap(args, kwargs))

    def charge(self, args, kwargs, outputs, started) -> Charge:
        input_tokens = self._input_count(args, kwargs)
        output_tokens = min(self._count(outputs), self._output_cap(args, kwargs))
        usage = {"input_tokens": input_tokens, "output_tokens": output_tokens}
        return Charge(self._price(input_tokens, output_tokens), usage)

    def actual_price(self, args, kwargs, outputs, started) -> Decimal:
        return self.charge(args, kwargs, outputs, started).amount

    def describe(self) -> str:
        return (
            f"{self.input_per_1k} USDC per 1k input tokens, "
            f"{self.output_per_1k} USDC per 1k output tokens (at most {self.max_tokens})"
        )


class PerItem(Price):
    """A price per 1,000 items (vectors, images, rows...), pro rata: each call's price is rounded up to
    the micro-USDC.

    ``count(*args, **kwargs) -> int`` is how many items a call produces, known from its
    arguments (e.g. one vector per text): the call reserves and is charged exactly that.
    The receipt names the count under ``unit`` (e.g. ``{"vectors": 3}``).
    """

    def __init__(self, per_1k: str | int | Decimal, *, count: Callable[..., int], unit: str = "items"):
        self.per_1k = to_decimal(per_1k, name="per_1k")
        if self.per_1k <= 0:
            raise ValueError("per_1k must be positive")
        if not callable(count):
            raise TypeError("count must be callable")
        if not isinstance(unit, str) or not unit.strip():
            raise ValueError("unit must be a non-empty string, e.g. 'vectors'")
        self.count, self.unit = count, unit.strip()

    def charge(self, args, kwargs, outputs, started) -> Charge:
        items = _count_of(self.count(*args, **kwargs), "count")
        return Charge(round_up(items * self.per_1k / _THOUSAND), {self.unit: items})

    def max_price(self, args, kwargs) -> Decimal:
        return self.charge(args, kwargs, None, None).amount

    def actual_price(self, args, kwargs, outputs, started) -> Decimal:
        return self.charge(args, kwargs, outputs, started).amount

    def describe(self) -> str:
        return f"{self.per_1k} USDC per 1,000 {self.unit}"


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

    def charge(self, args, kwargs, outputs, started) -> Charge:
        elapsed = min(Decimal(repr(max(0.0, float(self.clock() - started)))), self.max_seconds)
        return Charge(round_up(self.rate * elapsed), {"seconds": f"{elapsed.quantize(Decimal('0.001'))}"})

    def actual_price(self, args, kwargs, outputs, started) -> Decimal:
        return self.charge(args, kwargs, outputs, started).amount

    def describe(self) -> str:
        return f"{self.rate} USDC per second (at most {self.max_seconds} s)"

    @property
    def longest_call_s(self) -> float:
        return float(self.max_seconds)
