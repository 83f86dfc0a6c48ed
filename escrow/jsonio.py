"""JSON in and out with exact numbers: parsing keeps Decimals; rendering writes Decimals verbatim and Money
(every amount in an answer) as a decimal string with 6 decimals."""

from __future__ import annotations

import json
from decimal import Decimal

from .amounts import Money
from .errors import invalid_request

MAX_DEPTH = 32


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_body(raw: bytes, *, empty_ok: bool = True) -> dict:
    """A request body as a dict with Decimal numbers; anything else is 422 invalid_request."""
    if not raw.strip():
        if empty_ok:
            return {}
        raise invalid_request("The request body must be a JSON object.")
    try:
        text = raw.decode("utf-8")
        # NaN/Infinity become non-finite Decimals so that amount fields can answer invalid_amount.
        parsed = json.loads(
            text,
            parse_float=Decimal,
            parse_int=Decimal,
            parse_constant=Decimal,
            object_pairs_hook=_reject_duplicates,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise invalid_request("The request body is not valid JSON (UTF-8, no duplicate keys).") from None
    if not isinstance(parsed, dict):
        raise invalid_request("The request body must be a JSON object.")
    if _has_lone_surrogate(parsed):
        # "\ud800" is valid JSON text but no Unicode string: SQLite (UTF-8) cannot store it (it was a 500).
        raise invalid_request("The request body has a string with a lone surrogate escape (\\ud800-\\udfff).")
    return parsed


def _has_lone_surrogate(value: object) -> bool:
    """Whether any key or string in a parsed body holds an unpaired UTF-16 surrogate (iteratively: no depth limit)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def check_plain_json(value: object, field: str, depth: int = 0) -> None:
    """Free-form JSON (meta): finite numbers only, bounded depth."""
    if depth > MAX_DEPTH:
        raise invalid_request(f"{field} is nested too deeply.")
    if isinstance(value, dict):
        for item in value.values():
            check_plain_json(item, field, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_plain_json(item, field, depth + 1)
    elif isinstance(value, Decimal) and not value.is_finite():
        raise invalid_request(f"{field} contains a non-finite number.")


def dumps(value: object) -> str:
    """Compact JSON; Decimals written as exact JSON numbers, Money (amounts) as strings like "0.002000"."""
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts)


def _write(value: object, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, Money):
        out.append(value.json_text())
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("non-finite number in JSON output")
        out.append(str(value))  # '1E+30' and '0.10' are valid JSON numbers
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(json.dumps(value, allow_nan=False))
    elif isinstance(value, str):
        out.append(json.dumps(value))
    elif isinstance(value, dict):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(json.dumps(str(key)))
            out.append(":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot render {type(value).__name__} as JSON")
