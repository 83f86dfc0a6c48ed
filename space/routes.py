"""Each paid function also as a plain HTTP route: ``POST /v1/<name>`` with a JSON body of its parameters.

The route is ``gate.paid_route`` (the gate's ASGI adapter): the same gate, price and
settlement as the Gradio endpoint, the escrow ID in ``X-Escrow-Id``, refusals as JSON
with 402/422/503/500. A generator is streamed as NDJSON (``{"result": item}`` lines,
then ``{"receipt": ...}``). ``GET /v1/pricing`` lists them for free.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Body, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gate import InvalidInput, PerCall, Price
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
    streams: bool = False

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
            # A stream answers NDJSON: {"result": ...} per item, then {"receipt": ...} (or {"error": ...}).
            "answer": "ndjson" if self.streams else "json",
        }


def with_json_body(fn: Callable) -> Callable:
    """``fn`` whose parameters FastAPI reads as fields of one JSON object (``{"text": "..."}``)."""
    hints = typing.get_type_hints(fn)
    params = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            raise TypeError(f"{fn.__name__}: only named parameters can be read from a JSON body")
        default = ... if param.default is inspect.Parameter.empty else param.default
        params.append(param.replace(default=Body(default, embed=True), annotation=hints.get(param.name, Any)))

    # The same kind of function as fn: the gate streams a generator as NDJSON lines.
    if inspect.isasyncgenfunction(fn):

        async def body_fn(*args, **kwargs):
            async for item in fn(*args, **kwargs):
                yield item

    elif inspect.isgeneratorfunction(fn):

        def body_fn(*args, **kwargs):
            yield from fn(*args, **kwargs)

    elif inspect.iscoroutinefunction(fn):

        async def body_fn(*args, **kwargs):
            return await fn(*args, **kwargs)

    else:

        def body_fn(*args, **kwargs):
            return fn(*args, **kwargs)

    body_fn.__name__, body_fn.__qualname__, body_fn.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    body_fn.__signature__ = inspect.Signature(params)
    body_fn.__annotations__ = {p.name: p.annotation for p in params}
    return body_fn


async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A body the route cannot read, answered as the gate answers a refused input (422, "not charged")."""
    problems = []
    for error in exc.errors()[:3]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    refusal = InvalidInput("The request body is not valid (" + "; ".join(problems) + ")")
    return JSONResponse({"error": refusal.as_dict()}, status_code=422)
