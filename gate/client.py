"""HTTP client for the escrow contract (shared/escrow-api.md), as the seller.

One pooled ``requests.Session``; explicit (connect, read) timeouts; an
``Idempotency-Key`` on every POST, reused on its retries; retries with backoff
only where safe. ``_send`` is the one place where transport failures become
gate errors: everything that is not a usable answer is ServiceUnavailable,
a well-formed error answer is EscrowApiError (``gate._service.refusal`` decides
what it means for the buyer). Answers are parsed once, into ``gate._answers``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from ._answers import (
    Deduction,
    EscrowFacts,
    Hold,
    Me,
    Settled,
    parse_deduction,
    parse_escrow,
    parse_hold,
    parse_me,
    parse_settled,
)
from ._clock import ServiceClock
from .errors import EscrowApiError, ServiceUnavailable
from .money import format_usdc

__all__ = ["EscrowClient", "new_idempotency_key"]

log = logging.getLogger("gate")

_RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
_USER_AGENT = "gradio-escrow-gate/1"


def new_idempotency_key() -> str:
    """A fresh Idempotency-Key (reused for every retry of the same POST)."""
    return uuid.uuid4().hex


class EscrowClient:
    """The seller's side of the escrow contract over HTTP."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: tuple[float, float] = (3.05, 10.0),
        max_connections: int = 64,
        retries: int = 2,
        backoff: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
        service_clock: ServiceClock | None = None,
        on_request: Callable[[str, str], None] | None = None,
    ):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError("escrow_url must be an http(s) URL")
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("api_key must be a non-empty string")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        self._on_request = on_request  # (method, path) of every attempt: the seller's metrics
        # Every answer's Date header tells how far the service's clock is from ours (gate._clock).
        self.service_clock = service_clock or ServiceClock(time.time)
        #: The gate-clock time of the service's latest answer (any status under 500): proof it was up then.
        self.last_answer_at = -float("inf")
        self._slowest, self._slowest_at = 0.0, 0.0  # the slowest recent exchange, forgotten at 0.1 s a second
        self._session = requests.Session()
        # Never read proxies/.netrc from the environment: the seller's key goes to ESCROW_URL only.
        self._session.trust_env = False
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max_connections, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update(
            {
                "Authorization": f"Bearer {api_key.strip()}",
                "Accept": "application/json",
                "User-Agent": _USER_AGENT,
            }
        )
        self._closed = threading.Event()

    # -- the contract's calls ---------------------------------------------------------

    def me(self) -> Me:
        return parse_me(self._request("GET", "/me"))

    def get_escrow(self, escrow_id: str) -> EscrowFacts:
        return parse_escrow(self._request("GET", f"/escrow/{escrow_id}"), escrow_id)

    def open_hold(self, escrow_id: str, amount: Decimal, ttl_seconds: int, *, key: str) -> Hold:
        body = {"amount_usdc": format_usdc(amount), "ttl_seconds": int(ttl_seconds)}
        return parse_hold(self._request("POST", f"/escrow/{escrow_id}/holds", body, key=key))

    def capture(
        self, escrow_id: str, hold_id: str, amount: Decimal, *, key: str, final: bool = True,
        retries: int | None = None,
    ) -> Settled:
        body = {"amount_usdc": format_usdc(amount), "final": final}
        path = f"/escrow/{escrow_id}/holds/{hold_id}/capture"
        return parse_settled(self._request("POST", path, body, key=key, retries=retries))

    def void(self, escrow_id: str, hold_id: str, *, key: str, retries: int | None = None) -> Settled:
        path = f"/escrow/{escrow_id}/holds/{hold_id}/void"
        return parse_settled(self._request("POST", path, {}, key=key, retries=retries))

    def deduct(
        self, escrow_id: str, amount: Decimal, reason: str, *, key: str, retries: int | None = None
    ) -> Deduction:
        body = {"amount_usdc": format_usdc(amount), "reason": reason}
        return parse_deduction(self._request("POST", f"/escrow/{escrow_id}/deduct", body, key=key, retries=retries))

    def close(self) -> None:
        self._closed.set()
        self._session.close()

    # -- plumbing ---------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: dict | None = None, *, key: str | None = None,
        retries: int | None = None,
    ) -> dict:
        """Send with retries; a POST is retried only with its own Idempotency-Key."""
        if method == "POST" and not key:
            raise ValueError("every POST needs an Idempotency-Key")
        attempts = 1 + (self.retries if retries is None else retries)
        for attempt in range(attempts):
            try:
                return self._send(method, path, body, key)
            except ServiceUnavailable:
                if attempt + 1 >= attempts or self._closed.is_set():
                    raise
                self._sleep(self.backoff * (2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, method: str, path: str, body: dict | None, key: str | None) -> dict:
        """One HTTP exchange; the only place transport failures become gate errors."""
        headers = {"Idempotency-Key": key} if key else None
        data = json.dumps(body) if body is not None else None
        if data is not None:
            headers = {**(headers or {}), "Content-Type": "application/json"}
        clock = self.service_clock
        if self._on_request is not None:
            self._on_request(method, path)
        sent = clock.now()
        try:
            return self._exchange(method, path, data, headers, sent)
        finally:
            self._note_duration(sent, clock.now())

    @property
    def recent_round_trip(self) -> float:
        """The slowest exchange with the service lately, in seconds (a peak that decays 0.1 s per second)."""
        return max(self._slowest - 0.1 * (self.service_clock.now() - self._slowest_at), 0.0)

    def _note_duration(self, sent: float, done: float) -> None:
        took = max(done - sent, 0.0)
        if took >= self.recent_round_trip:
            self._slowest, self._slowest_at = took, done

    def _exchange(self, method: str, path: str, data: str | None, headers: dict | None, sent: float) -> dict:
        clock = self.service_clock
        try:
            response = self._session.request(
                method,
                self.base_url + path,
                data=data,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            log.warning("escrow service timed out on %s %s", method, path)
            raise ServiceUnavailable("The payment service did not answer in time") from exc
        except (requests.RequestException, OSError) as exc:
            log.warning("escrow service unreachable on %s %s: %s", method, path, type(exc).__name__)
            raise ServiceUnavailable() from exc
        received = clock.now()
        clock.observe_date(response.headers.get("Date"), sent, received)
        status = response.status_code
        if status < 500:
            self.last_answer_at = received
        try:
            payload = json.loads(response.content, parse_float=Decimal) if response.content else None
        except ValueError as exc:
            log.warning("escrow service sent non-JSON (%s) on %s %s", status, method, path)
            raise ServiceUnavailable() from exc
        if 200 <= status < 300:
            if not isinstance(payload, dict):
                log.warning("escrow service sent a non-object (%s) on %s %s", status, method, path)
                raise ServiceUnavailable()
            return payload
        if status in _RETRYABLE_STATUS or status >= 500:
            log.warning("escrow service error %s on %s %s", status, method, path)
            raise ServiceUnavailable()
        if 300 <= status < 400 or status < 200:
            log.warning("escrow service answered %s on %s %s", status, method, path)
            raise ServiceUnavailable()
        code, message = None, ""
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            err = payload["error"]
            code = err.get("code") if isinstance(err.get("code"), str) else None
            message = err.get("message") if isinstance(err.get("message"), str) else ""
        raise EscrowApiError(status, code, message)
