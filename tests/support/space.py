"""The Space under test: a tiny offline model, `python app.py` as a process, and a buyer's view of its escrow API."""

from __future__ import annotations

import json
import secrets
import string
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from app import LIMITS
from tests.support.escrow_server import read_amounts
from tests.support.processes import ServerProcess, space_process
from tests.support.tiny_model import build_tiny_model

#: The largest request body the Space under test reads (app.LIMITS: 413 above it).
MAX_REQUEST_BYTES = LIMITS.max_bytes


def random_escrow_id() -> str:
    """A well-formed escrow ID that no escrow has (24 random letters and digits)."""
    return "esc_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(24))


def classify_over_http(
    base_url: str, data: Any = None, *, body: bytes | None = None, headers: dict | None = None
) -> tuple[requests.Response, requests.Response | None]:
    """`/classify` through Gradio's plain HTTP API: the POST's answer, and its event stream (None if it was refused).

    `data` is sent as `{"data": data}`; `body` instead sends raw bytes as JSON.
    """
    url = base_url.rstrip("/") + "/gradio_api/call/classify"
    if body is None:
        answer = requests.post(url, json={"data": data}, headers=headers or {}, timeout=60)
    else:
        answer = requests.post(url, data=body, headers={"Content-Type": "application/json", **(headers or {})},
                               timeout=60)
    if answer.status_code != 200:
        return answer, None
    return answer, requests.get(f"{url}/{answer.json()['event_id']}", timeout=60)


def final_event(stream: str) -> tuple[str, Any]:
    """The last `complete` or `error` event of a Gradio event stream, with its JSON data."""
    final = []
    for block in stream.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields.get("event") in ("complete", "error"):
            final.append((fields["event"], json.loads(fields.get("data", "null"))))
    assert final, stream[:500]
    return final[-1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@dataclass
class Buyer:
    agent_id: str
    api_key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


class EscrowApi:
    """A buyer's view of an escrow service over real HTTP (the sandbox inside the Space, or a separate one)."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")

    def register(self, name: str = "test-buyer") -> Buyer:
        response = requests.post(f"{self.root}/agents", json={"name": name}, timeout=10)
        assert response.status_code == 201, response.text
        body = response.json()
        return Buyer(body["agent_id"], body["api_key"])

    def fund(self, buyer: Buyer, amount: str = "10") -> None:
        response = requests.post(f"{self.root}/faucet", json={"amount_usdc": amount}, headers=buyer.auth, timeout=10)
        assert response.status_code == 200, response.text

    def open_escrow(self, buyer: Buyer, seller_id: str, amount: str, ttl_seconds: int = 3600) -> str:
        body = {"seller_id": seller_id, "amount_usdc": amount, "ttl_seconds": ttl_seconds}
        response = requests.post(f"{self.root}/escrow", json=body, headers=buyer.auth, timeout=10)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def escrow(self, buyer: Buyer, escrow_id: str) -> dict:
        response = requests.get(f"{self.root}/escrow/{escrow_id}", headers=buyer.auth, timeout=10)
        assert response.status_code == 200, response.text
        return read_amounts(response.json(parse_float=Decimal))  # amounts are decimal strings: as Decimal

    def escrow_once_spent(self, buyer: Buyer, escrow_id: str, spent: Decimal, within_s: float = 20.0) -> dict:
        """The escrow once `spent` has been captured: lease mode captures every few seconds, not per call."""
        deadline = time.monotonic() + within_s
        while True:
            escrow = self.escrow(buyer, escrow_id)
            if escrow["spent_usdc"] >= spent or time.monotonic() > deadline:
                return escrow
            time.sleep(0.2)


@dataclass
class RunningSpace:
    server: ServerProcess
    data_dir: Path

    @property
    def url(self) -> str:
        return self.server.base_url + "/"

    @property
    def sandbox(self) -> EscrowApi:
        return EscrowApi(self.server.base_url + "/sandbox/api")

    def seller(self) -> Buyer:
        """The Space's own seller account in its sandbox (for checking its income)."""
        seller = json.loads((self.data_dir / "sandbox-seller.json").read_text())
        return Buyer(seller["agent_id"], seller["api_key"])

    def buyer_with_escrow(self, amount: str, funds: str = "1") -> tuple[Buyer, str]:
        """A new sandbox buyer given `funds` test USDC, and its escrow of `amount` for this Space."""
        buyer = self.sandbox.register()
        self.sandbox.fund(buyer, funds)
        return buyer, self.sandbox.open_escrow(buyer, self.seller().agent_id, amount)


@pytest.fixture(scope="module")
def sandbox_space(tmp_path_factory, tiny_model_dir) -> RunningSpace:
    tmp = tmp_path_factory.mktemp("space")
    server = space_process(tmp, MODEL_ID=str(tiny_model_dir)).start()
    yield RunningSpace(server, tmp / "space-data")
    server.stop()
