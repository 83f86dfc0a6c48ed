"""Each paid function also as a plain HTTP route: ``POST /v1/<name>`` with a JSON body of its parameters.

The route is ``gate.paid_route`` (the gate's ASGI adapter): the same gate, price and
settlement as the Gradio endpoint, the escrow ID in ``X-Escrow-Id``, refusals as JSON
with 402/422/503/500. ``GET /v1/pricing`` lists them for free.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Body

from gate import PerCall, Price
from gate.money import format_usdc

ROUTE_PREFIX = "/v1"


@dataclass(frozen=True)
class PaidRoute:
    """One paid function as the plain API lists it."""

    name: str
    endpoint: Callable
    price: Price
    reason: str
    parameters: tuple[str, ...]

    @property
    def path(self) -> str:
        return f"{ROUTE_PREFIX}/{self.name}"

    def listing(self) -> dict[str, Any]:
        """Its entry in ``/v1/pricing``."""
        return {
            "route": self.path,
            "api_name": f"/{self.name}",
            "price_usdc": format_usdc(self.price.price) if isinstance(self.price, PerCall) else None,
            "pricing": self.price.describe(),
            "parameters": list(self.parameters),
            "reason": self.reason,
        }


def with_json_body(fn: Callable) -> Callable:
    """``fn`` whose parameters FastAPI reads as fields of one JSON object (``{"text": "..."}``)."""
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError("a plain route answers one JSON value: stream from Gradio, or use gate.paid_route yourself")
    hints = typing.get_type_hints(fn)
    params = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            raise TypeError(f"{fn.__name__}: only named parameters can be read from a JSON body")
        default = ... if param.default is inspect.Parameter.empty else param.default
        params.append(param.replace(default=Body(default, embed=True), annotation=hints.get(param.name, Any)))

    if inspect.iscoroutinefunction(fn):

        async def body_fn(*args, **kwargs):
            return await fn(*args, **kwargs)

    else:

        def body_fn(*args, **kwargs):
            return fn(*args, **kwargs)

    body_fn.__name__, body_fn.__qualname__, body_fn.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    body_fn.__signature__ = inspect.Signature(params)
    body_fn.__annotations__ = {p.name: p.annotation for p in params}
    return body_fn
