"""Limits on looking up escrow IDs that turn out not to exist.

A well-formed but unknown escrow ID costs the Space one ``GET /escrow/{id}`` (the facts
cache remembers unknown IDs only briefly, and a flood uses a new ID each time). So each
client (its address as Gradio sees it) has a token bucket of unknown-ID lookups, and all
clients together share a global one: every lookup answered "not found" takes a token;
while a client's bucket (or the global one) is empty, a call from that client whose
escrow is not already cached is refused at once, without a lookup ("not charged").
Lookups of escrows that exist take no token, so a buyer with a real escrow is only ever
slowed by the global bucket during a flood, and never once its escrow is cached.

Defaults: 20 unknown IDs at once per client, refilled at 2 a second; 200 at once for
everyone together, refilled at 20 a second (see SECURITY.md).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .errors import NOT_CHARGED, GateError

__all__ = ["LookupLimiter", "TooManyUnknownEscrows", "client_of"]


class TooManyUnknownEscrows(GateError):
    """Too many unknown escrow IDs from this client (or from everyone) lately."""

    code = "rate_limited"

    def __init__(self) -> None:
        super().__init__(
            "Too many calls with unknown escrow IDs came from your address recently; check the "
            f"escrow ID and retry in a few seconds. {NOT_CHARGED}"
        )


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float):
        self.tokens = tokens
        self.stamp = stamp


class LookupLimiter:
    """Token buckets of unknown-escrow lookups, per client and global. Thread-safe."""

    def __init__(
        self,
        *,
        per_client_burst: int = 20,
        per_client_rate: float = 2.0,
        global_burst: int = 200,
        global_rate: float = 20.0,
        max_clients: int = 10_000,
        timer: Callable[[], float] = time.monotonic,
    ):
        self.per_client_burst, self.per_client_rate = per_client_burst, per_client_rate
        self.global_burst, self.global_rate = global_burst, global_rate
        self._max_clients = max_clients
        self._timer = timer
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, _Bucket] = OrderedDict()
        self._global = _Bucket(float(global_burst), timer())

    @staticmethod
    def _refill(bucket: _Bucket, burst: int, rate: float, now: float) -> None:
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now

    def _client(self, client: str, now: float) -> _Bucket:
        bucket = self._clients.get(client)
        if bucket is None:
            bucket = self._clients[client] = _Bucket(float(self.per_client_burst), now)
            while len(self._clients) > self._max_clients:  # forget the longest-idle clients
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
        self._refill(bucket, self.per_client_burst, self.per_client_rate, now)
        return bucket

    def check(self, client: str | None) -> None:
        """Before a lookup of an uncached escrow: raise TooManyUnknownEscrows if out of tokens."""
        now = self._timer()
        with self._lock:
            self._refill(self._global, self.global_burst, self.global_rate, now)
            if self._global.tokens < 1 or self._client(client or "?", now).tokens < 1:
                raise TooManyUnknownEscrows()

    def unknown(self, client: str | None) -> None:
        """A lookup answered "not found": take a token from the client's and the global bucket."""
        now = self._timer()
        with self._lock:
            self._refill(self._global, self.global_burst, self.global_rate, now)
            self._global.tokens = max(0.0, self._global.tokens - 1)
            bucket = self._client(client or "?", now)
            bucket.tokens = max(0.0, bucket.tokens - 1)


def client_of(request: Any) -> str | None:
    """The caller's address as the server saw it (never a client-supplied header)."""
    client = getattr(request, "client", None) if request is not None else None
    host = getattr(client, "host", None)
    return host if isinstance(host, str) and host else None
