"""An agent speaking MCP to a Space: one session, the paid tool whose name ends with a given word, one call."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def _call(url: str, tool_suffix: str, arguments: dict, headers: dict | None) -> tuple[Any, Any]:
    async with httpx.AsyncClient(headers=headers or {}, timeout=60) as http:
        async with streamable_http_client(url, http_client=http) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tool = next(tool for tool in (await session.list_tools()).tools if tool.name.endswith(tool_suffix))
                return tool, await session.call_tool(tool.name, arguments)


def call_tool(base_url: str, tool_suffix: str, arguments: dict, headers: dict | None = None) -> tuple[Any, Any]:
    """(the tool as listed, the call's result) for the Space at `base_url` (its /gradio_api/mcp/ endpoint)."""
    return asyncio.run(_call(base_url + "/gradio_api/mcp/", tool_suffix, arguments, headers))


def tool_outputs(result: Any) -> Any:
    """A paid tool's outputs: Gradio hands them over as one text part, a JSON array such as [result, receipt]."""
    assert not result.isError, result.content
    (text,) = [part.text for part in result.content if part.type == "text"]
    return json.loads(text)
