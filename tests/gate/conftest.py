"""Fixtures for the gate's tests: agents on the sandbox escrow, gates, launched Gradio apps."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest

from gate import EscrowGate


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def launched(demo) -> Iterator[str]:
    """Launch a Gradio app on loopback; yields its URL; closes it afterwards."""
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


class Market:
    """A seller and a buyer on one escrow server, and gates for the seller."""

    def __init__(self, server):
        self.server = server
        self.seller = server.register("seller")
        self.buyer = server.register("buyer")
        server.faucet(self.buyer, "100")
        self._gates: list[EscrowGate] = []

    def gate(self, **options) -> EscrowGate:
        options.setdefault("clock", self.server.clock)
        gate = EscrowGate(self.server.url, self.seller.api_key, **options)
        self._gates.append(gate)
        return gate

    def escrow(self, amount: str = "1", seller_id: str | None = None, **fields) -> str:
        escrow = self.server.open_escrow(self.buyer, seller_id or self.seller.agent_id, amount, **fields)
        return escrow["id"]

    def balance(self, escrow_id: str) -> dict[str, Decimal]:
        escrow = self.server.get_escrow(self.buyer, escrow_id)
        return {k: Decimal(str(v)) for k, v in escrow.items() if k.endswith("_usdc")} | {"status": escrow["status"]}

    def requests_for(self, escrow_id: str) -> list[tuple[str, str]]:
        return [(method, path) for method, path in self.server.request_log if escrow_id in path]

    def close(self) -> None:
        for gate in self._gates:
            gate.close()
        self.server.store.check_invariants()


@pytest.fixture
def market(escrow_server) -> Iterator[Market]:
    """A fresh seller and buyer; every gate closed and money conservation checked afterwards."""
    m = Market(escrow_server)
    yield m
    m.close()


@pytest.fixture
def make_market(escrow_server_factory) -> Iterator[Callable[..., Market]]:
    markets: list[Market] = []

    def make(**server_options) -> Market:
        m = Market(escrow_server_factory(**server_options))
        markets.append(m)
        return m

    yield make
    for m in markets:
        m.close()


@pytest.fixture(scope="module")
def module_escrow_server(tmp_path_factory):
    """One sandbox escrow server shared by a module's tests (launching apps is slow: share them too)."""
    from tests.support.escrow_server import EscrowServer

    server = EscrowServer(tmp_path_factory.mktemp("escrow") / "escrow.db").start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def served_app():
    """One FastAPI app over real HTTP for the ASGI adapter's tests; each test adds its own routes."""
    from tests.support.asgi_app import ServedApp

    app = ServedApp().start()
    yield app
    app.close()


@pytest.fixture(params=["gradio", "asgi"])
def adapter(request):
    """Each adapter in turn (tests/gate/adapters.py): the gate's contract holds for both."""
    from .adapters import AsgiAdapter, GradioAdapter

    if request.param == "gradio":
        return GradioAdapter()
    return AsgiAdapter(request.getfixturevalue("served_app"))
