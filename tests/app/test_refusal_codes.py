"""Every refusal a running Space (sandbox mode) gives, over each way an agent reaches it, carries its stable code
where a program can read it: the JSON `error.code` of the plain route, the `[code]` prefix of the message through
Gradio's HTTP API, gradio_client and MCP. (service_unavailable and function_failed need a stopped escrow service or
a failing model: tests/gate runs them over both adapters.)"""

from __future__ import annotations

import time

import pytest
import requests
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.support.mcp import call_tool
from tests.support.space import classify_over_http, final_event, random_escrow_id

from .test_mcp import _text


@pytest.fixture(scope="module")
def escrows(sandbox_space) -> dict[str, str]:
    """One escrow (or ID) per refusal code, with the text that draws it."""
    sandbox = sandbox_space.sandbox
    seller = sandbox_space.seller().agent_id
    buyer = sandbox.register()
    sandbox.fund(buyer, "1")
    funded = sandbox.open_escrow(buyer, seller, "0.05")
    closed = sandbox.open_escrow(buyer, seller, "0.05")
    answer = requests.post(f"{sandbox.root}/escrow/{closed}/release", headers={**buyer.auth, "Idempotency-Key": closed},
                           json={"amount_usdc": "0", "refund_remainder": True}, timeout=10)
    assert answer.status_code == 200, answer.text
    expired = sandbox.open_escrow(buyer, seller, "0.05", ttl_seconds=1)
    poor = sandbox.open_escrow(buyer, seller, "0.0005")
    time.sleep(1.5)
    return {
        "missing_escrow_id": "",
        "invalid_escrow_id": "esc_../../me",
        "escrow_not_found": random_escrow_id(),
        "escrow_closed": closed,
        "escrow_expired": expired,
        "insufficient_funds": poor,
        "invalid_input": funded,
    }


def text_for(code: str) -> str:
    return "   " if code == "invalid_input" else "a fine text"


CODES = ["missing_escrow_id", "invalid_escrow_id", "escrow_not_found", "escrow_closed", "escrow_expired",
         "insufficient_funds", "invalid_input"]


@pytest.mark.parametrize("code", CODES)
def test_plain_route(sandbox_space, escrows, code):
    headers = {"X-Escrow-Id": escrows[code]} if escrows[code] else {}
    answer = requests.post(sandbox_space.server.base_url + "/v1/classify", json={"text": text_for(code)},
                           headers=headers, timeout=30)
    assert answer.status_code == (422 if code == "invalid_input" else 402), answer.text
    assert answer.json()["error"]["code"] == code and answer.json()["error"]["charged"] is False


@pytest.mark.parametrize("code", CODES)
def test_gradio_http_api(sandbox_space, escrows, code):
    _, stream = classify_over_http(sandbox_space.server.base_url, [text_for(code), escrows[code]])
    event, data = final_event(stream.text)
    message = data["error"]  # Gradio 6 sends {"error": message, "title": ...}
    assert event == "error" and message.startswith(f"[{code}] ") and message.endswith("You were not charged."), data


@pytest.mark.parametrize("code", CODES)
def test_gradio_client(sandbox_space, escrows, code):
    client = Client(sandbox_space.server.base_url, verbose=False)
    try:
        with pytest.raises(AppError) as refused:
            client.predict(text_for(code), escrows[code], api_name="/classify")
    finally:
        client.close()
    assert refused.value.message.startswith(f"[{code}] "), refused.value.message


@pytest.mark.parametrize("code", CODES)
def test_mcp(sandbox_space, escrows, code):
    base_url = sandbox_space.server.base_url
    _, result = call_tool(base_url, "classify", {"text": text_for(code), "escrow_id": escrows[code]})
    assert result.isError and f"[{code}] " in _text(result), _text(result)
