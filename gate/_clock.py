"""Time: the service's timestamps, and how far the service's clock may be from the gate's.

The escrow service states expiries (``expires_at``) on its own clock. The gate
must never read them on its own clock as if the two agreed: a gate whose clock
runs 5 s behind would go on charging on a hold the service has already closed.
``ServiceClock`` keeps an interval ``[low, high]`` for ``service time - gate
time`` from what the service's answers prove:

- an HTTP ``Date`` header ``D`` (whole seconds) on an answer that took local
  ``[sent, received]``: at some moment in that span the service read a time in
  ``[D, D + 1)``, so the offset lies in ``(D - received, D + 1 - sent)``;
- a hold's ``expires_at`` for a TTL of ``ttl``: the service's time when it made
  the hold was at least ``expires_at - ttl`` (never more: expiries are capped by
  the escrow's), a lower bound only.

A deadline is then placed at the EARLIEST local moment the service's clock could
reach it (``earliest_local``): skew costs margin, never money. Without any
``Date`` header the service is assumed to run at most ``assumed_skew_s`` ahead.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_tz, mktime_tz
from typing import Any

__all__ = ["ServiceClock", "parse_service_time"]

# Python 3.10's datetime.fromisoformat reads neither "Z" nor fractions other than 3 or 6 digits.
_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?", re.ASCII
)


def parse_service_time(value: Any) -> float:
    """An ISO-8601 time of the service (``…Z``, an offset, or naive = UTC) as epoch seconds."""
    if not isinstance(value, str):
        raise ValueError("not a time")
    match = _ISO.fullmatch(value.strip())
    if match is None:
        raise ValueError("not an ISO-8601 time")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=timezone.utc)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        moment -= sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    seconds = moment.timestamp()
    if fraction:
        seconds += int(fraction) / 10 ** len(fraction)
    return seconds


_DRIFT = 200e-6  # two quartz clocks differ by well under 200 ppm


def _parse_http_date(value: str) -> float | None:
    parsed = parsedate_tz(value)
    if parsed is None:
        return None
    try:
        return float(mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


class ServiceClock:
    """The offset between the escrow service's clock and the gate's, as an interval. Thread-safe."""

    def __init__(self, now: Callable[[], float], *, assumed_skew_s: float = 10.0):
        if not assumed_skew_s >= 0:
            raise ValueError("assumed_skew_s must be >= 0")
        self.now = now
        self.assumed_skew_s = assumed_skew_s
        self._lock = threading.Lock()
        self._low: float | None = None  # service - gate, at least
        self._high: float | None = None  # service - gate, at most (only from a Date header)
        self._at = 0.0  # gate time of the last observation: the bounds widen with age (clocks drift)

    def observe_date(self, header: str | None, sent: float, received: float) -> None:
        """An answer with this ``Date`` header was sent at local ``sent`` and received at ``received``."""
        if not header or received < sent:
            return
        service = _parse_http_date(header)
        if service is None:
            return
        low, high = service - received, service + 1.0 - sent
        with self._lock:
            old_low, old_high = self._aged(received)
            both_low = low if old_low is None else max(old_low, low)
            both_high = high if old_high is None else min(old_high, high)
            if both_low > both_high:  # contradicts what we knew (a clock was stepped): start again from this
                both_low, both_high = low, high
            self._low, self._high, self._at = both_low, both_high, received

    def observe_at_least(self, service_time: float, received: float) -> None:
        """The service's clock read at least ``service_time`` before local ``received``."""
        low = service_time - received
        with self._lock:
            old_low, old_high = self._aged(received)
            if old_high is not None and low > old_high:
                old_high = None  # contradicts the Date bound: fall back to the assumed skew
            self._low = low if old_low is None else max(old_low, low)
            self._high, self._at = old_high, received

    def _aged(self, now: float) -> tuple[float | None, float | None]:
        """Under the lock: the bounds widened by the drift two clocks may have built up since."""
        drift = _DRIFT * max(now - self._at, 0.0)
        low = None if self._low is None else self._low - drift
        high = None if self._high is None else self._high + drift
        return low, high

    def bounds(self) -> tuple[float, float]:
        """``(low, high)`` of service time minus gate time."""
        with self._lock:
            low, high = self._aged(self.now())
        if high is None:
            high = max(low or 0.0, 0.0) + self.assumed_skew_s
        if low is None:
            low = min(high, 0.0) - self.assumed_skew_s
        return low, high

    def earliest_local(self, service_time: float) -> float:
        """The earliest gate time at which the service's clock may read ``service_time``."""
        return service_time - self.bounds()[1]

    def surely_past(self, service_time: float) -> bool:
        """True when the service's clock certainly reads ``service_time`` or later now."""
        return self.now() + self.bounds()[0] >= service_time
