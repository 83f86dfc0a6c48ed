"""Small helpers shared by the escrow service tests."""

from __future__ import annotations

import secrets
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import requests

from escrow.clock import FakeClock
from escrow.store import Store
from tests.support.escrow_server import Agent, EscrowServer, parse_json


def body(response: requests.Response) -> Any:
    """The JSON body with Decimal numbers."""
    return parse_json(response)


def assert_error(response: requests.Response, status: int, code: str) -> dict:
    """The response is the contract's error JSON with this status and code."""
    assert response.status_code == status, f"{response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/json"), response.headers
    payload = response.json()
    assert set(payload) == {"error"}, payload
    assert payload["error"]["code"] == code, payload
    assert isinstance(payload["error"]["message"], str) and payload["error"]["message"], payload
    return payload


def idem() -> dict[str, str]:
    """A fresh Idempotency-Key header."""
    return {"Idempotency-Key": secrets.token_hex(16)}


def balance(server: EscrowServer, agent: Agent) -> Decimal:
    """The agent's balance via GET /me."""
    response = server.call(agent, "GET", "/me")
    assert response.status_code == 200, response.text
    return body(response)["balance_usdc"]


def funded_escrow(server: EscrowServer, amount: str = "1", faucet: str = "10", **fields: Any):
    """A buyer with faucet money, a seller and an open escrow between them."""
    buyer, seller = server.register("buyer"), server.register("seller")
    server.faucet(buyer, faucet)
    escrow = server.open_escrow(buyer, seller.agent_id, amount, **fields)
    return buyer, seller, escrow


def raw_request(server: EscrowServer, method: str, path: bytes, headers: dict[str, str] | None = None,
                payload: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send bytes exactly as given (no client-side path normalisation); returns (status, headers, body)."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(server.url)
    lines = [method.encode() + b" " + url.path.encode() + path + b" HTTP/1.1", f"Host: {url.netloc}".encode(),
             b"Connection: close", f"Content-Length: {len(payload)}".encode()]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in (headers or {}).items()]
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, content = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    response_headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        response_headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), response_headers, content


@contextmanager
def store_escrow(db_path, *, amount_micro: int, ttl_seconds: int = 3600, granted_micro: int = 5_000_000):
    """A Store on a FakeClock (no HTTP) with a buyer granted `granted_micro` and one escrow of theirs to a seller:
    yields (store, clock, buyer, seller, escrow_id); closes the store."""
    clock = FakeClock()
    store = Store(db_path, clock=clock)
    try:
        buyer, seller = store.register_agent("buyer"), store.register_agent("seller")
        store.grant(buyer["agent_id"], granted_micro)
        created = store.create_escrow(buyer["api_key"], seller_id=seller["agent_id"], amount_micro=amount_micro,
                                      ttl_seconds=ttl_seconds, description="", meta={}, release_condition=None)
        assert created.status == 201, created.body
        yield store, clock, buyer, seller, created.json()["id"]
    finally:
        store.close()
