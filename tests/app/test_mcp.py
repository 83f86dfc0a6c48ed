"""Agents that speak MCP reach the same paid tool, with the escrow ID as an argument or a header."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.support.mcp import call_tool, list_tools


def _text(result) -> str:
    return "\n".join(part.text for part in result.content if getattr(part, "type", "") == "text")


@pytest.fixture(scope="module")
def base_url(sandbox_space) -> str:
    return sandbox_space.server.base_url


def test_mcp_tool_is_paid_by_argument_and_by_header(sandbox_space, base_url):
    sandbox = sandbox_space.sandbox
    seller_id = sandbox_space.seller().agent_id
    buyer = sandbox.register()
    sandbox.fund(buyer, "1")
    escrow_id = sandbox.open_escrow(buyer, seller_id, "0.01")

    _, result = call_tool(base_url, "classify", {"text": "I really like it", "escrow_id": escrow_id})
    assert not result.isError, _text(result)
    names = [tool.name for tool in list_tools(base_url)]
    assert "pricing" in " ".join(names)
    assert escrow_id in _text(result)
    assert any(label in _text(result) for label in ("negative", "neutral", "positive"))

    _, by_header = call_tool(base_url, "classify", {"text": "so bad"}, headers={"X-Escrow-Id": escrow_id})
    assert not by_header.isError, _text(by_header)

    escrow = sandbox.escrow_once_spent(buyer, escrow_id, Decimal("0.002"))
    assert escrow["spent_usdc"] == Decimal("0.002")


def test_mcp_refusal_is_clear_and_free(sandbox_space, base_url):
    _, result = call_tool(base_url, "classify", {"text": "hello", "escrow_id": "esc_doesnotexist"})
    assert result.isError
    assert "not charged" in _text(result)
    assert "Traceback" not in _text(result)
    json.dumps(_text(result))  # a plain message, serialisable as it is


def test_mcp_tool_says_what_it_costs_and_what_escrow_id_is(base_url):
    tool = next(t for t in list_tools(base_url) if t.name.endswith("classify"))
    assert "USDC per call" in tool.description and "costs nothing" in tool.description
    properties = tool.inputSchema["properties"]
    assert "text to classify" in properties["text"]["description"]
    assert "X-Escrow-Id" in properties["escrow_id"]["description"]


def test_mcp_result_is_json_with_rounded_scores_and_refusals_carry_their_code(sandbox_space, base_url):
    sandbox = sandbox_space.sandbox
    buyer = sandbox.register()
    sandbox.fund(buyer, "1")
    escrow_id = sandbox.open_escrow(buyer, sandbox_space.seller().agent_id, "0.01")
    _, result = call_tool(base_url, "classify", {"text": "I really like it", "escrow_id": escrow_id})
    assert not result.isError, _text(result)
    texts = [part.text for part in result.content if part.type == "text"]
    assert len(texts) == 1, texts  # Gradio hands the tool's outputs over as one value
    prediction, receipt = json.loads(texts[0])
    assert prediction["label"] in ("negative", "neutral", "positive")
    assert prediction["score"] == round(prediction["score"], 4)
    assert receipt["escrow_id"] == escrow_id and receipt["charged_usdc"] == "0.001000"
    _, refused = call_tool(base_url, "classify", {"text": "hello", "escrow_id": "esc_" + "Q" * 24})
    assert refused.isError and "[escrow_not_found] " in _text(refused)
