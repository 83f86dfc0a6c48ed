"""Holds the Space never captures expire back to the buyer; the escrow service SIGKILLed mid-load."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from gate import EscrowGate, GateError, PerCall
from tests.support.audit import Ledger
from tests.support.processes import escrow_process
from tests.support.space import EscrowApi

PRICE = PerCall("0.001")


@pytest.mark.crash
def test_holds_never_captured_expire_back_to_the_buyer(market):
    """A gate that dies holding money (no close, no capture): the service returns it by itself."""
    gate = market.gate(direct=True)
    escrow_id = market.escrow("0.100")
    started, release = threading.Event(), threading.Event()

    @gate.paid(PRICE, reason="echo")
    def stuck(text: str) -> str:
        started.set()
        release.wait(30)
        return text

    def call() -> None:
        try:
            result = stuck("x", escrow_id)
        except GateError as refusal:  # per_call: its hold is gone, the result is withheld
            market.audit.refused(refusal.message)
        else:  # lease: a late call is charged on a fresh hold of its own before it returns
            market.audit.paid(result, {"escrow_id": escrow_id, "charged_usdc": "0.001", "charge_id": "late"})

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    assert started.wait(30)
    escrow = market.server.get_escrow(market.buyer, escrow_id)
    assert float(escrow["held_usdc"]) > 0  # the Space "crashed" here, holding this
    market.server.clock.tick(300 + 200)  # past every hold's TTL (per call: 300 s; leases: 120 s)
    market.server.store.sweep()
    escrow = market.server.get_escrow(market.buyer, escrow_id)
    assert escrow["held_usdc"] == 0 and escrow["spent_usdc"] == 0 and escrow["remaining_usdc"] == Decimal("0.1")
    release.set()  # the stuck call finds its hold gone: no unpaid result, no charge without one
    worker.join(30)
    market.audit.reconcile()


@pytest.mark.crash
@pytest.mark.slow
@pytest.mark.parametrize("settlement", ["per_call", "lease"])
def test_escrow_service_sigkilled_mid_load_and_restarted(tmp_path, books, settlement):
    service = escrow_process(tmp_path).start()
    api = EscrowApi(service.base_url + "/api")
    seller, buyer = api.register("seller"), api.register("buyer")
    api.fund(buyer, "10")
    escrow_ids = [api.open_escrow(buyer, seller.agent_id, "0.200") for _ in range(4)]
    db = tmp_path / f"escrow-{service.port}.db"
    audit = books.open(Ledger(db), seller_id=seller.agent_id, buyer_ids=[buyer.agent_id],
                       per_call=settlement == "per_call", holds_closed=False)
    gate = EscrowGate(service.base_url + "/api", seller.api_key, seller_id=seller.agent_id, settlement=settlement,
                      timeout=(0.5, 2.0))

    @gate.paid(PRICE, reason="echo", receipt=True)
    def echo(i: int) -> int:
        return i

    stop = threading.Event()

    def agent(n: int) -> None:
        i = 0
        while not stop.is_set() and i < 400:
            i += 1
            try:
                result, receipt = echo(i, escrow_ids[n % 4])
            except GateError as refusal:
                audit.refused(refusal.message)
            else:
                audit.paid(result, receipt)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(agent, n) for n in range(8)]
        threading.Event().wait(1.0)
        service.kill()  # SIGKILL mid-load
        threading.Event().wait(0.5)
        service.start()  # same port, same database
        threading.Event().wait(1.0)
        stop.set()
        for future in futures:
            future.result()
    gate.close()  # leases: capture what is owed, void the rest
    service.stop()
    assert audit.outcomes.receipts, "no call was paid at all"
    # per_call: a call whose capture's answer died with the service may have a hold left open;
    # it expires back to the buyer. Everything else must be exact.
    audit.reconcile(holds_closed=False)
