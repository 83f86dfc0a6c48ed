"""Prometheus metrics at ``/metrics``: what the gate counted (``EscrowGate.stats()``), read at scrape time.

Open in sandbox mode; in production only behind ``Authorization: Bearer $METRICS_TOKEN``, and absent (404) when
``METRICS_TOKEN`` is unset. Money is counted in Decimal by the gate; it becomes a float only here, in the
exposition format (a metrics format: never add these up to pay anyone).
"""

from __future__ import annotations

import hmac
import math
import os
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["METRICS_PATH", "PREFIX", "GateCollector", "add_metrics_route", "metrics_registry"]

METRICS_PATH = "/metrics"
#: Every metric's name starts with it.
PREFIX = "paid_space_"
TOKEN_VARIABLE = "METRICS_TOKEN"


def _exposed(amount: Decimal) -> float:
    """A USDC amount as a sample value (exposition only)."""
    return float(amount)


class GateCollector(Collector):
    """The gate's counters as metric families, read from ``stats()`` on every scrape."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return []  # not known before a scrape: the registry does not call collect() at registration

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        calls = CounterMetricFamily(PREFIX + "calls", "Paid calls by how they ended.", labels=["outcome"])
        for outcome, count in stats["calls"].items():
            calls.add_metric([outcome], count)
        yield calls
        yield CounterMetricFamily(
            PREFIX + "charged_usdc", "USDC charged in receipts handed to buyers.", value=_exposed(stats["charged_usdc"])
        )
        yield CounterMetricFamily(
            PREFIX + "captured_usdc", "USDC the escrow service confirmed captured.",
            value=_exposed(stats["captured_usdc"]),
        )
        refusals = CounterMetricFamily(PREFIX + "refusals", "Calls refused before they ran (not charged), by code.",
                                       labels=["code"])
        for code, count in sorted(stats["refusals"].items()):
            refusals.add_metric([code], count)
        yield refusals
        requests = CounterMetricFamily(PREFIX + "escrow_requests", "Requests to the escrow service (each attempt), "
                                       "by route.", labels=["route"])
        for route, count in sorted(stats["requests"].items()):
            requests.add_metric([route], count)
        yield requests
        latency = HistogramMetricFamily(PREFIX + "gate_latency_seconds", "The gate's own work per call, by step.",
                                        labels=["step"])
        for step, histogram in stats["latency_s"].items():
            buckets = [("+Inf" if math.isinf(bound) else floatToGoString(bound), count)
                       for bound, count in histogram["buckets"]]
            latency.add_metric([step], buckets, sum_value=histogram["sum"])
        yield latency
        yield GaugeMetricFamily(PREFIX + "open_leases", "Leases (holds serving calls locally) open now.",
                                value=stats["open_leases"])
        yield GaugeMetricFamily(PREFIX + "owed_usdc", "USDC charged on open leases, not captured yet.",
                                value=_exposed(stats["owed_usdc"]))


def metrics_registry(stats: Callable[[], Mapping[str, Any]]) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one) holding only the gate's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GateCollector(stats))
    return registry


def add_metrics_route(app: FastAPI, stats: Callable[[], Mapping[str, Any]], *, sandbox: bool,
                      env: Mapping[str, str] | None = None) -> bool:
    """``GET /metrics`` on `app`: open in sandbox mode, behind a bearer METRICS_TOKEN in production, not added in
    production without one. Whether it was added."""
    env = os.environ if env is None else env
    token = env.get(TOKEN_VARIABLE, "").strip()
    if not sandbox and not token:
        return False
    registry = metrics_registry(stats)
    expected = f"Bearer {token}".encode()

    def metrics(request: Request) -> Response:
        if not sandbox:
            given = request.headers.get("authorization", "").encode("latin-1", "replace")
            if not hmac.compare_digest(given, expected):
                return PlainTextResponse("Unauthorized: pass Authorization: Bearer <METRICS_TOKEN>.\n", 401,
                                         headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(METRICS_PATH, metrics, methods=["GET"], include_in_schema=False)
    return True
