"""Let a FakeClock run at the speed of real time (for tests where real time must pass on both sides).

The sandbox escrow server's FakeClock decides when escrows and holds expire; a gate given the same
clock reads it too. A gate also waits in real time (its flusher, its capture interval, HTTP), so a
test that lets an escrow expire while the gate works must move the FakeClock in step with real
time, not faster: ``RealTime(clock)`` ticks it from a background thread by the monotonic time that
passed. ``jump(seconds)`` adds time at once (an outage that outlasts a hold, say).
"""

from __future__ import annotations

import threading
import time

__all__ = ["RealTime"]


class RealTime:
    """Moves ``clock`` (an ``escrow.FakeClock``) forward with real time while started; a context manager."""

    def __init__(self, clock, *, step_s: float = 0.005, from_wall_time: bool = False):
        self.clock = clock
        self.step_s = step_s
        self.from_wall_time = from_wall_time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RealTime:
        if self.from_wall_time:  # a FakeClock only moves forward: it starts in the past (2026-01-01)
            behind = time.time() - self.clock.now()
            if behind > 0:
                self.clock.tick(behind)
        last = time.monotonic()

        def run() -> None:
            nonlocal last
            while not self._stop.wait(self.step_s):
                now = time.monotonic()
                self.clock.tick(max(now - last, 0.0))
                last = now

        self._thread = threading.Thread(target=run, name="fake-clock-real-time", daemon=True)
        self._thread.start()
        return self

    def jump(self, seconds: float) -> float:
        """Move the clock ``seconds`` ahead at once (on top of real time)."""
        return self.clock.tick(seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> RealTime:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
