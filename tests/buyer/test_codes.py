"""Every refusal code reaches the caller as its typed error, over the plain route and over Gradio's HTTP API.

A canned Space (FastAPI over real HTTP) answers each code the way the gate does: a JSON refusal with its HTTP
status on ``/v1/<name>``, an ``event: error`` whose message starts with ``[code]`` on Gradio's API (or, like an
older gate, without the prefix). Escrows are opened on a real escrow server.
"""

from __future__ import annotations

import itertools
import json
from decimal import Decimal

import pytest
from fastapi import Request
from fastapi.responses import JSONResponse, Response

import buyer
from buyer import BudgetExhausted, PaymentError

# code -> (HTTP status on the plain route, the gate's sentence)
CODES = {
    "missing_escrow_id": (402, "This call is paid: pass the ID of your USDC escrow as the escrow_id argument or in "
                               "the X-Escrow-Id header. You were not charged."),
    "invalid_escrow_id": (402, "The escrow ID is malformed: it must be 'esc_' followed by 20 to 40 letters and "
                               "digits. You were not charged."),
    "escrow_not_found": (402, "Escrow esc_x was not found, or its seller is not this Space. You were not charged."),
    "escrow_closed": (402, "Escrow esc_x is released: it cannot pay for calls. You were not charged."),
    "escrow_expired": (402, "Escrow esc_x has expired. You were not charged."),
    "insufficient_funds": (402, "Escrow esc_x has 0.000400 USDC left; this call costs 0.001000 USDC. "
                                "You were not charged."),
    "invalid_input": (422, "Please enter some text to classify. You were not charged."),
    "service_unavailable": (503, "The payment service is unavailable right now; the call was not run. "
                                 "You were not charged. Please retry later."),
    "function_failed": (500, "The sentiment classification failed. You were not charged."),
    "settlement_failed": (402, "The result was ready, but the charge was refused. The result of escrow esc_x's "
                               "call is withheld."),
}
CLASSES = {
    "missing_escrow_id": buyer.MissingEscrowId, "invalid_escrow_id": buyer.InvalidEscrowId,
    "escrow_not_found": buyer.EscrowNotFound, "escrow_closed": buyer.EscrowClosed,
    "escrow_expired": buyer.EscrowExpired, "insufficient_funds": buyer.InsufficientFunds,
    "invalid_input": buyer.InvalidInput, "service_unavailable": buyer.ServiceUnavailable,
    "function_failed": buyer.FunctionFailed, "settlement_failed": buyer.SettlementFailed,
}
DRY = {"escrow_closed", "escrow_expired", "insufficient_funds"}  # the session tries the next escrow first


@pytest.fixture(scope="module")
def canned(shop):
    """A canned Space on the shop's app and escrow server: /canned/v1/<code> and /canned/gradio_api/call/<code>."""
    app = shop.served.app
    events: dict[str, str] = {}
    numbers = itertools.count()
    state = {"flaky": 0}

    @app.get("/canned/v1/pricing")
    def pricing() -> dict:
        functions = {code: {"route": f"/v1/{code}", "api_name": f"/{code}", "price_usdc": "0.001000",
                            "parameters": ["text"]} for code in CODES}
        functions["flaky"] = {"route": "/v1/flaky", "api_name": "/flaky", "price_usdc": "0.001000",
                              "parameters": ["text"]}
        return {"seller_id": shop.seller.agent_id, "escrow_api": shop.server.url, "price_per_call_usdc": "0.001",
                "functions": functions}

    @app.post("/canned/v1/flaky")
    def flaky(request: Request) -> Response:
        state["flaky"] += 1
        if state["flaky"] == 1:
            body = {"error": {"code": "service_unavailable", "message": CODES["service_unavailable"][1],
                              "charged": False}}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "0"})
        receipt = {"escrow_id": request.headers["x-escrow-id"], "charge_id": "ded_1", "charged_usdc": "0.001000"}
        return JSONResponse({"result": "ok", "receipt": receipt})

    @app.post("/canned/v1/{code}")
    def route(code: str) -> Response:
        status, sentence = CODES[code]
        body = {"error": {"code": code, "message": sentence, "charged": False},
                "payment": {"seller_id": shop.seller.agent_id, "price_usdc": "0.001000", "escrow_api": "x"}}
        headers = {"Retry-After": "0"} if status == 503 else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.post("/canned/gradio_api/call/{name}")
    async def gradio_call(name: str, request: Request) -> dict:
        data = (await request.json())["data"]
        code, prefixed = name.split("__")
        message = CODES[code][1] if prefixed == "plain" else f"[{code}] {CODES[code][1]}"
        event_id = f"ev{next(numbers)}"
        events[event_id] = (f"event: heartbeat\ndata: null\n\nevent: error\ndata: "
                            f"{json.dumps({'error': message, 'duration': 10, 'visible': True, 'title': 'Payment'})}"
                            f"\n\n")
        assert data[-1] == request.headers["x-escrow-id"]
        return {"event_id": event_id}

    @app.get("/canned/gradio_api/call/{name}/{event_id}")
    def gradio_stream(name: str, event_id: str) -> Response:
        return Response(events.pop(event_id), media_type="text/event-stream")

    return shop.url + "/canned"


@pytest.mark.parametrize("code", sorted(CODES))
@pytest.mark.parametrize("transport", ["route", "gradio_api", "gradio_api_without_prefix"])
def test_each_code_is_its_typed_error(shop, canned, code, transport):
    wallet = shop.wallet("1")
    name = code if transport == "route" else f"{code}__{'plain' if transport.endswith('prefix') else 'prefixed'}"
    with wallet.space(canned, budget_usdc="0.001", transport="gradio_api" if transport != "route" else "route",
                      retries=0, settle_timeout_s=1) as space:
        with pytest.raises(PaymentError) as caught:
            space.call(name, "hi")
    error = caught.value
    if code in DRY:  # the only escrow the budget allows ran dry: the refusal is the cause
        assert isinstance(error, BudgetExhausted)
        error = error.__cause__
    assert type(error) is CLASSES[code]
    assert error.code == code and error.charged is False
    assert error.message == CODES[code][1] and str(error) == f"[{code}] {CODES[code][1]}"
    if transport == "route":
        assert error.status == CODES[code][0]
        assert error.payment["seller_id"] == shop.seller.agent_id
    statement = space.statement
    assert statement.calls == 0 and statement.charged_usdc == 0
    assert statement.refunded_usdc == Decimal("0.001") and statement.escrows[0].status == "released"


def test_service_unavailable_is_retried_after_retry_after(shop, canned):
    wallet = shop.wallet("1")
    with wallet.space(canned, budget_usdc="0.01", settle_timeout_s=0.5) as space:
        result, receipt = space.call("flaky", "hi")
    assert result == "ok" and receipt.charged_usdc == Decimal("0.001")
    statement = space.statement
    assert statement.refused == 0 and statement.calls == 1
    # The canned Space never captured its receipt: the escrow is left open, not released over the seller's charge.
    [entry] = statement.escrows
    assert not statement.matches and not entry.released and entry.status == "active" and "not released" in entry.note
    assert wallet.release(entry.escrow_id)["refunded_usdc"] == Decimal("0.01")

