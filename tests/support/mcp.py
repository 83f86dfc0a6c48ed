"""An agent speaking MCP to a Space: list its tools, or call the paid tool whose name ends with a given word."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def _in_session(base_url: str, headers: dict | None, act) -> Any:
    """One MCP session with the Space at `base_url` (its /gradio_api/mcp/ endpoint): ``await act(session)``."""
    async with httpx.AsyncClient(headers=headers or {}, timeout=60) as http:
        async with streamable_http_client(base_url + "/gradio_api/mcp/", http_client=http) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await act(session)


def list_tools(base_url: str) -> list[Any]:
    """The Space's tools as MCP lists them."""

    async def listed(session: ClientSession) -> list[Any]:
        return (await session.list_tools()).tools

    return asyncio.run(_in_session(base_url, None, listed))


def call_tool(base_url: str, tool_suffix: str, arguments: dict, headers: dict | None = None) -> tuple[Any, Any]:
    """(the tool as listed, the call's result) for the tool whose name ends with `tool_suffix`."""

    async def called(session: ClientSession) -> tuple[Any, Any]:
        tool = next(tool for tool in (await session.list_tools()).tools if tool.name.endswith(tool_suffix))
        return tool, await session.call_tool(tool.name, arguments)

    return asyncio.run(_in_session(base_url, headers, called))


def tool_outputs(result: Any) -> Any:
    """A paid tool's outputs: Gradio hands them over as one text part, a JSON array such as [result, receipt]."""
    assert not result.isError, result.content
    (text,) = [part.text for part in result.content if part.type == "text"]
    return json.loads(text)
