"""EscrowGate: the configuration every paid function shares, and its two decorators.

``paid`` adapts a function for Gradio (``gate._gradio``), ``paid_route`` for a
plain FastAPI/Starlette route (``gate._asgi``); both run the one paid call of
``gate._flow`` against the escrow boundary (``gate._service``) and a
settlement strategy (``gate._settlement``, ``gate._lease``).
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._answers import AGENT_ID
from ._asgi import deliverable_json, route_wrapper
from ._cache import FactsCache
from ._clock import ServiceClock
from ._flow import Cashier, PaidFunction, validate_escrow_id
from ._gradio import gradio_wrapper
from ._lease import Lease, LeaseSettlement
from ._limits import LookupLimiter
from ._service import EscrowService
from ._settlement import PerCallSettlement, Settlement
from ._stats import GateStats
from .client import EscrowClient
from .pricing import Price

__all__ = ["HOSTED_ESCROW_URL", "JOURNAL_FILE", "EscrowGate", "default_journal", "validate_escrow_id"]

log = logging.getLogger("gate")

HOSTED_ESCROW_URL = "https://escrow.purpleflea.com/api"
JOURNAL_FILE = "gate-journal.sqlite"
def default_journal(environ: Mapping[str, str] | None = None) -> Path | None:
    """Where the default lease keeps its journal: ``$DATA_DIR`` or Hugging Face's persistent ``/data``
    (``gate-journal.sqlite`` in it), else None (in memory)."""
    env = os.environ if environ is None else environ
    configured = (env.get("DATA_DIR") or "").strip()
    for folder in ([Path(configured)] if configured else [Path("/data")]):
        if folder.is_dir() and os.access(folder, os.W_OK):
            return folder / JOURNAL_FILE
    return None


def _time_source(clock: Any) -> Callable[[], float]:
    """A callable giving epoch seconds, from None, a callable, or an object with ``.now()``."""
    if clock is None:
        return time.time
    read = clock.now if callable(getattr(clock, "now", None)) else clock
    if not callable(read):
        raise TypeError("clock must be callable or have a now() method")

    def now() -> float:
        value = read()
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            return value.timestamp()
        return float(value)

    return now


class EscrowGate:
    """Charges each call of a function to the buyer's USDC escrow.

    ``settlement``: ``"lease"`` (the default: ``Lease()``, one hold serving many calls, captured in
    batches, see ``gate._lease``; its journal is ``default_journal()``: a file in ``$DATA_DIR`` or
    ``/data`` when one exists, else memory), a ``Lease(...)`` with options, ``"per_call"`` (one hold
    per call, captured before the result is returned), or a factory ``(EscrowService) -> Settlement``.
    ``public_escrow_url``: where buyers reach the escrow service, if not at ``escrow_url``.
    ``per_call_hold_ttl_s``: a per-call hold's TTL for calls whose price names no longest call
    (``PerSecond(max_seconds=…)`` lengthens it, in every settlement).

    The gate closes itself at interpreter exit (and on SIGTERM, when nothing else handles it): it
    captures what is owed and voids the rest. ``close()`` or ``with EscrowGate(...) as gate:`` does
    the same earlier.
    """

    def __init__(
        self,
        escrow_url: str,
        api_key: str,
        *,
        seller_id: str | None = None,
        timeout: tuple[float, float] = (3.05, 10.0),
        max_connections: int = 64,
        clock: Any = None,
        timer: Callable[[], float] = time.monotonic,
        settlement: str | Lease | Callable[[EscrowService], Settlement] = "lease",
        per_call_hold_ttl_s: int = 300,
        cache_ttl: float = 60.0,
        negative_cache_ttl: float = 5.0,
        settle_retries: int = 4,
        public_escrow_url: str | None = None,
    ):
        if seller_id is not None and not (isinstance(seller_id, str) and AGENT_ID.fullmatch(seller_id)):
            raise ValueError("seller_id must look like agent_…")
        self._now = _time_source(clock)
        # The service's expiries are on its clock: every answer tells how far it is from ours (gate._clock).
        stats = GateStats(self._now)
        client = EscrowClient(
            escrow_url, api_key, timeout=timeout, max_connections=max_connections,
            service_clock=ServiceClock(self._now), on_request=stats.request,
        )
        self._client = client
        # Where buyers open escrows (402 answers say so): the service's public address when the gate reaches it
        # another way (the sandbox over loopback).
        self.escrow_url = (public_escrow_url or escrow_url).rstrip("/")
        cache = FactsCache(self._now, ttl=cache_ttl, negative_ttl=negative_cache_ttl)
        # Unknown-escrow lookups are limited per client and in all (gate/_limits.py).
        self._service = EscrowService(client, cache, LookupLimiter(timer=timer), seller_id, stats)
        if settlement == "lease":
            settlement = Lease(journal=default_journal())
        if isinstance(settlement, Lease):
            strategy: Settlement = LeaseSettlement(
                self._service, settlement, now=self._now, timer=timer, settle_retries=settle_retries,
                per_call_hold_ttl_s=per_call_hold_ttl_s,
            )
        elif settlement == "per_call":
            strategy = PerCallSettlement(self._service, hold_ttl_s=per_call_hold_ttl_s, settle_retries=settle_retries)
        elif callable(settlement):
            strategy = settlement(self._service)
        else:
            raise ValueError(f"unknown settlement {settlement!r}; available: 'lease', Lease(...), 'per_call'")
        self._settlement = strategy
        self._cashier = Cashier(self._service, strategy, timer)
        self._closed = False
        self._close_lock = threading.Lock()
        _close_at_exit(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> EscrowGate:
        """A gate configured by PF_API_KEY and ESCROW_URL (the hosted service when only the key is set)."""
        env = os.environ if environ is None else environ
        api_key = (env.get("PF_API_KEY") or "").strip()
        escrow_url = (env.get("ESCROW_URL") or "").strip()
        if not api_key and not escrow_url:
            raise ValueError(
                "EscrowGate.from_env: neither PF_API_KEY nor ESCROW_URL is set; set PF_API_KEY to the "
                "seller's escrow key (and ESCROW_URL for a service other than the hosted one)"
            )
        if not api_key:
            raise ValueError("EscrowGate.from_env: ESCROW_URL is set but PF_API_KEY is empty; the gate needs the seller's key")
        return cls(escrow_url or HOSTED_ESCROW_URL, api_key, **options)

    # -- public -------------------------------------------------------------------------

    @property
    def seller_id(self) -> str:
        """This Space's agent ID on the escrow service (learned once from GET /me)."""
        return self._service.seller_id

    @property
    def known_seller_id(self) -> str | None:
        """The seller ID if already learned (never asks the service)."""
        return self._service.known_seller_id

    def stats(self) -> dict[str, Any]:
        """What this gate did so far: calls by outcome, refusals by code, USDC charged and captured, escrow requests
        by route, the latency of its own work, open leases and what they owe, recent receipts, calls and revenue
        per minute (``gate._stats``). Cheap: a copy of counters."""
        leases, owed = self._settlement.open_leases()
        return {**self._service.stats.snapshot(), "open_leases": leases, "owed_usdc": owed}

    @property
    def settles_by_deduct(self) -> bool:
        """True once the service turned out to have no holds route (fallback to deduct)."""
        return self._settlement.settles_by_deduct

    def paid(
        self,
        price: Price,
        *,
        reason: str,
        receipt: bool = False,
        check: Callable[..., Any] | None = None,
        receipt_extra: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    ) -> Callable[[Callable], Callable]:
        """Decorate a function for Gradio so every call is paid from the escrow passed as ``escrow_id``.

        The decorated function takes the function's parameters, then ``escrow_id: str | None = None``
        (None or empty: read from the ``X-Escrow-Id`` header), then ``request: gr.Request = None``
        (filled by Gradio; added only if the function does not take a gr.Request itself).

        ``check(*args, **kwargs)`` sees the function's arguments before anything is reserved;
        a ValueError or gr.Error it raises refuses the call ("You were not charged.").

        With ``receipt=True`` the receipt dict (``Receipt.as_dict()`` merged over
        ``receipt_extra``) is one extra, last output: appended to a tuple result, else
        ``(result, receipt)``. A stream yields each item with ``None`` in the receipt slot,
        then, once settled, its last item again with the receipt. A stream that yields
        nothing is charged nothing; one whose function raises is voided (not charged, even
        after some output). A stream abandoned by its consumer (client gone, task cancelled)
        after it yielded output is charged for what it handed out: its last item
        (``PerToken`` counts that item's tokens; ``PerCall`` charges the price).
        """
        paid = self._paid_function(price, reason, check, receipt_extra)
        return lambda fn: gradio_wrapper(paid(fn), bool(receipt))

    def paid_route(
        self,
        price: Price,
        *,
        reason: str,
        check: Callable[..., Any] | None = None,
        receipt_extra: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    ) -> Callable[[Callable], Callable]:
        """Decorate a FastAPI or Starlette endpoint so every call is paid from the ``X-Escrow-Id`` escrow.

        It answers ``{"result": …, "receipt": {…}}``; a refusal is ``{"error": {"code", "message",
        "charged"}}`` with 402 (payment), 422 (input), 503 (service unavailable, ``Retry-After``) or
        500 (the function failed). The money rules are ``paid``'s (see ``gate._asgi``).
        """
        paid = self._paid_function(price, reason, check, receipt_extra, deliverable=deliverable_json)
        return lambda fn: route_wrapper(paid(fn), self)

    def close(self) -> None:
        """Capture what the gate charged and void whatever else it holds; later calls are refused. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._cashier.close()
        finally:
            with _exit_hooks_lock:
                _open_gates.discard(self)

    def __enter__(self) -> EscrowGate:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- private -------------------------------------------------------------------------

    def _paid_function(
        self, price, reason, check, receipt_extra, deliverable=None
    ) -> Callable[[Callable], PaidFunction]:
        """Check the decorator's arguments once, when it is applied."""
        if not isinstance(price, Price):
            raise TypeError("price must be a PerCall, PerToken, PerSecond or other gate Price")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("reason must be a non-empty string, e.g. 'sentiment classification'")
        if check is not None and (not callable(check) or inspect.iscoroutinefunction(check)):
            raise TypeError("check must be a plain (not async) callable")
        if receipt_extra is not None and not (callable(receipt_extra) or isinstance(receipt_extra, Mapping)):
            raise TypeError("receipt_extra must be a mapping or a callable returning one")
        return lambda fn: PaidFunction(self._cashier, fn, price, reason.strip(), check, receipt_extra, deliverable)


# -- closing at exit ----------------------------------------------------------------------

# Strong references: a gate dropped without close() still owes its buyers' charges to its seller, so it lives
# (and is closed) until exit; close() takes it out.
_open_gates: set[EscrowGate] = set()
_exit_hooks_installed = False
_exit_hooks_lock = threading.Lock()


def _close_at_exit(gate: EscrowGate) -> None:
    """Close ``gate`` when the interpreter exits; a SIGTERM with no handler of its own becomes a clean exit."""
    global _exit_hooks_installed
    with _exit_hooks_lock:
        _open_gates.add(gate)
        if _exit_hooks_installed:
            return
        _exit_hooks_installed = True
    atexit.register(_close_open_gates)
    # The default SIGTERM action kills the process without running atexit: what the leases charged
    # would never be captured. Servers that handle SIGTERM themselves (uvicorn) replace this.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _close_open_gates() -> None:
    with _exit_hooks_lock:
        gates = list(_open_gates)
    for gate in gates:
        try:
            gate.close()
        except Exception:  # noqa: BLE001 - at exit: close the others anyway
            log.exception("closing a gate at exit failed")


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
