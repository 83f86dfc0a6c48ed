"""HTTP for the buyer: one ``requests.Session`` per thread, explicit timeouts, JSON money as Decimal."""

from __future__ import annotations

import json
import threading
import uuid
from decimal import Decimal
from typing import Any

import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

#: (connect, read) seconds for the escrow service and for reading a Space's pricing.
SERVICE_TIMEOUT = (3.05, 20.0)


class _Http:
    """Thread-safe HTTP: each thread its own pooled session (``requests.Session`` is not meant to be shared)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def request(self, method: str, url: str, *, timeout: Any, **kw: Any) -> requests.Response:
        return self.session().request(method, url, timeout=timeout, **kw)

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()


def _json(response: requests.Response, *, decimal: bool = True) -> Any:
    """The body as JSON (numbers as Decimal, for money; floats for a Space's results), or None if it is not JSON."""
    try:
        return json.loads(response.content, parse_float=Decimal if decimal else float)
    except ValueError:
        return None


def _never_sent(exc: BaseException) -> bool:
    """Whether a requests failure happened before the request could reach the server (connecting)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError) and exc.args:
        reason = exc.args[0]
        if isinstance(reason, MaxRetryError):
            reason = reason.reason
        return isinstance(reason, (NewConnectionError, ConnectTimeoutError))
    return False


def _retry_after(response: requests.Response, default: float) -> float:
    """The Retry-After header in seconds (the default when absent or a date)."""
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return default


def _new_key(prefix: str) -> str:
    """A fresh Idempotency-Key (printable ASCII, well under 128 characters)."""
    return f"buyer-{prefix}-{uuid.uuid4().hex}"
