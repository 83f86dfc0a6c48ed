"""A release with refund_remainder leaves the seller's open holds alone (escrow/README.md, a deliberate deviation
from the contract, which says it voids them first: that let a buyer take back what a lease had already earned).

The release settles its amount and refunds what *remains*; each open hold stays capturable until it is captured
final, voided or expires, and what it does not capture then goes to the buyer as a refund, never back to remaining.
"""

from __future__ import annotations

from decimal import Decimal

from tests.escrow.helpers import assert_error, balance, body, funded_escrow, store_escrow


def parts(server, agent, escrow_id) -> tuple:
    e = server.get_escrow(agent, escrow_id)
    return e["status"], e["spent_usdc"], e["held_usdc"], e["remaining_usdc"], e["refunded_usdc"]


def released_with_a_hold(server, hold="0.3", ttl_seconds=None):
    """Escrow of 1 (buyer had 10), an open hold of `hold`, then release 0 with refund_remainder."""
    buyer, seller, escrow = funded_escrow(server, amount="1")
    eid = escrow["id"]
    payload = {"amount_usdc": hold} if ttl_seconds is None else {"amount_usdc": hold, "ttl_seconds": ttl_seconds}
    hold_id = body(server.call(seller, "POST", f"/escrow/{eid}/holds", json=payload))["hold_id"]
    released = body(server.call(buyer, "POST", f"/escrow/{eid}/release",
                                json={"amount_usdc": 0, "refund_remainder": True}))
    return buyer, seller, eid, hold_id, released


def test_release_refunds_what_remains_at_once_and_leaves_the_hold_held(escrow_server):
    buyer, seller, eid, hold_id, released = released_with_a_hold(escrow_server)
    assert (released["status"], released["spent_usdc"], released["held_usdc"], released["remaining_usdc"],
            released["refunded_usdc"]) == ("released", 0, Decimal("0.3"), 0, Decimal("0.7"))
    assert parts(escrow_server, buyer, eid) == ("released", 0, Decimal("0.3"), 0, Decimal("0.7"))
    assert parts(escrow_server, seller, eid) == ("released", 0, Decimal("0.3"), 0, Decimal("0.7"))
    assert balance(escrow_server, buyer) == Decimal("9.7")
    assert body(escrow_server.call(buyer, "GET", "/me"))["escrows_open"] == 0
    escrow_server.store.check_invariants()


def test_a_released_escrow_takes_nothing_new(escrow_server):
    buyer, seller, eid, hold_id, _ = released_with_a_hold(escrow_server)
    for agent, path, payload in [
        (seller, f"/escrow/{eid}/holds", {"amount_usdc": "0.1"}),
        (seller, f"/escrow/{eid}/deduct", {"amount_usdc": "0.1"}),
        (buyer, f"/escrow/{eid}/release", {"amount_usdc": "0.1"}),
        (buyer, f"/escrow/{eid}/release", {"amount_usdc": 0, "refund_remainder": True}),
        (seller, f"/escrow/{eid}/holds/hold_{'0' * 24}/capture", {"amount_usdc": "0.1"}),  # not its hold
    ]:
        assert_error(escrow_server.call(agent, "POST", path, json=payload), 410, "escrow_closed")
    # the buyer cannot touch the seller's hold either
    assert_error(escrow_server.call(buyer, "POST", f"/escrow/{eid}/holds/{hold_id}/void"), 403, "forbidden")
    assert parts(escrow_server, buyer, eid) == ("released", 0, Decimal("0.3"), 0, Decimal("0.7"))
    escrow_server.store.check_invariants()


def test_seller_captures_part_then_final_and_the_rest_is_refunded(escrow_server):
    buyer, seller, eid, hold_id, _ = released_with_a_hold(escrow_server)
    part = body(escrow_server.call(seller, "POST", f"/escrow/{eid}/holds/{hold_id}/capture",
                                   json={"amount_usdc": "0.1"}))
    assert (part["status"], part["captured_usdc"], part["held_usdc"], part["fee_usdc"], part["remaining_usdc"]) == (
        "open", Decimal("0.1"), Decimal("0.2"), Decimal("0.001"), 0)
    assert parts(escrow_server, buyer, eid) == ("released", Decimal("0.1"), Decimal("0.2"), 0, Decimal("0.7"))
    escrow_server.store.check_invariants()
    final = body(escrow_server.call(seller, "POST", f"/escrow/{eid}/holds/{hold_id}/capture",
                                    json={"amount_usdc": "0.05", "final": True}))
    assert (final["status"], final["captured_usdc"], final["held_usdc"], final["remaining_usdc"]) == (
        "closed", Decimal("0.15"), 0, 0)
    assert parts(escrow_server, buyer, eid) == ("released", Decimal("0.15"), 0, 0, Decimal("0.85"))
    assert balance(escrow_server, buyer) == Decimal("9.85")
    assert balance(escrow_server, seller) == Decimal("0.1485")  # 0.15 less the 1 % fee
    # closed now: the hold is gone like the escrow
    assert_error(escrow_server.call(seller, "POST", f"/escrow/{eid}/holds/{hold_id}/capture",
                                    json={"amount_usdc": "0.01"}), 410, "escrow_closed")
    assert_error(escrow_server.call(seller, "POST", f"/escrow/{eid}/holds/{hold_id}/void"), 410, "escrow_closed")
    escrow_server.store.check_invariants()


def test_capture_beyond_the_hold_is_refused_after_the_release(escrow_server):
    buyer, seller, eid, hold_id, _ = released_with_a_hold(escrow_server)
    assert_error(escrow_server.call(seller, "POST", f"/escrow/{eid}/holds/{hold_id}/capture",
                                    json={"amount_usdc": "0.300001"}), 409, "exceeds_hold")
    assert parts(escrow_server, buyer, eid) == ("released", 0, Decimal("0.3"), 0, Decimal("0.7"))
    escrow_server.store.check_invariants()


def test_void_refunds_all_of_the_hold(escrow_server):
    buyer, seller, eid, hold_id, _ = released_with_a_hold(escrow_server)
    voided = body(escrow_server.call(seller, "POST", f"/escrow/{eid}/holds/{hold_id}/void"))
    assert (voided["status"], voided["captured_usdc"], voided["held_usdc"], voided["remaining_usdc"]) == (
        "closed", 0, 0, 0)
    assert parts(escrow_server, buyer, eid) == ("released", 0, 0, 0, Decimal("1"))
    assert balance(escrow_server, buyer) == Decimal("10")
    assert balance(escrow_server, seller) == 0
    escrow_server.store.check_invariants()


def test_final_capture_of_everything_refunds_nothing_more(escrow_server):
    buyer, seller, eid, hold_id, _ = released_with_a_hold(escrow_server)
    final = body(escrow_server.call(seller, "POST", f"/escrow/{eid}/holds/{hold_id}/capture",
                                    json={"amount_usdc": "0.3", "final": True}))
    assert (final["status"], final["captured_usdc"], final["held_usdc"]) == ("closed", Decimal("0.3"), 0)
    assert parts(escrow_server, buyer, eid) == ("released", Decimal("0.3"), 0, 0, Decimal("0.7"))
    escrow_server.store.check_invariants()


def test_the_hold_expiring_refunds_its_rest(escrow_server):
    buyer, seller, eid, hold_id, _ = released_with_a_hold(escrow_server, ttl_seconds=60)
    escrow_server.call(seller, "POST", f"/escrow/{eid}/holds/{hold_id}/capture", json={"amount_usdc": "0.1"})
    escrow_server.clock.tick(59)
    assert parts(escrow_server, buyer, eid) == ("released", Decimal("0.1"), Decimal("0.2"), 0, Decimal("0.7"))
    escrow_server.clock.tick(1)  # a hold expires at expires_at exactly
    assert balance(escrow_server, buyer) == Decimal("9.9")  # GET /me applies the buyer's due hold expiries
    assert parts(escrow_server, buyer, eid) == ("released", Decimal("0.1"), 0, 0, Decimal("0.9"))
    assert_error(escrow_server.call(seller, "POST", f"/escrow/{eid}/holds/{hold_id}/capture",
                                    json={"amount_usdc": "0.01"}), 410, "escrow_closed")
    escrow_server.store.check_invariants()


def test_the_hold_expiring_with_nothing_held_closes_too(escrow_server):
    buyer, seller, eid, hold_id, _ = released_with_a_hold(escrow_server, ttl_seconds=60)
    escrow_server.call(seller, "POST", f"/escrow/{eid}/holds/{hold_id}/capture", json={"amount_usdc": "0.3"})
    escrow_server.clock.tick(60)
    assert parts(escrow_server, buyer, eid) == ("released", Decimal("0.3"), 0, 0, Decimal("0.7"))
    assert_error(escrow_server.call(seller, "POST", f"/escrow/{eid}/holds/{hold_id}/void"), 410, "escrow_closed")
    escrow_server.store.check_invariants()


def test_the_sweeper_expires_holds_of_released_escrows(tmp_path):
    with store_escrow(tmp_path / "ledger.db", amount_micro=2_000_000) as (store, clock, buyer, seller, eid):
        hold = store.create_hold(seller["api_key"], eid, amount_micro=500_000, ttl_seconds=30).json()
        captured = store.capture(seller["api_key"], eid, hold["hold_id"], amount_micro=100_000, final=False)
        assert captured.status == 200, captured.body
        released = store.release(buyer["api_key"], eid, amount_micro=0, refund_remainder=True, meta=None)
        assert released.status == 200, released.body
        assert store.balance_micro(buyer["agent_id"]) == 4_500_000
        store.check_invariants()
        clock.tick(30)
        assert store.sweep() == 1
        assert store.balance_micro(buyer["agent_id"]) == 4_900_000  # refunded without anyone calling in
        assert store.sweep() == 0  # nothing left due
        with store._lock:
            row = store._conn.execute("SELECT spent_micro, held_micro, remaining_micro, refunded_micro, status"
                                      " FROM escrows WHERE id = ?", (eid,)).fetchone()
            refunds = store._conn.execute("SELECT from_account, to_account, amount_micro FROM transfers"
                                          " WHERE escrow_id = ? AND kind = 'refund' ORDER BY seq", (eid,)).fetchall()
        assert row == (100_000, 0, 0, 1_900_000, "released")
        assert refunds == [
            (f"escrow:{eid}:remaining", f"agent:{buyer['agent_id']}", 1_500_000),
            (f"escrow:{eid}:held", f"agent:{buyer['agent_id']}", 400_000),
        ]
        store.check_invariants()


def test_hold_ttl_never_outlives_the_escrow_so_escrow_expiry_is_unchanged(escrow_server):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="1", ttl_seconds=10)
    eid = escrow["id"]
    hold_id = body(escrow_server.call(seller, "POST", f"/escrow/{eid}/holds",
                                      json={"amount_usdc": "0.4", "ttl_seconds": 600}))["hold_id"]
    escrow_server.call(buyer, "POST", f"/escrow/{eid}/release", json={"amount_usdc": "0.1", "refund_remainder": True})
    assert parts(escrow_server, buyer, eid) == ("released", Decimal("0.1"), Decimal("0.4"), 0, Decimal("0.5"))
    escrow_server.clock.tick(10)  # the escrow's expiry: its hold, cut to it, expires with it
    assert parts(escrow_server, buyer, eid) == ("released", Decimal("0.1"), 0, 0, Decimal("0.9"))
    assert_error(escrow_server.call(seller, "POST", f"/escrow/{eid}/holds/{hold_id}/void"), 410, "escrow_closed")
    escrow_server.store.check_invariants()


def test_an_expired_escrow_still_voids_its_holds_and_refunds(escrow_server):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="1", ttl_seconds=10)
    eid = escrow["id"]
    escrow_server.call(seller, "POST", f"/escrow/{eid}/holds", json={"amount_usdc": "0.4"})
    escrow_server.clock.tick(10)
    assert parts(escrow_server, buyer, eid) == ("expired", 0, 0, 0, Decimal("1"))
    escrow_server.store.check_invariants()


def test_benchmark_payout_still_voids_the_sellers_holds(escrow_server):
    condition = {"type": "benchmark", "metric": "accuracy", "threshold": 0.9}
    buyer, seller, escrow = funded_escrow(escrow_server, amount="1", release_condition=condition)
    eid = escrow["id"]
    hold_id = body(escrow_server.call(seller, "POST", f"/escrow/{eid}/holds", json={"amount_usdc": "0.4"}))["hold_id"]
    paid = body(escrow_server.call(seller, "POST", f"/escrow/{eid}/submit-result",
                                   json={"metric": "accuracy", "score": 0.95}))
    assert (paid["status"], paid["payout_usdc"]) == ("released", Decimal("1"))
    assert parts(escrow_server, buyer, eid) == ("released", Decimal("1"), 0, 0, 0)
    assert_error(escrow_server.call(seller, "POST", f"/escrow/{eid}/holds/{hold_id}/capture",
                                    json={"amount_usdc": "0.1"}), 410, "escrow_closed")
    escrow_server.store.check_invariants()


def test_a_fully_captured_hold_on_an_active_escrow_expires_once_and_is_not_swept_again(tmp_path):
    with store_escrow(tmp_path / "ledger.db", amount_micro=2_000_000) as (store, clock, buyer, seller, eid):
        hold_id = store.create_hold(seller["api_key"], eid, amount_micro=300_000, ttl_seconds=30).json()["hold_id"]
        captured = store.capture(seller["api_key"], eid, hold_id, amount_micro=300_000, final=False)
        assert captured.status == 200, captured.body  # fully captured, not final: nothing held, hold still open
        clock.tick(30)
        void = store.capture(seller["api_key"], eid, hold_id, amount_micro=0, final=True)
        assert void.status == 409 and "expired" in void.body  # expired even before any sweep
        before = store.totals()
        store.sweep()
        assert store.totals() == before  # closing it moves no money
        with store._lock:
            status = store._conn.execute("SELECT status FROM holds WHERE id = ?", (hold_id,)).fetchone()[0]
        assert status == "expired"
        assert store.sweep() == 0  # its escrow is not picked again
        store.check_invariants()
