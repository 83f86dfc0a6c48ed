"""A Space stopped cleanly settles its leases before it stops listening: nothing earned is left uncaptured."""

from __future__ import annotations

from decimal import Decimal

from gradio_client import Client

from escrow import Store
from tests.support.processes import SIGTERM_EXITS, space_process
from tests.support.space import EscrowApi


def test_sigterm_captures_every_charge_and_voids_the_rest(tmp_path):
    server = space_process(tmp_path, MODEL_ID="vader").start()
    try:
        client = Client(server.base_url + "/", verbose=False)
        seller_id = client.predict(api_name="/pricing")["seller_id"]
        sandbox = EscrowApi(server.base_url + "/sandbox/api")
        buyer = sandbox.register()
        sandbox.fund(buyer, "1")
        escrow_id = sandbox.open_escrow(buyer, seller_id, "0.5")
        receipts = [client.predict(f"call number {n} was great", escrow_id, api_name="/classify")[1] for n in range(3)]
        assert {r["settlement"] for r in receipts} == {"lease"}
        assert sandbox.escrow(buyer, escrow_id)["held_usdc"] > 0  # the lease is open
    finally:
        assert server.stop() in SIGTERM_EXITS, server.log()

    store = Store(tmp_path / "space-data" / "sandbox-escrow.db")
    try:
        store.check_invariants()
        escrow = store.get_escrow(buyer.api_key, escrow_id)
        assert escrow.status == 200
        body = escrow.json()
        charged = sum(Decimal(r["charged_usdc"]) for r in receipts)
        assert body["spent_usdc"] == charged == Decimal("0.003")
        assert body["held_usdc"] == 0
    finally:
        store.close()
    assert "unconfirmed at shutdown" not in server.log()
