from decimal import Decimal


def test_smoke(escrow_server):
    s = escrow_server
    buyer, seller = s.register("b"), s.register("s")
    assert s.faucet(buyer)["balance_usdc"] == Decimal("10")
    esc = s.open_escrow(buyer, seller.agent_id, "1.5")
    assert esc["remaining_usdc"] == Decimal("1.5")
    r = s.call(seller, "POST", f"/escrow/{esc['id']}/deduct", json={"amount_usdc": "0.3"})
    assert r.status_code == 200, r.text
    print(r.text)
    r = s.call(seller, "POST", f"/escrow/{esc['id']}/holds", json={"amount_usdc": "0.2"})
    assert r.status_code == 201, r.text
    print(r.text)
    s.store.check_invariants()
    print(s.request_log)
