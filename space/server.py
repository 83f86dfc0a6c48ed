"""Serving a Space with uvicorn: a quick, quiet stop that settles what the gate earned before it stops listening."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

import anyio.to_thread
import uvicorn

log = logging.getLogger("space")

#: On a stop, how long requests in flight (paid calls, the event streams that deliver their results) may take
#: to finish before the gate settles. A call still running after it is settled or voided by the gate's close.
DRAIN_S = 1.0
#: Then, once settled, how long uvicorn waits for what is still open before it cancels it (quietly: see
#: _QuietCancellations). Free streams are ended before the drain, so this only bounds the unexpected.
GRACEFUL_SHUTDOWN_S = 0.5


class SettleFirstServer(uvicorn.Server):
    """uvicorn, stopped in this order on SIGTERM or Ctrl-C:

    1. `end_streams`: the free event streams end at once (Gradio's session heartbeat, which a page keeps open
       and which would otherwise hold the stop until uvicorn's graceful timeout cancels it with a traceback);
    2. the requests in flight finish (and `busy`, work outside them such as Gradio's queue, ends), for up to
       `drain_s`: a paid call is charged and its result delivered;
    3. `settle`: the gate refuses new calls, captures what it earned and voids the rest;
    4. the calls that were still in flight finish their own capture or void, for up to `drain_s` again: in
       sandbox mode all of this goes through this very server, which is why it still listens (uvicorn would
       run the lifespan shutdown only after closing its sockets, too late for that);
    5. uvicorn's own shutdown: stop listening, wait `config.timeout_graceful_shutdown` for what is left, cancel
       it without a traceback, run the lifespan shutdown.

    A stop asked for by a signal ends `run()` normally (exit status 0 for the process) instead of re-raising
    the signal: the stop was clean, and `make run` or a supervisor should not report it as a failure.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        settle: Callable[[], None],
        *,
        end_streams: Callable[[], None] | None = None,
        busy: Callable[[], bool] | None = None,
        drain_s: float = DRAIN_S,
    ) -> None:
        super().__init__(config)
        self._settle = settle
        self._end_streams = end_streams
        self._busy = busy
        self._drain_s = drain_s
        #: The signal that stopped the server, if one did (e.g. signal.SIGTERM).
        self.stopped_by: signal.Signals | None = None

    async def shutdown(self, sockets=None) -> None:
        started = time.monotonic()
        if self._captured_signals:
            self.stopped_by = signal.Signals(self._captured_signals[0])
        if self._end_streams is not None:
            self._end_streams()
        await asyncio.sleep(0)  # the ended streams finish at this turn of the loop
        await self._drain()
        await anyio.to_thread.run_sync(self._settle)
        await self._drain()
        # Left in place: the requests uvicorn cancels log their CancelledError a loop turn or more later.
        quiet = _QuietCancellations()
        logging.getLogger("uvicorn.error").addFilter(quiet)
        await super().shutdown(sockets)
        if quiet.cancelled:
            log.info("Closed %d connection(s) still open at shutdown.", quiet.cancelled)
        # Stopped cleanly: nothing for capture_signals to re-raise (it would turn a clean stop into
        # KeyboardInterrupt or an exit status of 128 + SIGTERM).
        self._captured_signals.clear()
        how = f" ({self.stopped_by.name})" if self.stopped_by else ""
        log.info("Stopped%s in %.2f s.", how, time.monotonic() - started)

    async def _drain(self) -> None:
        """Wait, up to drain_s, for the requests in flight now (not those arriving meanwhile) and for `busy`."""
        in_flight = [task for task in self.server_state.tasks if not task.done()]
        deadline = time.monotonic() + self._drain_s
        while not self.force_exit and time.monotonic() < deadline:
            if all(task.done() for task in in_flight) and not (self._busy and self._busy()):
                return
            await asyncio.sleep(0.02)


class _QuietCancellations(logging.Filter):
    """While uvicorn shuts down: a request it cancels is counted, not logged with a traceback ending in
    CancelledError; its "Cancel N running task(s), timeout graceful shutdown exceeded" error is dropped too
    (SettleFirstServer logs one line instead)."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
            return False
        if record.msg == "Cancel %s running task(s), timeout graceful shutdown exceeded" and record.args:
            self.cancelled += int(record.args[0])
            return False
        return True
