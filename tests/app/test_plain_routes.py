"""The Space's plain HTTP API (space.routes): GET /v1/pricing and POST /v1/classify, served by the same gate as
/classify, over real HTTP against `python app.py`."""

from __future__ import annotations

from decimal import Decimal

import requests

from tests.support.space import random_escrow_id


def test_pricing_lists_each_paid_function(sandbox_space):
    pricing = requests.get(sandbox_space.server.base_url + "/v1/pricing", timeout=30).json()
    assert pricing["seller_id"] == sandbox_space.seller().agent_id and pricing["mode"] == "sandbox"
    assert pricing["escrow_api"] == sandbox_space.server.base_url + "/sandbox/api"
    assert pricing["functions"]["classify"] == {
        "route": "/v1/classify", "api_name": "/classify", "price_usdc": "0.001000",
        "pricing": "0.001000 USDC per call", "parameters": ["text"], "reason": "sentiment classification",
        "answer": "json",
    }


def test_classify_route_pays_like_the_gradio_endpoint(sandbox_space):
    sandbox = sandbox_space.sandbox
    buyer = sandbox.register()
    sandbox.fund(buyer, "1")
    escrow_id = sandbox.open_escrow(buyer, sandbox_space.seller().agent_id, "0.010")
    url = sandbox_space.server.base_url + "/v1/classify"
    answer = requests.post(url, json={"text": "I love this!"}, headers={"X-Escrow-Id": escrow_id}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["result"]["label"] in ("negative", "neutral", "positive")
    assert body["result"]["score"] == round(body["result"]["score"], 4)
    receipt = body["receipt"]
    assert receipt["charged_usdc"] == "0.001000" and receipt["escrow_id"] == escrow_id and receipt["model"]
    refusals = [
        ({}, {"text": "hi"}, 402, "missing_escrow_id"),
        ({"X-Escrow-Id": random_escrow_id()}, {"text": "hi"}, 402, "escrow_not_found"),
        ({"X-Escrow-Id": escrow_id}, {"text": "   "}, 422, "invalid_input"),
    ]
    for headers, payload, status, code in refusals:
        refused = requests.post(url, json=payload, headers=headers, timeout=30)
        assert refused.status_code == status, refused.text
        assert refused.json()["error"]["code"] == code
        assert refused.json()["error"]["message"].endswith("You were not charged.")
    unreadable = requests.post(url, json={"txt": "hi"}, headers={"X-Escrow-Id": escrow_id}, timeout=30)
    assert unreadable.status_code == 422  # a body the route cannot read: refused as the gate refuses an input
    assert unreadable.json()["error"] == {
        "code": "invalid_input", "charged": False,
        "message": "The request body is not valid (text: Field required). You were not charged.",
    }
    spent = sandbox.escrow_once_spent(buyer, escrow_id, Decimal("0.001"))
    assert Decimal(str(spent["spent_usdc"])) == Decimal("0.001")
