"""Who may do what on the sandbox escrow: buyers cannot deduct or capture, sellers only their own escrows."""

from __future__ import annotations

import secrets

import pytest

from tests.support.audit import Ledger

pytestmark = [pytest.mark.hostile]


def key() -> dict:
    return {"Idempotency-Key": secrets.token_hex(8)}


@pytest.fixture
def parties(escrow_server, books):
    s = escrow_server
    seller, other_seller, buyer = s.register("seller"), s.register("other"), s.register("buyer")
    s.faucet(buyer, "10")
    escrow_id = s.open_escrow(buyer, seller.agent_id, "1")["id"]
    hold = s.call(seller, "POST", f"/escrow/{escrow_id}/holds", json={"amount_usdc": "0.1"}, headers=key()).json()
    audit = books.open(Ledger(s.store.db_path, s.store), seller_id=seller.agent_id, buyer_ids=[buyer.agent_id],
                       holds_closed=False)
    yield s, seller, other_seller, buyer, escrow_id, hold["hold_id"]
    audit.reconcile(holds_closed=False)  # nothing settled by anyone: no receipts, spent 0


def test_buyer_cannot_deduct_or_capture(parties):
    s, _, _, buyer, escrow_id, hold_id = parties
    for path, body in [
        (f"/escrow/{escrow_id}/deduct", {"amount_usdc": "0.1"}),
        (f"/escrow/{escrow_id}/holds", {"amount_usdc": "0.1"}),
        (f"/escrow/{escrow_id}/holds/{hold_id}/capture", {"amount_usdc": "0.1", "final": True}),
        (f"/escrow/{escrow_id}/holds/{hold_id}/void", {}),
    ]:
        answer = s.call(buyer, "POST", path, json=body, headers=key())
        assert answer.status_code == 403, (path, answer.text)


def test_foreign_seller_sees_nothing(parties):
    s, _, other, _, escrow_id, hold_id = parties
    assert s.call(other, "GET", f"/escrow/{escrow_id}").status_code == 404
    for path, body in [
        (f"/escrow/{escrow_id}/deduct", {"amount_usdc": "0.1"}),
        (f"/escrow/{escrow_id}/holds", {"amount_usdc": "0.1"}),
        (f"/escrow/{escrow_id}/holds/{hold_id}/capture", {"amount_usdc": "0.1", "final": True}),
        (f"/escrow/{escrow_id}/release", {"amount_usdc": "0.1"}),
    ]:
        answer = s.call(other, "POST", path, json=body, headers=key())
        assert answer.status_code == 404, (path, answer.text)  # must not learn the escrow exists


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic abc", "Bearer pf_test_unknown", "Bearer a b", "bearer\tpf_test_x" * 50],
)
def test_missing_malformed_and_unknown_keys(parties, authorization):
    s, _, _, _, escrow_id, hold_id = parties
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in [("GET", f"/escrow/{escrow_id}"), ("POST", f"/escrow/{escrow_id}/deduct"),
                         ("POST", f"/escrow/{escrow_id}/holds/{hold_id}/capture"), ("GET", "/me")]:
        answer = s.call(None, method, path, json={"amount_usdc": "0.1"} if method == "POST" else None,
                        headers={**headers, **key()})
        assert answer.status_code == 401, (authorization, path, answer.text)


def test_seller_key_cannot_spend_the_buyers_balance(parties):
    s, seller, _, buyer, escrow_id, _ = parties
    assert s.call(seller, "POST", f"/escrow/{escrow_id}/release", json={"amount_usdc": "0.5"},
                  headers=key()).status_code == 403
