"""space.metrics: the gate's counters as Prometheus metrics, and who may read /metrics."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from gate._stats import LATENCY_BUCKETS_S
from space.metrics import PREFIX, add_metrics_route, metrics_registry

TOKEN = "m" * 40


def stats() -> dict:
    """A snapshot shaped like EscrowGate.stats()."""
    cumulative = [0, 1, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4]
    return {
        "calls": {"paid": 4, "refused": 3, "failed": 1, "withheld": 0, "cancelled": 0, "abandoned": 0, "empty": 0},
        "refusals": {"missing_escrow_id": 2, "escrow_not_found": 1},
        "charged_usdc": Decimal("0.004000"),
        "captured_usdc": Decimal("0.003000"),
        "requests": {"GET /escrow/{id}": 2, "POST /escrow/{id}/holds": 1},
        "latency_s": {
            "reserve": {"buckets": list(zip((*LATENCY_BUCKETS_S, math.inf), cumulative)), "sum": 0.0042, "count": 4},
            "settle": {"buckets": [(b, 0) for b in (*LATENCY_BUCKETS_S, math.inf)], "sum": 0.0, "count": 0},
        },
        "recent": [],
        "per_minute": [],
        "open_leases": 1,
        "owed_usdc": Decimal("0.001000"),
    }


def scrape(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_collector_exposes_every_counter_under_one_prefix():
    from prometheus_client import generate_latest

    text = generate_latest(metrics_registry(stats)).decode()
    samples = scrape(text)
    assert all(name.startswith(PREFIX) for name, _ in samples)
    assert samples[(PREFIX + "calls_total", (("outcome", "paid"),))] == 4
    assert samples[(PREFIX + "calls_total", (("outcome", "refused"),))] == 3
    assert samples[(PREFIX + "refusals_total", (("code", "missing_escrow_id"),))] == 2
    assert samples[(PREFIX + "refusals_total", (("code", "escrow_not_found"),))] == 1
    assert samples[(PREFIX + "charged_usdc_total", ())] == pytest.approx(0.004)
    assert samples[(PREFIX + "captured_usdc_total", ())] == pytest.approx(0.003)
    assert samples[(PREFIX + "escrow_requests_total", (("route", "GET /escrow/{id}"),))] == 2
    assert samples[(PREFIX + "open_leases", ())] == 1
    assert samples[(PREFIX + "owed_usdc", ())] == pytest.approx(0.001)
    histogram = PREFIX + "gate_latency_seconds"
    assert samples[(histogram + "_bucket", (("le", "0.001"), ("step", "reserve")))] == 1
    assert samples[(histogram + "_bucket", (("le", "+Inf"), ("step", "reserve")))] == 4
    assert samples[(histogram + "_count", (("step", "reserve"),))] == 4
    assert samples[(histogram + "_sum", (("step", "reserve"),))] == pytest.approx(0.0042)
    assert samples[(histogram + "_count", (("step", "settle"),))] == 0


def test_the_registry_is_its_own_and_reads_the_gate_at_every_scrape():
    from prometheus_client import REGISTRY, generate_latest

    snapshot = stats()
    registry = metrics_registry(lambda: snapshot)
    assert PREFIX + "calls" not in generate_latest(REGISTRY).decode()
    snapshot["calls"]["paid"] = 9
    assert scrape(generate_latest(registry).decode())[(PREFIX + "calls_total", (("outcome", "paid"),))] == 9


def app_with_metrics(*, sandbox: bool, env: dict) -> tuple[FastAPI, bool]:
    app = FastAPI()
    return app, add_metrics_route(app, stats, sandbox=sandbox, env=env)


def test_sandbox_metrics_are_open():
    app, added = app_with_metrics(sandbox=True, env={})
    assert added
    answer = TestClient(app).get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert (PREFIX + "calls_total", (("outcome", "paid"),)) in scrape(answer.text)


WRONG = [None, "", f"Bearer {TOKEN}x", TOKEN, f"Basic {TOKEN}", "Bearer ", "Bearer \xe9".encode("latin-1")]


@pytest.mark.parametrize("authorization", WRONG)
def test_production_metrics_need_the_bearer_token(authorization):
    app, added = app_with_metrics(sandbox=False, env={"METRICS_TOKEN": TOKEN})
    assert added
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = TestClient(app).get("/metrics", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert PREFIX not in answer.text


def test_production_metrics_with_the_token():
    app, _ = app_with_metrics(sandbox=False, env={"METRICS_TOKEN": f" {TOKEN}\n"})  # as pasted into a secret
    answer = TestClient(app).get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    assert scrape(answer.text)[(PREFIX + "calls_total", (("outcome", "paid"),))] == 4


@pytest.mark.parametrize("token", ["", "   "])
def test_production_without_a_token_has_no_metrics_route(token):
    app, added = app_with_metrics(sandbox=False, env={"METRICS_TOKEN": token})
    assert not added
    assert TestClient(app).get("/metrics").status_code == 404
