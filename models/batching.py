"""DynamicBatcher: concurrent callers share one predict_batch call, each getting its own answer.

predict_batch is any function answering a list of texts with one result per text, in order: a sentiment
model's predict_batch (Predictions) or an embedding model's embed_batch (vectors).

Gradio runs each request on its own worker thread. Instead of Gradio's batch=True (which hands
a batched function only the first caller's gr.Request, so per-caller billing would charge the
wrong escrow), each caller submits its text here and blocks on its own Future; one worker thread
gathers what is waiting into a batch and runs one forward pass for all of them.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from models.prediction import require_text

logger = logging.getLogger(__name__)

#: What predict_batch answers for one text: a Prediction, an embedding vector, ...
Result = TypeVar("Result")


@dataclass
class _Request:
    text: str
    future: Future = field(default_factory=Future)


_STOP = object()  # queued by close(): the worker finishes what came before it, then ends


class DynamicBatcher(Generic[Result]):
    """Gathers concurrent single-text requests into predict_batch calls on one worker thread.

    `validate` checks (and may normalise) each text before it is queued; the default is require_text,
    the sentiment model's check.
    """

    def __init__(
        self,
        predict_batch: Callable[[Sequence[str]], Sequence[Result]],
        *,
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        validate: Callable[[str], str] = require_text,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must not be negative")
        self._predict_batch = predict_batch
        self._validate = validate
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # Held while checking `_closed` and enqueueing, so nothing is queued behind _STOP.
        self._state_lock = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="DynamicBatcher", daemon=True)
        self._worker.start()

    def submit(self, text: str) -> Result:
        """Answer `text` in the next batch; block until its own result (or its own error) is ready."""
        return self.submit_future(text).result()

    async def submit_async(self, text: str) -> Result:
        """Like submit, for async callers: awaits the result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit_future(text))

    def submit_future(self, text: str) -> Future[Result]:
        """Queue `text` and return the Future of its result; invalid text raises here, unqueued."""
        request = _Request(self._validate(text))
        with self._state_lock:
            if self._closed:
                raise RuntimeError("The batcher is closed: no more texts can be submitted.")
            self._queue.put(request)
        return request.future

    def close(self, timeout: float | None = None) -> None:
        """Answer what is already queued, then stop the worker; later submits raise RuntimeError."""
        with self._state_lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    @property
    def closed(self) -> bool:
        """Whether close() has been called."""
        return self._closed

    def __enter__(self) -> DynamicBatcher[Result]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            batch, stop = self._gather()
            if batch:
                try:
                    self._answer(batch)
                except Exception as error:  # a bug here must not kill the worker and hang every later caller
                    logger.exception("DynamicBatcher failed to answer a batch")
                    for request in batch:
                        if not request.future.done():
                            request.future.set_exception(error)
            if stop:
                return

    def _gather(self) -> tuple[list[_Request], bool]:
        """Wait for one request, then take more until the batch is full or max_wait has passed."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _answer(self, batch: list[_Request]) -> None:
        # A caller that gave up (its asyncio task was cancelled) is left out of the batch.
        live = [request for request in batch if request.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = list(self._predict_batch([request.text for request in live]))
            if len(results) != len(live):
                raise RuntimeError(
                    f"predict_batch returned {len(results)} results for {len(live)} texts"
                )
        except BaseException as error:  # every caller of this batch gets the error, the worker lives on
            for request in live:
                request.future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for request, result in zip(live, results):
            request.future.set_result(result)
