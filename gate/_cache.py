"""Escrow facts (seller, status, expiry) cached with cachetools.

The lock is held only around cache access, never across an HTTP call. The
cache never says that money is there: only the service's atomic hold does.
Unknown IDs are cached too, briefly, so a flood of bad IDs is not a flood of
lookups.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from cachetools import TTLCache

from ._answers import EscrowFacts

__all__ = ["EscrowFacts", "FactsCache"]


class _NotFound:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_FOUND"


NOT_FOUND = _NotFound()


class FactsCache:
    """Thread-safe TTL caches: facts for known escrows, a shorter one for unknown IDs."""

    def __init__(
        self,
        timer: Callable[[], float],
        *,
        ttl: float = 60.0,
        negative_ttl: float = 5.0,
        maxsize: int = 10_000,
    ):
        self._lock = threading.Lock()
        self._facts: TTLCache[str, EscrowFacts] = TTLCache(maxsize, ttl, timer=timer)
        self._missing: TTLCache[str, bool] = TTLCache(maxsize, negative_ttl, timer=timer)

    def get(self, escrow_id: str) -> EscrowFacts | _NotFound | None:
        """The cached facts, NOT_FOUND for a recently unknown ID, or None on a miss."""
        with self._lock:
            facts = self._facts.get(escrow_id)
            if facts is not None:
                return facts
            if self._missing.get(escrow_id):
                return NOT_FOUND
            return None

    def put(self, facts: EscrowFacts) -> None:
        with self._lock:
            self._missing.pop(facts.escrow_id, None)
            self._facts[facts.escrow_id] = facts

    def put_not_found(self, escrow_id: str) -> None:
        with self._lock:
            self._facts.pop(escrow_id, None)
            self._missing[escrow_id] = True

    def forget(self, escrow_id: str) -> None:
        with self._lock:
            self._facts.pop(escrow_id, None)
            self._missing.pop(escrow_id, None)
