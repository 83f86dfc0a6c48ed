"""Fixtures for the buyer library's tests: the Space as a process, and a small shop on a real escrow server.

The shop is a FastAPI app served over real HTTP whose ``/v1/<name>`` routes are guarded by ``gate.paid_route``
(the adapter the Space's own plain routes use) and whose ``GET /v1/pricing`` follows the Space's contract.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from buyer import Wallet
from gate import EscrowGate, PerCall
from tests.support.escrow_server import EscrowServer

PRICE = Decimal("0.001")



class Text(BaseModel):
    text: str


class Shop:
    """A seller's FastAPI app with paid plain routes, its gate, and buyers on the same escrow server."""

    def __init__(self, server: EscrowServer, served: Any) -> None:
        self.server = server
        self.served = served
        self.seller = server.register("shop-seller")
        self.gate = EscrowGate(server.url, self.seller.api_key, clock=server.clock, settlement="per_call")
        self.ran: list[str] = []
        self._lock = threading.Lock()
        self.pricing: dict[str, Any] = {
            "seller_id": self.seller.agent_id, "escrow_api": server.url, "mode": "sandbox", "model": "upper",
            "price_per_call_usdc": "0.001", "functions": {},
        }
        app: FastAPI = served.app

        def too_long(body: Text) -> None:
            if len(body.text) > 50:
                raise ValueError("At most 50 characters")

        @app.post("/v1/shout")
        @self.gate.paid_route(PerCall(PRICE), reason="shouting", check=too_long, receipt_extra={"model": "upper"})
        def shout(body: Text) -> dict:
            if body.text == "fail":
                raise RuntimeError("boom")
            with self._lock:
                self.ran.append(body.text)
            return {"text": body.text.upper()}

        @app.get("/v1/pricing")
        def pricing() -> dict:
            return self.pricing

        self.list("shout", ["text"])

    def list(self, name: str, parameters: list[str], price: str = "0.001000") -> None:
        """Add ``name`` to the pricing answer as a plain route."""
        self.pricing["functions"][name] = {
            "route": f"/v1/{name}", "api_name": f"/{name}", "price_usdc": price, "parameters": parameters,
            "reason": name,
        }

    @property
    def url(self) -> str:
        return self.served.url

    def wallet(self, usdc: str = "1") -> Wallet:
        """A new buyer on the shop's escrow server holding ``usdc``."""
        agent = self.server.register("buyer")
        if Decimal(usdc) > 0:
            self.server.faucet(agent, usdc)
        return Wallet(self.server.url, agent.api_key)


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Iterator[Shop]:
    """One shop per module (its server and app start once); tests add their own buyers."""
    from tests.support.asgi_app import ServedApp

    server = EscrowServer(tmp_path_factory.mktemp("escrow") / "escrow.db").start()
    served = ServedApp().start()
    shop = Shop(server, served)
    yield shop
    shop.gate.close()
    served.close()
    server.store.check_invariants()
    server.close()
