"""EscrowGate and its decorator: validate -> reserve -> run -> settle (or void)."""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import anyio.to_thread
import gradio as gr

from ._clock import ServiceClock, parse_service_time
from ._cache import NOT_FOUND, EscrowFacts, FactsCache
from ._limits import LookupLimiter, client_of
from ._lease import Lease, LeaseSettlement
from ._settlement import PerCallSettlement, Receipt, Reservation, Settlement
from ._signature import GatedSignature, build_signature
from .client import EscrowClient
from .errors import (
    EscrowApiError,
    EscrowClosed,
    EscrowExpired,
    EscrowNotFound,
    FunctionFailed,
    GateError,
    InsufficientFunds,
    InvalidEscrowId,
    InvalidInput,
    MissingEscrowId,
    ServiceUnavailable,
)
from .money import round_up
from .pricing import Price

__all__ = ["HOSTED_ESCROW_URL", "EscrowGate", "validate_escrow_id"]

log = logging.getLogger("gate")

HOSTED_ESCROW_URL = "https://escrow.purpleflea.com/api"
ESCROW_HEADER = "x-escrow-id"
_ESCROW_ID = re.compile(r"esc_[A-Za-z0-9]{20,40}", re.ASCII)
_AGENT_ID = re.compile(r"agent_[A-Za-z0-9]{20,40}", re.ASCII)
_MAX_ID_LENGTH = 44
_CLOSED_STATUSES = ("released", "refunded")
_NOTHING = object()


def validate_escrow_id(value: object) -> str:
    """The escrow ID if it is ``esc_`` + 20–40 ASCII letters/digits; else InvalidEscrowId."""
    if value is None or value == "":
        raise MissingEscrowId()
    if not isinstance(value, str) or len(value) > _MAX_ID_LENGTH or not _ESCROW_ID.fullmatch(value):
        raise InvalidEscrowId()
    return value


def _header_escrow_id(request: Any) -> str | None:
    headers = getattr(request, "headers", None) if request is not None else None
    if headers is None:
        return None
    try:
        value = headers.get(ESCROW_HEADER)
        if value is None and isinstance(headers, Mapping):  # a plain dict is case-sensitive
            value = next((v for k, v in headers.items() if str(k).lower() == ESCROW_HEADER), None)
    except Exception:
        return None
    return value


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


def _parse_time(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return float(value)
    return parse_service_time(value)


@dataclass(frozen=True)
class _Call:
    escrow_id: str
    args: tuple
    kwargs: dict
    maximum: Decimal
    client: str | None = None  # the caller's address (gate._limits), when Gradio gave a request


class _View:
    """What the settlement strategy may ask of the gate (see _settlement.EscrowView)."""

    def __init__(self, gate: EscrowGate):
        self._gate = gate

    def escrow_exists(self, escrow_id: str) -> bool:
        try:
            self._gate._fetch_facts(escrow_id)
        except EscrowNotFound:
            return False
        return True

    def remaining(self, escrow_id: str) -> Decimal | None:
        return self._gate._remaining(escrow_id)

    def refusal(self, escrow_id: str, error: EscrowApiError, price: Decimal) -> GateError:
        return self._gate._refusal(escrow_id, error, price)


class EscrowGate:
    """Charges each call of a Gradio function to the buyer's USDC escrow.

    ``settlement``: ``"lease"`` (the default, ``Lease()``: one hold serves many calls, captured in
    batches; see ``gate._lease``), a ``Lease(...)`` with options (lease size, capture interval,
    journal path), ``"per_call"`` (one hold captured per call), or a factory
    ``(client, view) -> Settlement``. Without ``Lease(journal=path)`` the lease journal lives in
    memory and a crash loses the charges not yet captured (at most one lease per escrow; the
    buyer keeps them). Call ``close()`` at shutdown: it captures what is owed and voids the rest.
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
        settlement: str | Lease | Callable[[EscrowClient, Any], Settlement] = "lease",
        hold_ttl_seconds: int = 300,
        cache_ttl: float = 60.0,
        negative_cache_ttl: float = 5.0,
        settle_retries: int = 4,
    ):
        if seller_id is not None and not (isinstance(seller_id, str) and _AGENT_ID.fullmatch(seller_id)):
            raise ValueError("seller_id must look like agent_…")
        if isinstance(hold_ttl_seconds, bool) or not isinstance(hold_ttl_seconds, int) or hold_ttl_seconds < 1:
            raise ValueError("hold_ttl_seconds must be a positive int")
        self._now = _time_source(clock)
        # The service's expiries are on its clock: every answer tells how far it is from ours (gate._clock).
        self._service_clock = ServiceClock(self._now)
        self._client = EscrowClient(
            escrow_url, api_key, timeout=timeout, max_connections=max_connections, service_clock=self._service_clock
        )
        self.escrow_url = escrow_url.rstrip("/")  # public: buyers open escrows here
        self._cache = FactsCache(self._now, ttl=cache_ttl, negative_ttl=negative_cache_ttl)
        self._lookups = LookupLimiter(timer=timer)  # unknown-escrow lookups per client and in all (gate/_limits.py)
        self._seller_id = seller_id
        self._seller_lock = threading.Lock()
        self.hold_ttl_seconds = hold_ttl_seconds
        view = _View(self)
        if settlement == "lease":
            settlement = Lease()
        if isinstance(settlement, Lease):
            self._settlement: Settlement = LeaseSettlement(
                self._client, view, settlement, now=self._now, timer=timer, settle_retries=settle_retries
            )
        elif settlement == "per_call":
            self._settlement = PerCallSettlement(self._client, view, settle_retries=settle_retries)
        elif callable(settlement):
            self._settlement = settlement(self._client, view)
        else:
            raise ValueError(f"unknown settlement {settlement!r}; available: 'lease', Lease(...), 'per_call'")
        self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gate-release")
        self._closed = False
        self._close_lock = threading.Lock()

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
        if self._seller_id is None:
            with self._seller_lock:
                if self._seller_id is None:
                    try:
                        me = self._client.me()
                    except EscrowApiError as exc:
                        raise self._refusal("", exc, Decimal(0)) from exc
                    agent_id = me.get("agent_id")
                    if not isinstance(agent_id, str) or not _AGENT_ID.fullmatch(agent_id):
                        log.warning("GET /me answered without a usable agent_id")
                        raise ServiceUnavailable("The payment service gave an unusable answer")
                    self._seller_id = agent_id
        return self._seller_id

    @property
    def settles_by_deduct(self) -> bool:
        """True once the service turned out to have no holds route (fallback to deduct)."""
        return bool(getattr(self._settlement, "uses_deduct", False))

    def paid(
        self,
        price: Price,
        *,
        reason: str,
        receipt: bool = False,
        check: Callable[..., Any] | None = None,
        receipt_extra: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    ) -> Callable[[Callable], Callable]:
        """Decorate a function so every call is paid from the escrow passed as ``escrow_id``.

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
        if not isinstance(price, Price):
            raise TypeError("price must be a PerCall, PerToken, PerSecond or other gate Price")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("reason must be a non-empty string, e.g. 'sentiment classification'")
        if check is not None and (not callable(check) or inspect.iscoroutinefunction(check)):
            raise TypeError("check must be a plain (not async) callable")
        if receipt_extra is not None and not (callable(receipt_extra) or isinstance(receipt_extra, Mapping)):
            raise TypeError("receipt_extra must be a mapping or a callable returning one")

        def decorate(fn: Callable) -> Callable:
            return _gated(self, fn, price, reason.strip(), bool(receipt), check, receipt_extra)

        return decorate

    def close(self) -> None:
        """Settle and release whatever the gate still holds; later calls are refused. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._background.shutdown(wait=True)
        self._settlement.close()
        self._client.close()

    # -- one call, step by step (blocking; async wrappers run these in a worker thread) ----

    def _reserve(self, call: _Call, ttl_seconds: int, reason: str) -> Reservation:
        if self._closed:
            raise ServiceUnavailable("This Space is shutting down")
        seller_id = self.seller_id
        cached = self._cache.get(call.escrow_id)
        if cached is NOT_FOUND:
            raise EscrowNotFound(call.escrow_id)
        fresh = cached is None
        if cached is None:
            self._lookups.check(call.client)
            try:
                facts = self._fetch_facts(call.escrow_id)
            except EscrowNotFound:
                self._lookups.unknown(call.client)
                raise
        else:
            facts = cached
        self._refuse_unusable(facts, seller_id)
        return self._settlement.reserve(
            call.escrow_id, call.maximum, reason, ttl_seconds, fresh=fresh, expires_at=facts.expires_at
        )

    def _refuse_unusable(self, facts: EscrowFacts, seller_id: str) -> None:
        """Wrong seller, closed or expired: refused without reserving anything."""
        if facts.seller_id != seller_id:
            raise EscrowNotFound(facts.escrow_id)
        # Expired only when the service's clock surely says so; near the edge the service's hold decides.
        if facts.status == "expired" or (
            facts.expires_at is not None and self._service_clock.surely_past(facts.expires_at)
        ):
            raise EscrowExpired(facts.escrow_id)
        if facts.status != "active":
            raise EscrowClosed(facts.escrow_id, facts.status if facts.status in _CLOSED_STATUSES else "not active")

    def _get_escrow(self, escrow_id: str) -> dict:
        try:
            return self._client.get_escrow(escrow_id)
        except EscrowApiError as exc:
            if exc.status in (403, 404):
                self._cache.put_not_found(escrow_id)
                raise EscrowNotFound(escrow_id) from exc
            raise self._refusal(escrow_id, exc, Decimal(0)) from exc

    def _fetch_facts(self, escrow_id: str) -> EscrowFacts:
        body = self._get_escrow(escrow_id)
        try:
            answered_id = body.get("id", body.get("escrow_id", escrow_id))
            seller_id, status = body["seller_id"], body["status"]
            if answered_id != escrow_id or not isinstance(seller_id, str) or not isinstance(status, str):
                raise ValueError("inconsistent escrow")
            facts = EscrowFacts(escrow_id, seller_id, status, _parse_time(body.get("expires_at")))
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("escrow service answered an unusable escrow object for %s", escrow_id)
            raise ServiceUnavailable("The payment service gave an unusable answer") from exc
        self._cache.put(facts)
        return facts

    def _remaining(self, escrow_id: str) -> Decimal | None:
        """The escrow's remaining balance now, or None if it cannot be read (best effort)."""
        from .money import parse_usdc

        try:
            return parse_usdc(self._client.get_escrow(escrow_id).get("remaining_usdc"))
        except (GateError, EscrowApiError, ValueError):
            return None

    def _refusal(self, escrow_id: str, error: EscrowApiError, price: Decimal) -> GateError:
        """The one place an escrow service refusal becomes a buyer-facing error (not charged)."""
        status, code = error.status, error.code
        if status == 401:
            log.error("the escrow service rejected this Space's API key (401); check PF_API_KEY")
            return ServiceUnavailable("The Space cannot take payments right now (its escrow account is misconfigured)")
        if status in (403, 404) and escrow_id:
            self._cache.put_not_found(escrow_id)
            return EscrowNotFound(escrow_id)
        if code == "insufficient_funds":
            return InsufficientFunds(escrow_id, price, self._remaining(escrow_id))
        if (code == "escrow_closed" or status == 410) and escrow_id:
            self._cache.forget(escrow_id)
            try:
                facts = self._fetch_facts(escrow_id)
                self._refuse_unusable(facts, facts.seller_id)
            except GateError as refusal:
                if isinstance(refusal, (EscrowClosed, EscrowExpired)):
                    return refusal
            return EscrowClosed(escrow_id)
        if status == 429:
            return ServiceUnavailable("The payment service is busy")
        log.error("escrow service refused the gate's request: %s %s %s", status, code, error.message)
        return ServiceUnavailable("The payment service refused the request")

    def _price_of(self, price: Price, call: _Call, outputs: Any, started: Any) -> Decimal:
        actual = price.actual_price(call.args, call.kwargs, outputs, started)
        if not isinstance(actual, Decimal) or not actual.is_finite() or actual < 0:
            raise TypeError(f"{type(price).__name__}.actual_price must return a non-negative Decimal")
        return min(round_up(actual), call.maximum)

    def _finish(self, price: Price, call: _Call, reservation: Reservation, outputs: Any, started: Any) -> Receipt:
        try:
            actual = self._price_of(price, call, outputs, started)
        except Exception as exc:
            self._settlement.release(reservation)
            log.error("pricing the result failed", exc_info=exc)
            raise FunctionFailed("call", "The call could not be priced") from exc
        return self._settlement.settle(reservation, actual)

    def _release(self, reservation: Reservation) -> None:
        self._settlement.release(reservation)

    def _release_later(self, reservation: Reservation) -> None:
        """Void without blocking (abandoned streams, cancelled tasks)."""
        try:
            self._background.submit(self._settlement.release, reservation)
        except RuntimeError:  # shut down: close() is voiding what is left
            self._settlement.release(reservation)

    def _abandoned(self, price: Price, call: _Call, reservation: Reservation, last: Any, started: Any) -> None:
        """A stream stopped by its consumer: what it yielded was handed out, so it is charged; nothing: voided."""
        if last is _NOTHING:
            self._release_later(reservation)
            return

        def charge() -> None:
            try:
                self._finish(price, call, reservation, last, started)
            except GateError as exc:
                log.warning("an abandoned stream's delivered output could not be charged: %s", exc.message)

        try:
            self._background.submit(charge)
        except RuntimeError:  # shut down: charge it here, before the settlement closes
            charge()

    def _hold_ttl(self, price: Price) -> int:
        max_seconds = getattr(price, "max_seconds", None)
        if max_seconds is None:
            return self.hold_ttl_seconds
        return max(self.hold_ttl_seconds, math.ceil(max_seconds) + 60)


# -- the wrapper --------------------------------------------------------------------------


def _with_receipt(outputs: Any, receipt: Any) -> tuple:
    return (*outputs, receipt) if isinstance(outputs, tuple) else (outputs, receipt)


def _raise_failure(exc: Exception, reason: str) -> None:
    """Called in an ``except`` block: re-raise the function's failure as a buyer-facing error."""
    if isinstance(exc, GateError):
        raise exc
    if isinstance(exc, gr.Error):
        raise FunctionFailed(reason, str(exc.message)) from exc
    log.error("the gated function failed (%s); the buyer was not charged", reason, exc_info=exc)
    raise FunctionFailed(reason, f"The {reason} failed") from exc


def _gated(
    gate: EscrowGate,
    fn: Callable,
    price: Price,
    reason: str,
    want_receipt: bool,
    check: Callable[..., Any] | None,
    receipt_extra: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None,
) -> Callable:
    spec: GatedSignature = build_signature(fn, keep_return=not want_receipt)
    ttl = gate._hold_ttl(price)

    def prepare(args: tuple, kwargs: dict) -> _Call:
        """Everything before the network: ID form, the Space's input check, the maximum price."""
        fn_args, fn_kwargs, escrow_arg, request = spec.split(args, kwargs)
        escrow_id = validate_escrow_id(escrow_arg if escrow_arg not in (None, "") else _header_escrow_id(request))
        if check is not None:
            try:
                check(*fn_args, **fn_kwargs)
            except GateError:
                raise
            except gr.Error as exc:
                raise InvalidInput(str(exc.message)) from exc
            except ValueError as exc:
                raise InvalidInput(str(exc)) from exc
            except Exception as exc:
                log.error("the input check of the %s failed", reason, exc_info=exc)
                raise FunctionFailed(reason, "The input check failed") from exc
        try:
            maximum = price.max_price(fn_args, fn_kwargs)
        except Exception as exc:
            log.error("pricing the call failed", exc_info=exc)
            raise FunctionFailed(reason, "The call could not be priced") from exc
        return _Call(escrow_id, fn_args, fn_kwargs, maximum, client_of(request))

    def receipt_dict(receipt: Receipt) -> dict:
        extra = receipt_extra() if callable(receipt_extra) else receipt_extra
        return receipt.as_dict(extra)

    if inspect.isasyncgenfunction(fn):

        async def gated(*args, **kwargs):
            call = prepare(args, kwargs)
            reservation = await _reserve_async(gate, call, ttl, reason)
            started = price.start()
            last, stream = _NOTHING, None
            try:
                stream = fn(*call.args, **call.kwargs)
                async for item in stream:
                    last = item
                    yield _with_receipt(item, None) if want_receipt else item
            except Exception as exc:
                await anyio.to_thread.run_sync(gate._release, reservation)
                _raise_failure(exc, reason)
            except BaseException:  # GeneratorExit (abandoned), cancellation
                gate._abandoned(price, call, reservation, last, started)
                raise
            finally:
                if stream is not None:
                    await stream.aclose()
            if last is _NOTHING:
                await anyio.to_thread.run_sync(gate._release, reservation)
                return
            receipt = await anyio.to_thread.run_sync(gate._finish, price, call, reservation, last, started)
            if want_receipt:
                yield _with_receipt(last, receipt_dict(receipt))

    elif inspect.isgeneratorfunction(fn):

        def gated(*args, **kwargs):
            call = prepare(args, kwargs)
            reservation = gate._reserve(call, ttl, reason)
            started = price.start()
            last, stream = _NOTHING, None
            try:
                stream = fn(*call.args, **call.kwargs)
                for item in stream:
                    last = item
                    yield _with_receipt(item, None) if want_receipt else item
            except Exception as exc:
                gate._release(reservation)
                _raise_failure(exc, reason)
            except BaseException:  # GeneratorExit (abandoned), KeyboardInterrupt
                gate._abandoned(price, call, reservation, last, started)
                raise
            finally:
                if stream is not None:
                    stream.close()
            if last is _NOTHING:
                gate._release(reservation)
                return
            receipt = gate._finish(price, call, reservation, last, started)
            if want_receipt:
                yield _with_receipt(last, receipt_dict(receipt))

    elif inspect.iscoroutinefunction(fn):

        async def gated(*args, **kwargs):
            call = prepare(args, kwargs)
            reservation = await _reserve_async(gate, call, ttl, reason)
            started = price.start()
            try:
                outputs = await fn(*call.args, **call.kwargs)
            except Exception as exc:
                await anyio.to_thread.run_sync(gate._release, reservation)
                _raise_failure(exc, reason)
            except BaseException:  # cancellation
                gate._release_later(reservation)
                raise
            receipt = await anyio.to_thread.run_sync(gate._finish, price, call, reservation, outputs, started)
            return _with_receipt(outputs, receipt_dict(receipt)) if want_receipt else outputs

    else:

        def gated(*args, **kwargs):
            call = prepare(args, kwargs)
            reservation = gate._reserve(call, ttl, reason)
            started = price.start()
            try:
                outputs = fn(*call.args, **call.kwargs)
            except Exception as exc:
                gate._release(reservation)
                _raise_failure(exc, reason)
            except BaseException:
                gate._release_later(reservation)
                raise
            receipt = gate._finish(price, call, reservation, outputs, started)
            return _with_receipt(outputs, receipt_dict(receipt)) if want_receipt else outputs

    # Not functools.wraps: it sets __wrapped__ and copies the original annotations, after
    # which Gradio reads the original signature and stops injecting gr.Request.
    for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
        if hasattr(fn, attribute):
            setattr(gated, attribute, getattr(fn, attribute))
    gated.__signature__ = spec.signature
    gated.__annotations__ = dict(spec.annotations)
    return gated


async def _reserve_async(gate: EscrowGate, call: _Call, ttl: int, reason: str) -> Reservation:
    """Reserve in a worker thread; if the task is cancelled meanwhile, the hold is voided."""
    made: list[Reservation] = []

    def reserve() -> None:
        made.append(gate._reserve(call, ttl, reason))

    try:
        await anyio.to_thread.run_sync(reserve)
    except BaseException:
        if made:
            gate._release_later(made[0])
        raise
    return made[0]
