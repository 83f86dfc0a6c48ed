"""What the gate did, counted as it happens: the seller's view (``EscrowGate.stats()``).

No metrics library here (``gate/`` is copied into other projects): the Space kit turns a
snapshot into Prometheus metrics at scrape time (``space/metrics.py``). The lock is held only
to update or copy the counters.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections import Counter, deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from .money import MICRO_USDC

__all__ = ["LATENCY_BUCKETS_S", "OUTCOMES", "GateStats", "route_of"]

#: How a paid call ended: paid (result handed out, charged), refused (before it ran, not charged), failed (the
#: function or its pricing failed: voided), withheld (ran, but its charge could not be settled: not charged),
#: cancelled (stopped before any output: voided), abandoned (a stream stopped by its client: charged for what
#: it handed out), empty (a stream that yielded nothing: voided).
OUTCOMES = ("paid", "refused", "failed", "withheld", "cancelled", "abandoned", "empty")
#: Upper bounds (seconds) of the histogram of the gate's own work per call (reserving, settling).
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_RECENT = 50  # receipts kept for the seller's view
_MINUTES = 24 * 60  # calls and revenue per minute, for a day
_ID_SEGMENT = re.compile(r"/(esc|hold|ded|agent)_[A-Za-z0-9]+")


def route_of(method: str, path: str) -> str:
    """``POST /escrow/{id}/holds/{id}/capture``: a request's route, its IDs left out (bounded label values)."""
    return f"{method} {_ID_SEGMENT.sub('/{id}', path)}"


def _micro(amount: Decimal) -> int:
    return int(amount / MICRO_USDC)


class GateStats:
    """Counters of one gate (thread-safe); ``snapshot()`` copies them."""

    def __init__(self, now: Callable[[], float]):
        self._now = now
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()
        self._requests: Counter[str] = Counter()
        self._charged = 0  # micro-USDC in receipts handed out
        self._captured = 0  # micro-USDC the service confirmed captured
        self._latency = {step: [0] * (len(LATENCY_BUCKETS_S) + 1) for step in ("reserve", "settle")}
        self._latency_sum = {step: 0.0 for step in self._latency}
        # (when, receipt, how the buyer sees it): the buyer's dict is made when it is read, not on the hot path
        self._recent: deque[tuple[float, Any, Callable[[Any], dict[str, Any]]]] = deque(maxlen=_RECENT)
        self._minutes: deque[list[int]] = deque(maxlen=_MINUTES)  # [minute, paid calls, charged micro-USDC]

    def ended(self, outcome: str, code: str | None = None) -> None:
        """A call ended without a charge (``code``: the refusal's, when it was one)."""
        with self._lock:
            self._calls[outcome] += 1
            if code is not None:
                self._refusals[code] += 1

    def charged(self, outcome: str, receipt: Any, describe: Callable[[Any], dict[str, Any]]) -> None:
        """A call ended charged (paid, or abandoned after output): its ``Receipt``; ``describe`` makes the dict the
        buyer sees (called when a snapshot is read, off the call's path)."""
        micro, now = _micro(receipt.charged_usdc), self._now()
        minute = int(now // 60)
        with self._lock:
            self._calls[outcome] += 1
            self._charged += micro
            self._recent.append((now, receipt, describe))
            if not self._minutes or self._minutes[-1][0] != minute:
                self._minutes.append([minute, 0, 0])
            self._minutes[-1][1] += 1
            self._minutes[-1][2] += micro

    def captured(self, amount: Decimal) -> None:
        """The service confirmed a capture (or a deduction) of ``amount``."""
        with self._lock:
            self._captured += _micro(amount)

    def request(self, method: str, path: str) -> None:
        """A request to the escrow service (each attempt)."""
        with self._lock:
            self._requests[route_of(method, path)] += 1

    def timed(self, step: str, seconds: float) -> None:
        """The gate's own work for one call: ``reserve`` or ``settle``."""
        index = bisect.bisect_left(LATENCY_BUCKETS_S, seconds)
        with self._lock:
            self._latency[step][index] += 1
            self._latency_sum[step] += seconds

    def snapshot(self) -> dict[str, Any]:
        """A copy: calls by outcome, refusals by code, USDC charged and captured, requests by route, the latency
        histogram (cumulative counts per bucket bound, sum, count), recent receipts, calls and revenue per minute."""
        with self._lock:
            snapshot = self._counters()
        snapshot["recent"] = [{"at": at, **describe(receipt)} for at, receipt, describe in snapshot["recent"]]
        return snapshot

    def _counters(self) -> dict[str, Any]:
        """Under the lock: copies of the counters."""
        latency = {}
        for step, counts in self._latency.items():
            cumulative, running = [], 0
            for count in counts:
                running += count
                cumulative.append(running)
            latency[step] = {
                "buckets": list(zip((*LATENCY_BUCKETS_S, float("inf")), cumulative)),
                "sum": self._latency_sum[step],
                "count": running,
            }
        return {
            "calls": {outcome: self._calls[outcome] for outcome in OUTCOMES},
            "refusals": dict(self._refusals),
            "charged_usdc": self._charged * MICRO_USDC,
            "captured_usdc": self._captured * MICRO_USDC,
            "requests": dict(self._requests),
            "latency_s": latency,
            "recent": list(self._recent),  # made into dicts below, outside the lock
            "per_minute": [
                {"minute": minute * 60, "calls": calls, "charged_usdc": charged * MICRO_USDC}
                for minute, calls, charged in self._minutes
            ],
        }
