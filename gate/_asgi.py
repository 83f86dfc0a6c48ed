"""The ASGI adapter: ``EscrowGate.paid_route`` guards a plain FastAPI or Starlette route.

The escrow ID comes from the ``X-Escrow-Id`` header. A paid call answers
``200 {"result": …, "receipt": {…}}`` (a ``Response`` the function returns
itself is passed through with the receipt in an ``X-Payment-Receipt`` header);
a generator streams NDJSON lines ``{"result": item}``, then ``{"receipt": …}``
(or ``{"error": …}`` if it failed after it started). A refusal is JSON with an
HTTP status: 402 for payment problems, 422 for input the Space refused, 503
with ``Retry-After`` while the escrow service is unavailable, 500 when the
function failed::

    {"error": {"code": "insufficient_funds", "message": "… You were not charged.", "charged": false},
     "payment": {"seller_id": …, "price_usdc": …, "escrow_api": …}}     # "payment" with 402 only

The messages are the Gradio adapter's, word for word. The paid call itself is
``gate._flow``'s.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.to_thread
from fastapi.encoders import jsonable_encoder
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from . import _flow
from ._flow import PaidFunction
from ._gradio import header_escrow_id
from ._limits import client_of
from ._signature import present, resolved_hints
from .errors import FunctionFailed, GateError, InvalidInput, ServiceUnavailable, SettlementFailed
from .money import format_usdc

__all__ = ["RETRY_AFTER_S", "deliverable_json", "error_response", "route_wrapper"]

RETRY_AFTER_S = 5  # what a 503 asks the caller to wait: the gate's own view of an outage is that short
_DONE = object()


def deliverable_json(outputs: Any) -> Any:
    """An output as the route hands it out: JSON-able, or a complete Response (TypeError otherwise: the call fails,
    not charged). A StreamingResponse would be charged before its body ran: stream with a generator instead."""
    if isinstance(outputs, StreamingResponse):
        raise TypeError("a paid route must not return a StreamingResponse (its body runs after the charge); "
                        "make the function a generator: it is streamed as NDJSON and charged at its end")
    if isinstance(outputs, Response):
        return outputs
    return jsonable_encoder(outputs)


def http_status(exc: GateError) -> int:
    """402 payment problem, 422 refused input, 503 service unavailable, 500 the function failed."""
    if isinstance(exc, InvalidInput):
        return 422
    if isinstance(exc, ServiceUnavailable) or (
        isinstance(exc, SettlementFailed) and isinstance(exc.__cause__, ServiceUnavailable)
    ):
        return 503
    if isinstance(exc, FunctionFailed):
        return 500
    return 402


def error_response(exc: GateError, payment: dict[str, Any] | None = None) -> JSONResponse:
    """A refusal as JSON with its HTTP status (``payment``: how to pay, sent with a 402)."""
    status = http_status(exc)
    body: dict[str, Any] = {"error": exc.as_dict()}
    if status == 402 and payment is not None:
        body["payment"] = payment
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _request_param(fn: Any, hints: dict[str, Any]) -> str | None:
    """The function's own parameter that receives the Starlette request, if it has one."""
    for param in inspect.signature(fn).parameters.values():
        hint = hints.get(param.name)
        if (isinstance(hint, type) and issubclass(hint, Request)) or (hint is None and param.name == "request"):
            return param.name
    return None


def route_wrapper(paid: PaidFunction, gate: Any) -> Any:
    """The endpoint FastAPI or Starlette is given: always ``async``; sync functions run in worker threads."""
    fn = paid.fn
    hints = resolved_hints(fn)
    original = inspect.signature(fn)
    own_request = _request_param(fn, hints)
    params = [p.replace(annotation=hints.get(p.name, inspect.Parameter.empty)) for p in original.parameters.values()]
    request_name = own_request
    if request_name is None:
        request_name = next(n for n in ("request", "gate_request", "_gate_request") if n not in original.parameters)
        params.append(inspect.Parameter(request_name, inspect.Parameter.KEYWORD_ONLY, annotation=Request))
    signature = inspect.Signature(params)

    def prepare(args: tuple, kwargs: dict) -> _flow.Call:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        request: Request = bound.arguments[request_name]
        if own_request is None:
            del bound.arguments[request_name]
        return paid.prepare(bound.args, bound.kwargs, header_escrow_id(request), client_of(request))

    def payment(call: _flow.Call | None) -> dict[str, Any]:
        return {
            "seller_id": gate.known_seller_id,
            "price_usdc": None if call is None else format_usdc(call.maximum),
            "escrow_api": gate.escrow_url,
        }

    async def endpoint(*args, **kwargs):
        call = None
        try:
            call = prepare(args, kwargs)
            if paid.streams:
                run = await paid.begin_async(call)
                return StreamingResponse(_ndjson(paid, run), media_type="application/x-ndjson")
            if paid.is_async:
                outputs, receipt = await _flow.run_call_async(paid, call)
            else:
                outputs, receipt = await anyio.to_thread.run_sync(_flow.run_call, paid, call)
        except GateError as exc:
            return error_response(exc, payment(call))
        if isinstance(outputs, Response):
            outputs.headers["X-Payment-Receipt"] = json.dumps(paid.receipt_dict(receipt))
            return outputs
        return JSONResponse({"result": outputs, "receipt": paid.receipt_dict(receipt)})

    return present(endpoint, fn, signature, fn.__doc__)


async def _ndjson(paid: PaidFunction, run: _flow.Run) -> AsyncIterator[bytes]:
    """A begun stream as NDJSON lines; a refusal after it started is its last line."""
    items = _flow.run_stream_async(run) if paid.is_async else _in_threads(_flow.run_stream(run))
    async with contextlib.aclosing(items):
        try:
            async for item, receipt in items:
                if receipt is None:
                    line = {"result": item}
                else:
                    line = {"receipt": paid.receipt_dict(receipt)}
                yield (json.dumps(line) + "\n").encode()
        except GateError as exc:
            yield (json.dumps({"error": exc.as_dict()}) + "\n").encode()


async def _in_threads(items: Iterator) -> AsyncIterator:
    """A blocking iterator, each step in a worker thread; closed (in one, shielded) when abandoned."""
    try:
        while True:
            item = await anyio.to_thread.run_sync(next, items, _DONE)
            if item is _DONE:
                return
            yield item
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(items.close)
