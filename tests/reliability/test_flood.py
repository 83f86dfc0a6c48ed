"""A flood of well-formed but unknown escrow IDs does not become one escrow lookup per call."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from gate import EscrowNotFound, GateError, PerCall
from gate._limits import TooManyUnknownEscrows
from tests.support.space import random_escrow_id

pytestmark = [pytest.mark.hostile]

def request_from(host: str) -> SimpleNamespace:
    """What Gradio injects as gr.Request: the caller's address and headers."""
    return SimpleNamespace(client=SimpleNamespace(host=host), headers={})


def lookups(server) -> int:
    return sum(1 for method, path in server.request_log if method == "GET" and path.startswith("/api/escrow/"))


def echo_gate(market, ran: list | None = None, **paid_options):
    """A per-call gate straight on the market's escrow server, and an echo it charges 0.001 for (noted in `ran`)."""
    gate = market.gate(direct=True)

    @gate.paid(PerCall("0.001"), reason="echo", **paid_options)
    def echo(text: str) -> str:
        if ran is not None:
            ran.append(text)
        return text

    return gate, echo


@pytest.fixture
def settlement() -> str:
    return "per_call"


def test_flood_of_unknown_ids_is_limited_per_client(market):
    ran = []
    gate, echo = echo_gate(market, ran, receipt=True)

    market.server.clear_log()
    started = time.monotonic()
    kinds = {}
    calls = 300
    for _ in range(calls):
        with pytest.raises(GateError) as refused:
            echo("x", random_escrow_id(), request=request_from("203.0.113.7"))
        assert "not charged" in refused.value.message.lower()
        assert isinstance(refused.value, (EscrowNotFound, TooManyUnknownEscrows))
        kinds[type(refused.value).__name__] = kinds.get(type(refused.value).__name__, 0) + 1
    elapsed = time.monotonic() - started
    flood_lookups = lookups(market.server)
    print(f"\n{calls} calls with unknown IDs in {elapsed:.2f} s: {flood_lookups} lookups; {kinds}")
    # 20 at once, then 2 a second (gate/_limits.py); +1 for a refill landing mid-check
    assert flood_lookups <= 20 + 2 * elapsed + 1
    assert kinds.get("TooManyUnknownEscrows", 0) > 0
    assert ran == []

    # Another client with a real escrow is still served while the flooder is held back.
    escrow_id = market.escrow("0.010")
    result, receipt = echo("ok", escrow_id, request=request_from("198.51.100.9"))
    market.audit.paid(result, receipt)
    with pytest.raises(TooManyUnknownEscrows):
        echo("x", random_escrow_id(), request=request_from("203.0.113.7"))
    gate.close()
    market.audit.reconcile()


def test_one_unknown_id_repeated_is_looked_up_once(market):
    gate, echo = echo_gate(market)

    unknown = random_escrow_id()
    market.server.clear_log()
    for _ in range(100):
        with pytest.raises(EscrowNotFound):
            echo("x", unknown, request=request_from("192.0.2.1"))
    assert lookups(market.server) == 1  # the negative cache answers the other 99
    gate.close()
    market.audit.reconcile()


def test_global_cap_holds_against_rotating_addresses(market):
    gate, echo = echo_gate(market)

    market.server.clear_log()
    started = time.monotonic()
    for i in range(400):
        with pytest.raises(GateError):
            echo("x", random_escrow_id(), request=request_from(f"10.0.{i // 250}.{i % 250}"))
    elapsed = time.monotonic() - started
    assert lookups(market.server) <= 200 + 20 * elapsed + 1
    gate.close()
    market.audit.reconcile()
