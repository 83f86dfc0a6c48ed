"""The gate against the real sandbox escrow over HTTP, called directly from Python."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import requests

from gate import (
    EscrowClosed,
    EscrowExpired,
    EscrowNotFound,
    FunctionFailed,
    GateError,
    InsufficientFunds,
    InvalidEscrowId,
    PerCall,
    PerToken,
    ServiceUnavailable,
    SettlementFailed,
)

from .test_gate_unit import HOSTILE_IDS

PRICE = PerCall("0.001")


def test_happy_path_receipts_match_the_escrow(market, adapter):
    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("0.010")

    @adapter.paid(gate, PRICE, reason="echo", receipt=True, receipt_extra={"model": "m1", "charged_usdc": "forged"})
    def echo(text: str) -> str:
        return text.upper()

    receipts = []
    for expected_remaining in ("0.009000", "0.008000", "0.007000"):
        result, receipt = echo("hi", escrow_id)
        assert result == "HI"
        assert receipt["charged_usdc"] == "0.001000"
        assert receipt["remaining_usdc"] == expected_remaining
        assert receipt["escrow_id"] == escrow_id and receipt["reason"] == "echo"
        assert receipt["model"] == "m1"  # extra fields are merged, never over the receipt's own
        receipts.append(receipt)
    assert len({r["charge_id"] for r in receipts}) == 3
    # seller learned once from /me; the escrow's facts fetched once, then cached; 2 POSTs a call
    log = market.server.request_log
    assert log.count(("GET", "/api/me")) == 1
    assert log.count(("GET", f"/api/escrow/{escrow_id}")) == 1
    assert sum(1 for m, p in log if m == "POST" and escrow_id in p) == 6
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == Decimal("0.003")
    assert balance["remaining_usdc"] == Decimal("0.007")
    assert balance["held_usdc"] == 0


def test_64_concurrent_calls_on_an_escrow_covering_k_calls(market, adapter):
    k = 10
    gate = market.gate(settlement="per_call", seller_id=market.seller.agent_id)
    escrow_id = market.escrow("0.010")
    ran = []
    start = threading.Barrier(64)

    @adapter.paid(gate, PRICE, reason="echo", receipt=True)
    def echo(text: str) -> str:
        ran.append(text)
        return text

    def call(i):
        start.wait()
        try:
            return echo(str(i), escrow_id)
        except GateError as refusal:
            return refusal

    with ThreadPoolExecutor(64) as pool:
        outcomes = list(pool.map(call, range(64)))
    results = [o for o in outcomes if not isinstance(o, GateError)]
    refusals = [o for o in outcomes if isinstance(o, GateError)]
    assert len(results) == k and len(ran) == k
    assert len(refusals) == 64 - k
    assert all(isinstance(r, InsufficientFunds) and "not charged" in r.message for r in refusals)
    assert sum(Decimal(receipt["charged_usdc"]) for _, receipt in results) == Decimal("0.010")
    balance = market.balance(escrow_id)
    assert balance["remaining_usdc"] == 0 and balance["held_usdc"] == 0
    assert balance["spent_usdc"] == Decimal("0.010")


def test_insufficient_funds_says_what_is_left(market, adapter):
    gate = market.gate()
    escrow_id = market.escrow("0.0004")

    @adapter.paid(gate, PRICE, reason="echo")
    def echo(text: str) -> str:
        raise AssertionError("must not run")

    with pytest.raises(InsufficientFunds) as refused:
        echo("x", escrow_id)
    assert refused.value.sentence == (
        f"Escrow {escrow_id} has 0.000400 USDC left; this call costs 0.001000 USDC. You were not charged."
    )
    assert market.balance(escrow_id)["remaining_usdc"] == Decimal("0.0004")


def test_function_failure_voids_the_hold(market, caplog, adapter):
    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("0.010")

    @adapter.paid(gate, PRICE, reason="sentiment classification")
    def broken(text: str) -> str:
        raise RuntimeError("model exploded at /srv/secret/path")

    with pytest.raises(FunctionFailed) as failed:
        broken("x", escrow_id)
    assert failed.value.message == "[function_failed] The sentiment classification failed. You were not charged."
    balance = market.balance(escrow_id)
    assert balance["remaining_usdc"] == Decimal("0.010") and balance["held_usdc"] == 0
    assert balance["spent_usdc"] == 0
    paths = [p for m, p in market.requests_for(escrow_id) if m == "POST"]
    assert len(paths) == 2 and paths[0].endswith("/holds") and paths[1].endswith("/void")


def test_service_down_refuses_without_running(market, adapter):
    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("0.010")
    ran = []

    @adapter.paid(gate, PRICE, reason="echo")
    def echo(text: str) -> str:
        ran.append(text)
        return text

    market.server.stop()
    try:
        with pytest.raises(ServiceUnavailable) as refused:
            echo("x", escrow_id)
    finally:
        market.server.start()
    assert "not charged" in refused.value.message
    assert market.server.url not in refused.value.message and "127.0.0.1" not in refused.value.message
    assert ran == []
    assert echo("x", escrow_id) == "x"  # and it recovers once the service is back
    assert market.balance(escrow_id)["spent_usdc"] == Decimal("0.001")


def test_another_sellers_escrow_is_refused_and_negatively_cached(market, adapter):
    gate = market.gate(seller_id=market.seller.agent_id)
    other = market.server.register("other seller")
    escrow_id = market.escrow("0.010", seller_id=other.agent_id)
    market.server.clear_log()

    @adapter.paid(gate, PRICE, reason="echo")
    def echo(text: str) -> str:
        raise AssertionError("must not run")

    for _ in range(3):
        with pytest.raises(EscrowNotFound, match="not charged"):
            echo("x", escrow_id)
    # one lookup (404: a non-party), then the negative cache answers; nothing was held
    assert market.server.request_log == [("GET", f"/api/escrow/{escrow_id}")]
    assert market.balance(escrow_id)["remaining_usdc"] == Decimal("0.010")


def test_the_buyers_own_key_cannot_charge_its_escrow(market, adapter):
    # The gate's key is the buyer's: GET succeeds (a party), but the seller is not this gate.
    gate = market.gate()
    gate_as_buyer = type(gate)(market.server.url, market.buyer.api_key, clock=market.server.clock)
    escrow_id = market.escrow("0.010")
    try:

        @adapter.paid(gate_as_buyer, PRICE, reason="echo")
        def echo(text: str) -> str:
            raise AssertionError("must not run")

        market.server.clear_log()
        with pytest.raises(EscrowNotFound):
            echo("x", escrow_id)
        assert [m for m, p in market.server.request_log] == ["GET", "GET"]  # /me, the escrow
    finally:
        gate_as_buyer.close()


def test_expired_escrow_is_refused_from_the_cached_expiry(market, adapter):
    gate = market.gate(settlement="per_call", seller_id=market.seller.agent_id)
    escrow_id = market.escrow("0.010", ttl_seconds=30)

    @adapter.paid(gate, PRICE, reason="echo")
    def echo(text: str) -> str:
        return text

    assert echo("x", escrow_id) == "x"
    market.server.clock.tick(31)
    market.server.clear_log()
    with pytest.raises(EscrowExpired, match="not charged"):
        echo("x", escrow_id)
    assert market.server.request_log == []  # the cached expiry decided, no hold was tried
    market.server.clock.tick(3600)  # past the cache's TTL too: the service says expired
    with pytest.raises(EscrowExpired):
        echo("x", escrow_id)
    assert market.server.request_log == [("GET", f"/api/escrow/{escrow_id}")]
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == Decimal("0.001") and balance["refunded_usdc"] == Decimal("0.009")


def test_closed_escrow_is_refused(market, adapter):
    gate = market.gate(settlement="per_call", seller_id=market.seller.agent_id)
    escrow_id = market.escrow("0.010")

    @adapter.paid(gate, PRICE, reason="echo")
    def echo(text: str) -> str:
        return text

    assert echo("x", escrow_id) == "x"  # facts now cached as active
    released = market.server.call(
        market.buyer, "POST", f"/escrow/{escrow_id}/release", json={"amount_usdc": 0, "refund_remainder": True}
    )
    assert released.status_code == 200, released.text
    market.server.clear_log()
    with pytest.raises(EscrowClosed, match="not charged") as refused:
        echo("x", escrow_id)
    assert "released" in refused.value.message
    # the cached facts said active: the hold was refused (410), then a GET told why
    assert market.server.request_log == [
        ("POST", f"/api/escrow/{escrow_id}/holds"),
        ("GET", f"/api/escrow/{escrow_id}"),
    ]
    market.server.clear_log()
    with pytest.raises(EscrowClosed):
        echo("x", escrow_id)
    assert market.server.request_log == []  # now known closed


def test_capture_answer_lost_while_the_buyer_releases_is_still_confirmed(market):
    # Per-call: the final capture goes through, its answer is lost, and meanwhile the buyer released the escrow.
    # The void that asks "did it go through?" is then answered 410 (closed hold on a closed escrow): the gate
    # replays the capture with its own key, which the service answers from its idempotency record.
    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("0.010")
    client = gate._settlement._client
    real_capture = client.capture

    def capture_then_lose_the_answer(*args, **kwargs):
        body = real_capture(*args, **kwargs)
        if capture_then_lose_the_answer.first:
            capture_then_lose_the_answer.first = False
            released = market.server.call(market.buyer, "POST", f"/escrow/{escrow_id}/release",
                                          json={"amount_usdc": 0, "refund_remainder": True})
            assert released.status_code == 200, released.text
            raise ServiceUnavailable("answer lost")
        return body

    capture_then_lose_the_answer.first = True
    client.capture = capture_then_lose_the_answer

    @gate.paid(PRICE, reason="echo", receipt=True)
    def echo(text: str) -> str:
        return text

    result, receipt = echo("x", escrow_id)  # the buyer paid for it: the result is handed out
    assert result == "x" and receipt["charged_usdc"] == "0.001000"
    balance = market.balance(escrow_id)
    assert balance["status"] == "released" and balance["spent_usdc"] == Decimal("0.001")
    assert balance["refunded_usdc"] == Decimal("0.009") and balance["held_usdc"] == 0
    market.server.store.check_invariants()


@pytest.mark.parametrize("escrow_id", HOSTILE_IDS[:8])
def test_hostile_ids_never_reach_the_service(market, escrow_id):
    gate = market.gate()

    @gate.paid(PRICE, reason="echo")
    def echo(text: str) -> str:
        raise AssertionError("must not run")

    market.server.clear_log()
    with pytest.raises(InvalidEscrowId, match="not charged"):
        echo("x", escrow_id)
    assert market.server.request_log == []


def test_unknown_escrow_lookups_are_negatively_cached(market, adapter):
    gate = market.gate(seller_id=market.seller.agent_id)
    unknown = "esc_" + "Q" * 24

    @adapter.paid(gate, PRICE, reason="echo")
    def echo(text: str) -> str:
        raise AssertionError("must not run")

    market.server.clear_log()
    for _ in range(5):
        with pytest.raises(EscrowNotFound):
            echo("x", unknown)
    assert len(market.server.request_log) == 1
    market.server.clock.tick(6)  # the negative entry is brief
    with pytest.raises(EscrowNotFound):
        echo("x", unknown)
    assert len(market.server.request_log) == 2


def test_per_token_charges_what_was_used(market, adapter):
    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("1")

    @adapter.paid(gate, PerToken("0.01", "0.02", max_tokens=100), reason="generation", receipt=True)
    def generate(prompt: str) -> str:
        return "three little words"

    text, receipt = generate("two words", escrow_id)
    # 2 input tokens, 3 output tokens: (2*0.01 + 3*0.02) / 1000 = 0.00008
    assert receipt["charged_usdc"] == "0.000080"
    assert receipt["usage"] == {"input_tokens": 2, "output_tokens": 3}  # what the charge was measured from
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == Decimal("0.00008") and balance["held_usdc"] == 0


def test_capture_failure_withholds_the_result_and_the_hold_expires_back(market, adapter):
    gate = market.gate(settlement="per_call", per_call_hold_ttl_s=60)
    gate._client.backoff = 0.001
    escrow_id = market.escrow("0.010")

    @adapter.paid(gate, PRICE, reason="echo")
    def echo(text: str) -> str:
        market.server.stop()  # the service dies while the function runs
        return text

    try:
        with pytest.raises(SettlementFailed) as failed:
            echo("x", escrow_id)
    finally:
        market.server.start()
    assert "withheld" in failed.value.message and "not charged" in failed.value.message
    assert market.balance(escrow_id)["held_usdc"] == Decimal("0.001")
    market.server.clock.tick(61)
    balance = market.balance(escrow_id)
    assert balance["held_usdc"] == 0 and balance["spent_usdc"] == 0
    assert balance["remaining_usdc"] == Decimal("0.010")


def test_close_voids_what_the_gate_still_holds(market, adapter):
    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("0.010")
    running, finish = threading.Event(), threading.Event()

    @adapter.paid(gate, PRICE, reason="echo")
    def slow(text: str) -> str:
        running.set()
        finish.wait(10)
        return text

    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(slow, "x", escrow_id)
        assert running.wait(10)
        assert market.balance(escrow_id)["held_usdc"] == Decimal("0.001")
        gate.close()
        assert market.balance(escrow_id)["held_usdc"] == 0
        finish.set()
        with pytest.raises(GateError, match="not charged"):
            call.result(10)
    assert market.balance(escrow_id)["spent_usdc"] == 0


def test_without_holds_the_gate_falls_back_to_deduct(make_market, caplog):
    market = make_market(holds=False)
    gate = market.gate()
    escrow_id = market.escrow("0.0035")

    @gate.paid(PRICE, reason="echo", receipt=True)
    def echo(text: str) -> str:
        if text == "fail":
            raise ValueError("boom")
        return text

    with caplog.at_level(logging.WARNING, logger="gate"):
        _, first = echo("a", escrow_id)
        _, second = echo("b", escrow_id)
    assert gate.settles_by_deduct
    assert first["settlement"] == "deduct" and first["charged_usdc"] == "0.001000"
    assert second["remaining_usdc"] == "0.001500"
    assert sum("no holds route" in r.getMessage() for r in caplog.records) == 1
    posts = [p for m, p in market.requests_for(escrow_id) if m == "POST"]
    assert posts.count(f"/api/escrow/{escrow_id}/holds") == 1  # detected once
    assert posts.count(f"/api/escrow/{escrow_id}/deduct") == 2
    # a failure deducts nothing; a call the escrow cannot cover is refused before it runs
    with pytest.raises(FunctionFailed, match="not charged"):
        echo("fail", escrow_id)
    assert echo("c", escrow_id)[1]["remaining_usdc"] == "0.000500"
    with pytest.raises(InsufficientFunds, match="has 0.000500 USDC left.*not charged"):
        echo("d", escrow_id)
    assert market.balance(escrow_id)["spent_usdc"] == Decimal("0.003")


def _wait_until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("settlement", ["per_call", "lease"])
def test_abandoned_stream_pays_for_what_it_handed_out(market, settlement):
    gate = market.gate(settlement=settlement)
    escrow_id = market.escrow("0.010")

    @gate.paid(PRICE, reason="stream")
    def stream(text: str):
        for i in range(100):
            yield f"{text}{i}"

    chunks = stream("x", escrow_id)
    assert [next(chunks) for _ in range(5)] == ["x0", "x1", "x2", "x3", "x4"]
    chunks.close()  # the client went away after five chunks reached it
    gate.close()
    assert _wait_until(lambda: market.balance(escrow_id)["held_usdc"] == 0)
    assert market.balance(escrow_id)["spent_usdc"] == Decimal("0.001")


def test_abandoned_per_token_stream_pays_for_the_delivered_tokens(market):
    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("1")
    price = PerToken("0", "1", max_tokens=100)  # 0.001 USDC per output word

    @gate.paid(price, reason="stream")
    def stream(text: str):
        words = []
        for i in range(100):
            words.append(f"w{i}")
            yield " ".join(words)  # Gradio streams show the growing text

    chunks = stream("x", escrow_id)
    for _ in range(7):
        next(chunks)
    chunks.close()
    gate.close()
    assert market.balance(escrow_id)["spent_usdc"] == Decimal("0.007")


def test_stream_cancelled_before_its_first_item_is_voided(market):
    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("0.010")
    waiting = threading.Event()

    @gate.paid(PRICE, reason="stream")
    async def stream(text: str):
        waiting.set()
        await asyncio.sleep(30)
        yield text

    async def consume_then_leave():
        chunks = stream("x", escrow_id)
        first = asyncio.ensure_future(chunks.__anext__())
        while not waiting.is_set():
            await asyncio.sleep(0.01)
        first.cancel()  # the client left before anything reached it
        with pytest.raises(asyncio.CancelledError):
            await first
        await chunks.aclose()

    asyncio.run(consume_then_leave())
    assert _wait_until(lambda: market.balance(escrow_id)["held_usdc"] == 0)
    assert market.balance(escrow_id)["spent_usdc"] == 0


def test_stream_failing_midway_is_voided_and_empty_stream_is_free(market):
    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("0.010")

    @gate.paid(PRICE, reason="stream")
    def stream(text: str):
        if text == "empty":
            return
        yield "first"
        raise RuntimeError("broke mid-stream")

    chunks = stream("x", escrow_id)
    assert next(chunks) == "first"
    with pytest.raises(FunctionFailed, match="not charged"):
        next(chunks)
    assert list(stream("empty", escrow_id)) == []
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == 0 and balance["held_usdc"] == 0


def test_async_function_failure_is_voided(market):
    gate = market.gate(settlement="per_call")
    escrow_id = market.escrow("0.010")

    @gate.paid(PRICE, reason="async job", receipt=True)
    async def job(text: str):
        if text == "fail":
            raise ValueError("nope")
        return text, len(text)

    assert asyncio.run(job("abc", escrow_id))[:2] == ("abc", 3)  # a tuple result: receipt appended
    with pytest.raises(FunctionFailed, match="not charged"):
        asyncio.run(job("fail", escrow_id))
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == Decimal("0.001") and balance["held_usdc"] == 0


def test_lost_capture_answer_is_retried_with_the_same_key_and_charged_once(market):
    gate = market.gate(settlement="per_call")
    gate._client._sleep = lambda s: None
    escrow_id = market.escrow("0.010")
    session = gate._client._session
    real_request = session.request
    capture_keys = []

    def lossy(method, url, **kwargs):
        response = real_request(method, url, **kwargs)
        if url.endswith("/capture"):
            capture_keys.append(kwargs["headers"]["Idempotency-Key"])
            if len(capture_keys) == 1:  # applied by the service, but the answer is lost
                raise requests.ConnectionError("connection reset")
        return response

    session.request = lossy

    @gate.paid(PRICE, reason="echo", receipt=True)
    def echo(text: str) -> str:
        return text

    result, receipt = echo("x", escrow_id)
    assert result == "x" and receipt["charged_usdc"] == "0.001000"
    assert len(capture_keys) == 2 and capture_keys[0] == capture_keys[1]
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == Decimal("0.001") and balance["held_usdc"] == 0


@pytest.mark.parametrize("body,status", [(b"<html>oops</html>", 200), (b"[]", 200), (b'{"error": 1}', 502)])
def test_nonsense_answers_fail_closed(market, body, status):
    gate = market.gate(seller_id=market.seller.agent_id)
    gate._client._sleep = lambda s: None
    escrow_id = market.escrow("0.010")
    ran = []

    def nonsense(method, url, **kwargs):
        response = requests.Response()
        response.status_code, response._content, response.url = status, body, url
        return response

    gate._client._session.request = nonsense

    @gate.paid(PRICE, reason="echo")
    def echo(text: str) -> str:
        ran.append(text)
        return text

    with pytest.raises(ServiceUnavailable, match="not charged"):
        echo("x", escrow_id)
    assert ran == []
    assert market.balance(escrow_id)["remaining_usdc"] == Decimal("0.010")
