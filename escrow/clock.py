"""Injectable clocks: the ledger never reads the wall clock directly."""

from __future__ import annotations

import threading
import time


class SystemClock:
    """The real wall clock, in epoch seconds."""

    def now(self) -> float:
        """Current epoch time in seconds."""
        return time.time()


class FakeClock:
    """A clock that moves only when a test tells it to."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        """The current fake epoch time in seconds."""
        with self._lock:
            return self._now

    def tick(self, seconds: float) -> float:
        """Move time forward by `seconds` (never backward); returns the new time."""
        if seconds < 0:
            raise ValueError("a FakeClock only moves forward")
        with self._lock:
            self._now += seconds
            return self._now
