"""Idempotency keys, malformed input, odd headers, unknown routes, mounting under a prefix."""

from __future__ import annotations

import asyncio
import socket
import threading
from decimal import Decimal

import pytest
import requests
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from escrow import FakeClock, Store, create_api
from tests.escrow.helpers import assert_error, body, funded_escrow, raw_request


def test_same_key_same_body_replays_the_stored_response_and_applies_once(escrow_server):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="1")
    path = f"/escrow/{escrow['id']}/deduct"
    headers = {"Idempotency-Key": "deduct-1"}
    first = escrow_server.call(seller, "POST", path, json={"amount_usdc": "0.1"}, headers=headers)
    # Same body with other whitespace and key order is the same request.
    second = escrow_server.call(seller, "POST", path, data=b'{ "amount_usdc" : "0.1" }', headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert second.headers.get("Idempotency-Replayed") == "true"
    assert escrow_server.get_escrow(buyer, escrow["id"])["spent_usdc"] == Decimal("0.1")
    escrow_server.store.check_invariants()


def test_same_key_with_another_body_or_route_is_refused(escrow_server):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="1")
    headers = {"Idempotency-Key": "k"}
    eid = escrow["id"]
    assert escrow_server.call(seller, "POST", f"/escrow/{eid}/deduct", json={"amount_usdc": "0.1"},
                              headers=headers).status_code == 200
    assert_error(escrow_server.call(seller, "POST", f"/escrow/{eid}/deduct", json={"amount_usdc": "0.2"},
                                    headers=headers), 422, "idempotency_key_reused")
    assert_error(escrow_server.call(seller, "POST", f"/escrow/{eid}/holds", json={"amount_usdc": "0.1"},
                                    headers=headers), 422, "idempotency_key_reused")
    assert escrow_server.get_escrow(buyer, eid)["spent_usdc"] == Decimal("0.1")
    assert escrow_server.get_escrow(buyer, eid)["held_usdc"] == 0


def test_keys_are_scoped_to_the_calling_agent(escrow_server):
    buyer_a, seller_a, escrow_a = funded_escrow(escrow_server, amount="1")
    buyer_b, seller_b, escrow_b = funded_escrow(escrow_server, amount="1")
    headers = {"Idempotency-Key": "shared"}
    for seller, escrow in ((seller_a, escrow_a), (seller_b, escrow_b)):
        response = escrow_server.call(seller, "POST", f"/escrow/{escrow['id']}/deduct", json={"amount_usdc": "0.5"},
                                      headers=headers)
        assert response.status_code == 200 and "Idempotency-Replayed" not in response.headers


def test_business_refusals_are_replayed_but_malformed_requests_are_not_stored(escrow_server):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="1")
    path = f"/escrow/{escrow['id']}/deduct"
    refused = escrow_server.call(seller, "POST", path, json={"amount_usdc": "2"}, headers={"Idempotency-Key": "r"})
    assert_error(refused, 409, "insufficient_funds")
    again = escrow_server.call(seller, "POST", path, json={"amount_usdc": "2"}, headers={"Idempotency-Key": "r"})
    assert again.status_code == 409 and again.content == refused.content
    malformed = escrow_server.call(seller, "POST", path, json={"amount_usdc": "x"}, headers={"Idempotency-Key": "m"})
    assert_error(malformed, 422, "invalid_amount")
    fixed = escrow_server.call(seller, "POST", path, json={"amount_usdc": "0.5"}, headers={"Idempotency-Key": "m"})
    assert fixed.status_code == 200


def test_rate_limit_replay_keeps_retry_after(escrow_server):
    agent = escrow_server.register()
    escrow_server.faucet(agent, "100")
    first = escrow_server.call(agent, "POST", "/faucet", json={}, headers={"Idempotency-Key": "f"})
    second = escrow_server.call(agent, "POST", "/faucet", json={}, headers={"Idempotency-Key": "f"})
    assert_error(first, 429, "rate_limited")
    assert second.status_code == 429 and second.headers["Retry-After"] == first.headers["Retry-After"]


def test_a_key_is_forgotten_after_24_hours(escrow_server):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="1", ttl_seconds=172800)
    path = f"/escrow/{escrow['id']}/deduct"
    headers = {"Idempotency-Key": "daily"}
    escrow_server.call(seller, "POST", path, json={"amount_usdc": "0.1"}, headers=headers)
    escrow_server.clock.tick(86_400)
    fresh = escrow_server.call(seller, "POST", path, json={"amount_usdc": "0.1"}, headers=headers)
    assert fresh.status_code == 200 and "Idempotency-Replayed" not in fresh.headers
    assert escrow_server.get_escrow(buyer, escrow["id"])["spent_usdc"] == Decimal("0.2")


@pytest.mark.parametrize("key", ["", "x" * 129, "caf\u00e9", "tab\there"], ids=repr)
def test_bad_idempotency_keys_are_invalid_request(escrow_server, key):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="1")
    status, headers, content = raw_request(
        escrow_server, "POST", f"/escrow/{escrow['id']}/deduct".encode(),
        {**seller.auth, "Idempotency-Key": key, "Content-Type": "application/json"}, b'{"amount_usdc": "0.1"}',
    )
    assert status == 422 and b'"invalid_request"' in content, content
    assert escrow_server.get_escrow(buyer, escrow["id"])["spent_usdc"] == 0


def test_printable_edge_keys_are_accepted(escrow_server):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="1")
    for key in ("x" * 128, "!~ key with spaces ~!"):
        response = escrow_server.call(seller, "POST", f"/escrow/{escrow['id']}/deduct", json={"amount_usdc": "0.1"},
                                      headers={"Idempotency-Key": key})
        assert response.status_code == 200, response.text


def test_two_idempotency_headers_are_invalid_request(escrow_server):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="1")
    request = (f"POST /api/escrow/{escrow['id']}/deduct HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               f"Authorization: Bearer {seller.api_key}\r\nIdempotency-Key: a\r\nIdempotency-Key: b\r\n"
               "Content-Length: 22\r\n\r\n" '{"amount_usdc": "0.1"}').encode()
    port = int(escrow_server.url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        reply = b"".join(iter(lambda: sock.recv(65536), b""))
    assert reply.startswith(b"HTTP/1.1 422") and b"invalid_request" in reply, reply


@pytest.mark.parametrize(
    "payload",
    [b"{", b"[]", b'"x"', b"1", b"null", b'{"amount_usdc": "0.1", "amount_usdc": "0.1"}', b"\xff\xfe{}",
     b"[" * 5000 + b"]" * 5000, b'{"amount_usdc": "0.1"} trailing', b'{"amount_usdc": "0.1",}'],
    ids=lambda p: repr(p[:30]),
)
def test_malformed_bodies_are_invalid_request_never_500(escrow_server, payload):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="1")
    for agent, path in [(seller, f"/escrow/{escrow['id']}/deduct"), (buyer, "/escrow"), (buyer, "/faucet"),
                        (None, "/agents"), (buyer, f"/escrow/{escrow['id']}/release")]:
        response = escrow_server.call(agent, "POST", path, data=payload)
        assert_error(response, 422, "invalid_request")
    assert escrow_server.get_escrow(buyer, escrow["id"])["spent_usdc"] == 0
    escrow_server.store.check_invariants()


def test_bodies_over_64_kib_are_413(escrow_server):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="1")
    big = b'{"amount_usdc": "0.1", "reason": "' + b"x" * (64 * 1024) + b'"}'
    response = escrow_server.call(seller, "POST", f"/escrow/{escrow['id']}/deduct", data=big)
    assert_error(response, 413, "invalid_request")

    def chunks():  # no Content-Length: chunked upload, counted as it arrives
        yield big[:40_000]
        yield big[40_000:]

    chunked = requests.post(escrow_server.url + f"/escrow/{escrow['id']}/deduct", data=chunks(), headers=seller.auth,
                            timeout=30)
    assert_error(chunked, 413, "invalid_request")
    assert escrow_server.get_escrow(buyer, escrow["id"])["spent_usdc"] == 0
    just_under = b'{"amount_usdc": "0.1", "reason": "' + b"x" * 1000 + b'"}'
    assert escrow_server.call(seller, "POST", f"/escrow/{escrow['id']}/deduct", data=just_under).status_code == 200


def test_wrong_types_are_invalid_request(escrow_server):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="1", release_condition={
        "type": "benchmark", "metric": "acc", "threshold": 1})
    eid = escrow["id"]
    cases = [
        (buyer, f"/escrow/{eid}/release", {"amount_usdc": "0.1", "refund_remainder": "yes"}),
        (buyer, f"/escrow/{eid}/release", {"amount_usdc": "0.1", "meta": "x"}),
        (seller, f"/escrow/{eid}/submit-result", {"metric": 1, "score": 1}),
        (seller, f"/escrow/{eid}/submit-result", {"metric": "acc", "score": True}),
        (seller, f"/escrow/{eid}/submit-result", {"metric": "acc"}),
        (seller, f"/escrow/{eid}/submit-result", {"metric": "acc", "score": 1, "model_repo": []}),
        (None, "/agents", {"name": 5}),
        (buyer, "/escrow", {"seller_id": seller.agent_id, "amount_usdc": "1", "ttl_seconds": 60, "meta": {"x": [{}] * 2,
                                                                                                          "n": None},
                            "release_condition": {"type": "benchmark", "metric": "acc", "threshold": 1,
                                                  "higher_is_better": "no"}}),
    ]
    for agent, path, payload in cases:
        assert_error(escrow_server.call(agent, "POST", path, json=payload), 422, "invalid_request")
    assert escrow_server.get_escrow(buyer, eid)["status"] == "active"


def test_unknown_routes_and_methods_answer_the_contract_error_shape(escrow_server):
    agent = escrow_server.register()
    assert_error(escrow_server.call(agent, "GET", "/nope"), 404, "not_found")
    assert_error(escrow_server.call(agent, "GET", "/me/"), 404, "not_found")
    assert_error(escrow_server.call(agent, "DELETE", "/me"), 405, "method_not_allowed")
    assert_error(escrow_server.call(agent, "GET", "/faucet"), 405, "method_not_allowed")
    outside = requests.get(escrow_server.url.removesuffix("/api") + "/elsewhere", timeout=10)
    assert_error(outside, 404, "not_found")


def test_content_type_is_not_required(escrow_server):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="1")
    response = escrow_server.call(seller, "POST", f"/escrow/{escrow['id']}/deduct", data=b'{"amount_usdc": "0.1"}',
                                  headers={"Content-Type": "text/plain"})
    assert response.status_code == 200


def test_api_mounted_under_a_prefix_checks_raw_paths_relative_to_it(tmp_path):
    store = Store(tmp_path / "mounted.db", clock=FakeClock())
    app = Starlette(routes=[Mount("/sandbox/api", create_api(store, latency_ms=5))])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, http="h11", ws="none", lifespan="off", log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        started = threading.Event()
        for _ in range(2000):
            if server.started:
                break
            started.wait(0.01)
        root = f"http://127.0.0.1:{port}/sandbox/api"
        with requests.Session() as session:
            created = session.post(root + "/agents", data=b"{}", timeout=10)
            assert created.status_code == 201
            key = created.json()["api_key"]
            me = session.get(root + "/me", headers={"Authorization": f"Bearer {key}"}, timeout=10)
            assert me.status_code == 200 and body(me)["balance_usdc"] == 0
            bad = session.get(root + "/escrow/esc_bad", headers={"Authorization": f"Bearer {key}"}, timeout=10)
            assert_error(bad, 404, "not_found")
            unknown = session.get(root + "/escrow/esc_" + "a" * 24, headers={"Authorization": f"Bearer {key}"},
                                  timeout=10)
            assert_error(unknown, 404, "not_found")
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
        store.close()
