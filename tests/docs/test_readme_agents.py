"""The README's agent snippets, each run exactly as printed (the Space's URL put in place of the README's
http://127.0.0.1:7860) against a running Space in sandbox mode, and what each prints checked."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from decimal import Decimal

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.support.processes import REPO

from .test_readme_examples import readme_example

README_URL = "http://127.0.0.1:7860"


LANGUAGES = {"curl": "bash", "mcp": "json"}  # the others are Python


def snippet(name: str, space_url: str) -> str:
    return readme_example(name, LANGUAGES.get(name, "python")).replace(README_URL, space_url)


def run(argv: list[str], **env: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def funded_escrow(sandbox_space, amount: str = "0.05") -> str:
    sandbox = sandbox_space.sandbox
    buyer = sandbox.register()
    sandbox.fund(buyer, "1")
    return sandbox.open_escrow(buyer, sandbox_space.seller().agent_id, amount)


def test_buyer_snippet(sandbox_space):
    out = run([sys.executable, "-c", snippet("buyer", sandbox_space.server.base_url)])
    first, statement = out.splitlines()[0], "\n".join(out.splitlines()[1:])
    assert first.endswith(" 0.001000") and "'label'" in first, out
    assert "0.001000" in statement, out


def test_curl_snippet(sandbox_space):
    escrow_id = funded_escrow(sandbox_space)
    out = run(["bash", "-c", snippet("curl", sandbox_space.server.base_url)], SPACE=sandbox_space.server.base_url,
              ESCROW_ID=escrow_id)
    pricing, paid, refused = (json.loads(line) for line in out.replace("}{", "}\n{").splitlines())
    assert pricing["functions"]["classify"]["price_usdc"] == "0.001000"
    assert paid["receipt"]["escrow_id"] == escrow_id and paid["receipt"]["charged_usdc"] == "0.001000"
    assert refused["error"]["code"] == "missing_escrow_id" and refused["payment"]["price_usdc"] is None


def test_gradio_client_snippet(sandbox_space):
    escrow_id = funded_escrow(sandbox_space)
    out = run([sys.executable, "-c", snippet("gradio_client", sandbox_space.server.base_url)], ESCROW_ID=escrow_id)
    assert out.strip().endswith(" 0.001000") and "'label'" in out, out


def test_mcp_configuration(sandbox_space):
    escrow_id = funded_escrow(sandbox_space)
    config = json.loads(snippet("mcp", sandbox_space.server.base_url).replace("esc_YOUR_ESCROW_ID", escrow_id))
    server = config["mcpServers"]["paid-sentiment"]

    async def call() -> str:
        async with httpx.AsyncClient(headers=server["headers"], timeout=60) as http:
            async with streamable_http_client(server["url"], http_client=http) as (read, write, _):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    tools = (await session.list_tools()).tools
                    name = next(tool.name for tool in tools if tool.name.endswith("classify"))
                    result = await session.call_tool(name, {"text": "I love this!"})
                    assert not result.isError, result
                    return result.content[0].text

    prediction, receipt = json.loads(asyncio.run(call()))
    assert prediction["label"] in ("negative", "neutral", "positive")
    assert receipt["escrow_id"] == escrow_id and Decimal(receipt["charged_usdc"]) == Decimal("0.001")
