"""Fixtures for the reliability suite: books that are reconciled after every test, markets behind a fault proxy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gate import EscrowGate
from tests.support.audit import Audit, Ledger
from tests.support.fault_proxy import FaultProxy

from tests.support.space import sandbox_space, tiny_model_dir  # noqa: F401,E402 - fixtures


class Books:
    """Every Audit a test opens; whatever the test did not reconcile itself is reconciled at teardown."""

    def __init__(self) -> None:
        self.audits: list[tuple[Audit, dict]] = []

    def open(self, ledger: Ledger, *, seller_id: str, buyer_ids: list[str] = (), per_call: bool = True,
             **reconcile_options) -> Audit:
        audit = Audit(ledger, seller_id=seller_id, buyer_ids=list(buyer_ids), per_call=per_call)
        self.audits.append((audit, reconcile_options))
        return audit

    def reconcile_all(self) -> None:
        for audit, options in self.audits:
            if not audit.reconciled:
                audit.reconcile(**options)


@pytest.fixture(autouse=True)
def books() -> Iterator[Books]:
    """Autouse: reconciliation after every test of the suite (see tests/support/audit.py)."""
    books = Books()
    yield books
    books.reconcile_all()


class Market:
    """A seller and a buyer on an in-process escrow server, reached through a fault proxy."""

    def __init__(self, server, books: Books, settlement: str = "per_call"):
        self.server = server
        self.settlement = settlement
        self.seller = server.register("seller")
        self.buyer = server.register("buyer")
        server.faucet(self.buyer, "100")
        self.proxy = FaultProxy(server.port)
        self.audit = books.open(
            Ledger(server.store.db_path, server.store), seller_id=self.seller.agent_id, buyer_ids=[self.buyer.agent_id],
            per_call=settlement == "per_call",
        )
        self._gates: list[EscrowGate] = []

    def gate(self, *, direct: bool = False, **options) -> EscrowGate:
        options.setdefault("clock", self.server.clock)
        options.setdefault("seller_id", self.seller.agent_id)
        options.setdefault("settlement", self.settlement)
        url = self.server.url if direct else self.proxy.url()
        gate = EscrowGate(url, self.seller.api_key, **options)
        self._gates.append(gate)
        return gate

    def escrow(self, amount: str = "1", **fields) -> str:
        return self.server.open_escrow(self.buyer, self.seller.agent_id, amount, **fields)["id"]

    def expire_everything_open(self, seconds: float = 4000) -> None:
        """Move the clock past every hold's expiry and sweep: orphaned holds return to the buyer."""
        self.server.clock.tick(seconds)
        self.server.store.sweep()

    def close(self) -> None:
        for gate in self._gates:
            gate.close()
        self.proxy.close()


@pytest.fixture(params=["per_call", "lease"])
def settlement(request) -> str:
    """Both settlements of the gate: one hold per call, and leases (the default)."""
    return request.param


@pytest.fixture
def market(escrow_server, books, settlement) -> Iterator[Market]:
    market = Market(escrow_server, books, settlement)
    yield market
    market.close()
    books.reconcile_all()  # while the escrow server's store is still open
