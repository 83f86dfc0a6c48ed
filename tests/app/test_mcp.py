"""Agents that speak MCP reach the same paid tool, with the escrow ID as an argument or a header."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def _call_tool(url: str, arguments: dict, headers: dict | None = None):
    async with httpx.AsyncClient(headers=headers or {}, timeout=60) as http:
        async with streamable_http_client(url, http_client=http) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = await session.list_tools()
                names = [tool.name for tool in tools.tools]
                classify = next(name for name in names if name.endswith("classify"))
                return names, await session.call_tool(classify, arguments)


def _text(result) -> str:
    return "\n".join(part.text for part in result.content if getattr(part, "type", "") == "text")


@pytest.fixture(scope="module")
def mcp_url(sandbox_space) -> str:
    return sandbox_space.server.base_url + "/gradio_api/mcp/"


def test_mcp_tool_is_paid_by_argument_and_by_header(sandbox_space, mcp_url):
    sandbox = sandbox_space.sandbox
    seller_id = sandbox_space.seller().agent_id
    buyer = sandbox.register()
    sandbox.fund(buyer, "1")
    escrow_id = sandbox.open_escrow(buyer, seller_id, "0.01")

    names, result = asyncio.run(_call_tool(mcp_url, {"text": "I really like it", "escrow_id": escrow_id}))
    assert not result.isError, _text(result)
    assert "pricing" in " ".join(names)
    assert escrow_id in _text(result)
    assert any(label in _text(result) for label in ("negative", "neutral", "positive"))

    _, by_header = asyncio.run(_call_tool(mcp_url, {"text": "so bad"}, headers={"X-Escrow-Id": escrow_id}))
    assert not by_header.isError, _text(by_header)

    escrow = sandbox.escrow_once_spent(buyer, escrow_id, Decimal("0.002"))
    assert escrow["spent_usdc"] == Decimal("0.002")


def test_mcp_refusal_is_clear_and_free(sandbox_space, mcp_url):
    _, result = asyncio.run(_call_tool(mcp_url, {"text": "hello", "escrow_id": "esc_doesnotexist"}))
    assert result.isError
    assert "not charged" in _text(result)
    assert "Traceback" not in _text(result)
    json.dumps(_text(result))  # a plain message, serialisable as it is


async def _list_tools(url: str):
    async with httpx.AsyncClient(timeout=60) as http:
        async with streamable_http_client(url, http_client=http) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return (await session.list_tools()).tools


def test_mcp_tool_says_what_it_costs_and_what_escrow_id_is(mcp_url):
    tool = next(t for t in asyncio.run(_list_tools(mcp_url)) if t.name.endswith("classify"))
    assert "USDC per call" in tool.description and "costs nothing" in tool.description
    properties = tool.inputSchema["properties"]
    assert "text to classify" in properties["text"]["description"]
    assert "X-Escrow-Id" in properties["escrow_id"]["description"]


def test_mcp_result_is_json_with_rounded_scores_and_refusals_carry_their_code(sandbox_space, mcp_url):
    sandbox = sandbox_space.sandbox
    buyer = sandbox.register()
    sandbox.fund(buyer, "1")
    escrow_id = sandbox.open_escrow(buyer, sandbox_space.seller().agent_id, "0.01")
    _, result = asyncio.run(_call_tool(mcp_url, {"text": "I really like it", "escrow_id": escrow_id}))
    assert not result.isError, _text(result)
    texts = [part.text for part in result.content if part.type == "text"]
    assert len(texts) == 1, texts  # Gradio hands the tool's outputs over as one value
    prediction, receipt = json.loads(texts[0])
    assert prediction["label"] in ("negative", "neutral", "positive")
    assert prediction["score"] == round(prediction["score"], 4)
    assert receipt["escrow_id"] == escrow_id and receipt["charged_usdc"] == "0.001000"
    _, refused = asyncio.run(_call_tool(mcp_url, {"text": "hello", "escrow_id": "esc_" + "Q" * 24}))
    assert refused.isError and "[escrow_not_found] " in _text(refused)
