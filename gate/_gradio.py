"""The Gradio adapter: ``EscrowGate.paid`` wraps a function for Gradio events, APIs and MCP.

The wrapper takes the function's parameters, then ``escrow_id`` (None or empty:
read from the ``X-Escrow-Id`` header), then a ``gr.Request`` that Gradio fills
(``gate._signature``). Refusals are raised as ``GateError`` (a ``gr.Error``:
Gradio shows its message). With ``receipt=True`` the receipt dict is one
extra, last output. The paid call itself is ``gate._flow``'s.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from typing import Any

from . import _flow
from ._flow import PaidFunction
from ._limits import client_of
from ._signature import GatedSignature, build_signature, present
from .pricing import Price

__all__ = ["ESCROW_HEADER", "gradio_wrapper", "header_escrow_id", "with_receipt"]

ESCROW_HEADER = "x-escrow-id"


def header_escrow_id(request: Any) -> str | None:
    """The ``X-Escrow-Id`` header of a request (Gradio's, Starlette's, or a plain mapping), or None."""
    headers = getattr(request, "headers", None) if request is not None else None
    if headers is None:
        return None
    try:
        value = headers.get(ESCROW_HEADER)
        if value is None and isinstance(headers, Mapping):  # a plain dict is case-sensitive
            value = next((v for k, v in headers.items() if str(k).lower() == ESCROW_HEADER), None)
    except Exception:
        return None
    return value


def with_receipt(outputs: Any, receipt: Any) -> tuple:
    """The outputs with the receipt as one extra, last output."""
    return (*outputs, receipt) if isinstance(outputs, tuple) else (outputs, receipt)


_ESCROW_ID_DOC = (
    "escrow_id: The ID of your USDC escrow for this Space ('esc_' and 20 to 40 letters and digits), or empty to "
    "send it in the X-Escrow-Id header. Open the escrow naming this Space's seller ID (free /pricing endpoint)."
)
_SECTIONS = ("Args:", "Parameters:", "Arguments:", "Returns:")


def documented(doc: str | None, price: Price) -> str:
    """``doc`` with what a call costs, and ``escrow_id`` among its Args (Gradio's API page and MCP read these)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    heads = [i for i, line in enumerate(lines) if line.strip().startswith(_SECTIONS)]
    returns = next((i for i in heads if lines[i].strip().startswith("Returns:")), len(lines))
    args = next((i for i in heads if not lines[i].strip().startswith("Returns:")), None)
    indent = "    "
    if args is not None and args + 1 < returns and lines[args + 1].strip():
        indent = lines[args + 1][: len(lines[args + 1]) - len(lines[args + 1].lstrip())]
    escrow = [indent + _ESCROW_ID_DOC] if args is not None else ["Args:", indent + _ESCROW_ID_DOC]
    while returns > 0 and not lines[returns - 1].strip():
        returns -= 1
    lines[returns:returns] = escrow
    description_end = heads[0] if heads else returns
    cost = f"Costs {price.describe()} from your escrow; a refused or failed call costs nothing."
    lines[description_end:description_end] = [cost, ""] if description_end else [cost]
    return "\n".join(lines)


def gradio_wrapper(paid: PaidFunction, want_receipt: bool) -> Any:
    """The function Gradio is given: same kind (sync, async, generator) as ``paid.fn``."""
    spec: GatedSignature = build_signature(paid.fn, keep_return=not want_receipt)

    def prepare(args: tuple, kwargs: dict) -> _flow.Call:
        fn_args, fn_kwargs, escrow_arg, request = spec.split(args, kwargs)
        escrow_id = escrow_arg if escrow_arg not in (None, "") else header_escrow_id(request)
        return paid.prepare(fn_args, fn_kwargs, escrow_id, client_of(request))

    def shaped(outputs: Any, receipt: Any) -> Any:
        if not want_receipt:
            return outputs
        return with_receipt(outputs, None if receipt is None else paid.receipt_dict(receipt))

    if paid.streams and paid.is_async:

        async def gated(*args, **kwargs):
            run = await paid.begin_async(prepare(args, kwargs))
            async with contextlib.aclosing(_flow.run_stream_async(run)) as items:  # abandoned here: there too
                async for item, receipt in items:
                    if receipt is None or want_receipt:
                        yield shaped(item, receipt)

    elif paid.streams:

        def gated(*args, **kwargs):
            run = paid.begin(prepare(args, kwargs))
            with contextlib.closing(_flow.run_stream(run)) as items:  # abandoned here: there too
                for item, receipt in items:
                    if receipt is None or want_receipt:
                        yield shaped(item, receipt)

    elif paid.is_async:

        async def gated(*args, **kwargs):
            return shaped(*await _flow.run_call_async(paid, prepare(args, kwargs)))

    else:

        def gated(*args, **kwargs):
            return shaped(*_flow.run_call(paid, prepare(args, kwargs)))

    return present(gated, paid.fn, spec.signature, documented(paid.fn.__doc__, paid.price))
