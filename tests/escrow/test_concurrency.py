"""Many clients at once against one escrow: the ledger's atomic checks are the only authority."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import requests

from tests.escrow.helpers import body, funded_escrow


def _run_at_once(count: int, work):
    """Run work(i) in `count` threads released together; returns the results in order."""
    barrier = threading.Barrier(count)

    def task(index: int):
        barrier.wait()
        return work(index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(task, range(count)))


def test_32_threads_deducting_exactly_k_succeed(escrow_server):
    price, k, threads = Decimal("0.013"), 20, 32
    buyer, seller, escrow = funded_escrow(escrow_server, amount=str(price * k))
    url = f"{escrow_server.url}/escrow/{escrow['id']}/deduct"

    def deduct(_: int) -> requests.Response:
        with requests.Session() as session:
            return session.post(url, data=b'{"amount_usdc": "0.013"}', headers=seller.auth, timeout=60)

    responses = _run_at_once(threads, deduct)
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(ok) == k
    assert all(r.status_code == 409 and r.json()["error"]["code"] == "insufficient_funds" for r in refused)
    assert len({body(r)["deduction_id"] for r in ok}) == k
    # Each success saw a distinct remaining amount: the deducts were serialised, none lost.
    assert sorted(body(r)["remaining_usdc"] for r in ok) == [price * i for i in range(k)]
    final = escrow_server.get_escrow(buyer, escrow["id"])
    assert final["remaining_usdc"] == 0 and final["spent_usdc"] == price * k
    escrow_server.store.check_invariants()


def test_same_idempotency_key_from_8_threads_has_one_effect_and_identical_responses(escrow_server):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="1")
    for path, payload in [
        (f"/escrow/{escrow['id']}/deduct", b'{"amount_usdc": "0.25"}'),
        (f"/escrow/{escrow['id']}/holds", b'{"amount_usdc": "0.125"}'),
    ]:
        headers = {**seller.auth, "Idempotency-Key": "once-" + path.rsplit("/", 1)[1]}

        def call(_: int) -> requests.Response:
            with requests.Session() as session:
                return session.post(escrow_server.url + path, data=payload, headers=headers, timeout=60)

        responses = _run_at_once(8, call)
        assert {r.status_code for r in responses} <= {200, 201}
        assert len({r.content for r in responses}) == 1, [r.text for r in responses]
        assert sum("Idempotency-Replayed" not in r.headers for r in responses) == 1
    state = escrow_server.get_escrow(buyer, escrow["id"])
    assert (state["spent_usdc"], state["held_usdc"], state["remaining_usdc"]) == (
        Decimal("0.25"), Decimal("0.125"), Decimal("0.625"))
    escrow_server.store.check_invariants()


def test_concurrent_holds_captures_and_release_keep_the_ledger_whole(escrow_server):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="5")
    eid = escrow["id"]

    def seller_work(index: int) -> None:
        with requests.Session() as session:
            for _ in range(5):
                hold = session.post(f"{escrow_server.url}/escrow/{eid}/holds", data=b'{"amount_usdc": "0.1"}',
                                    headers=seller.auth, timeout=60)
                if hold.status_code != 201:
                    continue
                hid = hold.json()["hold_id"]
                session.post(f"{escrow_server.url}/escrow/{eid}/holds/{hid}/capture",
                             data=b'{"amount_usdc": "0.05", "final": true}', headers=seller.auth, timeout=60)

    def buyer_release(_: int) -> requests.Response:
        return requests.post(f"{escrow_server.url}/escrow/{eid}/release",
                             data=b'{"amount_usdc": "0.5", "refund_remainder": true}', headers=buyer.auth, timeout=60)

    def mixed(index: int):
        return buyer_release(index) if index == 7 else seller_work(index)

    _run_at_once(8, mixed)
    state = escrow_server.get_escrow(buyer, eid)
    assert state["status"] == "released" and state["held_usdc"] == 0 and state["remaining_usdc"] == 0
    escrow_server.store.check_invariants()
