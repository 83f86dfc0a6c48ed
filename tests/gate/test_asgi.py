"""gate.paid_route on plain FastAPI and Starlette routes, over real HTTP: what only the ASGI adapter does (statuses,
headers, streams as NDJSON, Starlette endpoints). The money contract shared with Gradio runs over both adapters in
test_gate_escrow.py, test_lease.py and test_unpaid_results.py (the `adapter` fixture)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import requests
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from gate import PerCall, PerToken

PRICE = PerCall("0.001")


class Text(BaseModel):
    text: str


def test_json_body_result_and_receipt(market, served_app):
    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("0.010")

    @gate.paid_route(PRICE, reason="shouting", receipt_extra={"model": "m1"})
    def shout(body: Text) -> str:
        return body.text.upper()

    url = served_app.route(shout)
    answer = requests.post(url, json={"text": "hi"}, headers={"X-Escrow-Id": escrow_id}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["result"] == "HI"
    assert body["receipt"]["charged_usdc"] == "0.001000" and body["receipt"]["model"] == "m1"
    assert body["receipt"]["remaining_usdc"] == "0.009000"
    assert market.balance(escrow_id)["spent_usdc"] == Decimal("0.001")


def test_refusals_carry_status_code_and_how_to_pay(market, served_app):
    gate = market.gate(seller_id=market.seller.agent_id)
    ran = []

    def too_long(body: Text) -> None:
        if len(body.text) > 5:
            raise ValueError("At most 5 characters")

    @gate.paid_route(PRICE, reason="shouting", check=too_long)
    def shout(body: Text) -> str:
        ran.append(body.text)
        return body.text.upper()

    url = served_app.route(shout)
    poor = market.escrow("0.0004")
    cases = [
        ({}, {"text": "hi"}, 402, "missing_escrow_id"),
        ({"X-Escrow-Id": "esc_nope"}, {"text": "hi"}, 402, "invalid_escrow_id"),
        ({"X-Escrow-Id": "esc_" + "Q" * 24}, {"text": "hi"}, 402, "escrow_not_found"),
        ({"X-Escrow-Id": poor}, {"text": "hi"}, 402, "insufficient_funds"),
        ({"X-Escrow-Id": poor}, {"text": "far too long"}, 422, "invalid_input"),
    ]
    for headers, payload, status, code in cases:
        answer = requests.post(url, json=payload, headers=headers, timeout=30)
        assert answer.status_code == status, (code, answer.text)
        error = answer.json()["error"]
        assert error["code"] == code and error["charged"] is False
        assert error["message"].endswith("You were not charged."), error
        if status == 402:
            assert answer.json()["payment"] == {
                "seller_id": market.seller.agent_id,
                "price_usdc": None if code in ("missing_escrow_id", "invalid_escrow_id") else "0.001000",
                "escrow_api": market.server.url,
            }
    assert ran == []
    assert market.balance(poor)["remaining_usdc"] == Decimal("0.0004")


def test_service_down_is_503_with_retry_after(market, served_app):
    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("0.010")

    @gate.paid_route(PRICE, reason="shouting")
    async def shout(body: Text) -> str:
        return body.text.upper()

    url = served_app.route(shout)
    market.server.stop()
    try:
        answer = requests.post(url, json={"text": "hi"}, headers={"X-Escrow-Id": escrow_id}, timeout=30)
    finally:
        market.server.start()
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert answer.json()["error"]["code"] == "service_unavailable"
    assert "127.0.0.1" not in answer.text  # no internal URL
    answer = requests.post(url, json={"text": "hi"}, headers={"X-Escrow-Id": escrow_id}, timeout=30)
    assert answer.status_code == 200 and answer.json()["result"] == "HI"


def test_function_failure_is_500_and_voided(market, served_app):
    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("0.010")

    @gate.paid_route(PRICE, reason="shouting")
    def shout(body: Text) -> str:
        raise RuntimeError("model exploded at /srv/secret")

    answer = requests.post(served_app.route(shout), json={"text": "hi"}, headers={"X-Escrow-Id": escrow_id}, timeout=30)
    assert answer.status_code == 500
    assert answer.json()["error"] == {
        "code": "function_failed", "message": "The shouting failed. You were not charged.", "charged": False,
    }
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == 0 and balance["held_usdc"] == 0


def test_a_starlette_endpoint_returning_its_own_response(market, served_app):
    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("0.010")

    @gate.paid_route(PRICE, reason="plain text")
    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.query_params.get("q", "").upper())

    answer = requests.post(served_app.route(plain) + "?q=hi", headers={"X-Escrow-Id": escrow_id}, timeout=30)
    assert answer.status_code == 200 and answer.text == "HI"
    receipt = json.loads(answer.headers["X-Payment-Receipt"])
    assert receipt["charged_usdc"] == "0.001000" and receipt["escrow_id"] == escrow_id


@pytest.mark.parametrize("settlement", ["per_call", "lease"])
def test_a_stream_is_ndjson_with_its_receipt_last(market, served_app, settlement):
    gate = market.gate(settlement=settlement)
    escrow_id = market.escrow("1")

    @gate.paid_route(PerToken("0", "1", max_tokens=10), reason="generation")
    def generate(body: Text):
        text = ""
        for word in body.text.split():
            text = f"{text} {word}".strip()
            yield text

    answer = requests.post(served_app.route(generate), json={"text": "a b c"}, headers={"X-Escrow-Id": escrow_id},
                           timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert lines[:3] == [{"result": "a"}, {"result": "a b"}, {"result": "a b c"}]
    assert lines[3]["receipt"]["charged_usdc"] == "0.003000"  # 3 output tokens at 1 USDC per 1000
    gate.close()
    assert market.balance(escrow_id)["spent_usdc"] == Decimal("0.003")


def test_a_stream_failing_midway_ends_with_its_error_and_is_voided(market, served_app):
    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("1")

    @gate.paid_route(PRICE, reason="generation")
    async def generate(body: Text):
        yield "first"
        raise RuntimeError("boom")

    answer = requests.post(served_app.route(generate), json={"text": "x"}, headers={"X-Escrow-Id": escrow_id},
                           timeout=30)
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert lines[0] == {"result": "first"}
    assert lines[-1]["error"]["code"] == "function_failed" and lines[-1]["error"]["charged"] is False
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == 0 and balance["held_usdc"] == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_client_leaving_mid_stream_pays_for_what_it_received(market, served_app, kind):
    import asyncio
    import time

    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("1")

    if kind == "sync":

        def generate(body: Text):
            for i in range(100):
                yield f"item {i}"
                time.sleep(0.05)

    else:

        async def generate(body: Text):
            for i in range(100):
                yield f"item {i}"
                await asyncio.sleep(0.05)

    url = served_app.route(gate.paid_route(PRICE, reason="generation")(generate))
    with requests.post(url, json={"text": "x"}, headers={"X-Escrow-Id": escrow_id}, stream=True, timeout=30) as answer:
        first = next(answer.iter_lines())
        assert json.loads(first) == {"result": "item 0"}
    # The connection is closed: the stream is cancelled, and what it handed out is charged (its price).
    deadline = time.monotonic() + 10
    while market.balance(escrow_id)["spent_usdc"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == Decimal("0.001") and balance["held_usdc"] == 0


@pytest.mark.parametrize("output", ["not json", "streaming response"])
def test_an_output_the_route_cannot_hand_out_fails_the_call_and_is_not_charged(market, served_app, output):
    from starlette.responses import StreamingResponse

    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("0.010")

    @gate.paid_route(PRICE, reason="shouting")
    def shout(body: Text):
        if output == "not json":
            return {"text": body.text, "handle": object()}
        return StreamingResponse(iter([b"a", b"b"]))

    answer = requests.post(served_app.route(shout), json={"text": "hi"}, headers={"X-Escrow-Id": escrow_id}, timeout=30)
    assert answer.status_code == 500 and answer.json()["error"]["code"] == "function_failed"
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == 0 and balance["held_usdc"] == 0
