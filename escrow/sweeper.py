"""A background thread that expires due holds and escrows even when nobody calls in."""

from __future__ import annotations

import logging
import threading

from .store import Store

log = logging.getLogger(__name__)


class Sweeper:
    """Runs `store.sweep()` every `interval_s` seconds in a daemon thread."""

    def __init__(self, store: Store, interval_s: float = 1.0) -> None:
        self.store = store
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sweeping (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="escrow-sweeper", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop sweeping and wait for the thread to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.store.sweep()
            except Exception:  # keep sweeping; a closed store ends the loop via stop()
                if self._stop.is_set():
                    return
                log.exception("escrow sweep failed")
