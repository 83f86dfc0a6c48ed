"""A session with one paid Space: its pricing, escrows opened within a budget, calls, and the closing statement.

Escrows: the first call opens one for the Space's seller of ``min(escrow_usdc or budget, budget left)``;
the sum of the amounts of the escrows a session opens never exceeds ``budget_usdc`` (one is opened at a
time, under a lock; an open whose outcome is unknown counts as locked). When the Space answers
``insufficient_funds``, ``escrow_closed`` or ``escrow_expired`` for the current escrow, the call is sent
again on the next one while the budget can pay for it, else ``BudgetExhausted`` is raised.

Retries: only what cannot have been charged. A ``service_unavailable`` refusal (nothing ran) and a
connection that could not be opened are retried ``retries`` times after ``Retry-After`` (at most
``max_retry_wait_s``); a connection lost after the call was sent raises ``ChargeUnknown``, never retried.

Closing (``close()`` or leaving ``with``): waits for calls still running in other threads, then per
escrow waits (up to ``settle_timeout_s`` in all) until the escrow service has captured at least what the
receipts say (a lease-settling Space captures every few seconds), then releases it: nothing more for
the seller, the rest back to the buyer. An escrow whose charges were not all captured in time is left
open rather than released (a release on the hosted service voids open holds, which would take back
charges for results already received); it refunds itself at its expiry, or ``wallet.release(id)``
closes it later. What a Space still holds in an open lease comes back to the buyer when the lease
closes; ``refresh_statement()`` shows it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ._http import _Http
from ._money import _fmt, _usdc
from ._transports import _Function, _GradioApi, _GradioClient, _read_pricing, _Route
from .errors import (
    BudgetExhausted,
    EscrowClosed,
    EscrowExpired,
    EscrowServiceError,
    InsufficientFunds,
    PaymentError,
    PriceTooHigh,
    ServiceUnavailable,
)
from .statement import EscrowStatement, Receipt, Statement

if TYPE_CHECKING:
    from .wallet import Wallet

__all__ = ["TRANSPORTS", "SpaceSession"]

log = logging.getLogger("buyer")

#: ``auto``: the plain route where pricing lists one, else Gradio's HTTP API; or one of them always.
TRANSPORTS = ("auto", "route", "gradio_api", "gradio_client")
_DRY = (InsufficientFunds, EscrowClosed, EscrowExpired)  # the escrow cannot pay any more: use the next one
_POLL_S = 0.25


@dataclass
class _EscrowRecord:
    escrow_id: str
    amount: Decimal
    calls: int = 0
    charged: Decimal = Decimal("0.000000")
    unknown: int = 0


class SpaceSession:
    """Paid calls to one Space from escrows this session opens within ``budget_usdc``; thread-safe."""

    def __init__(
        self,
        wallet: Wallet,
        url: str,
        *,
        budget_usdc: str | int | Decimal,
        max_price_usdc: str | int | Decimal | None = None,
        escrow_usdc: str | int | Decimal | None = None,
        ttl_seconds: int = 3600,
        transport: str = "auto",
        retries: int = 2,
        max_retry_wait_s: float = 30.0,
        timeout: tuple[float, float] = (3.05, 120.0),
        settle_timeout_s: float = 15.0,
    ) -> None:
        self.budget_usdc = _usdc(budget_usdc, "budget_usdc")
        if self.budget_usdc <= 0:
            raise ValueError("budget_usdc must be more than 0")
        self.max_price_usdc = None if max_price_usdc is None else _usdc(max_price_usdc, "max_price_usdc")
        self.escrow_usdc = None if escrow_usdc is None else _usdc(escrow_usdc, "escrow_usdc")
        if self.escrow_usdc is not None and self.escrow_usdc <= 0:
            raise ValueError("escrow_usdc must be more than 0 (or None: the whole budget)")
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or not 1 <= ttl_seconds <= 172800:
            raise ValueError("ttl_seconds must be a whole number of seconds from 1 to 172800")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
        self.url = url.rstrip("/")
        self.transport = transport
        self.ttl_seconds = ttl_seconds
        self.retries = max(0, int(retries))
        self.max_retry_wait_s = float(max_retry_wait_s)
        self.settle_timeout_s = float(settle_timeout_s)
        self._wallet = wallet
        self._timeout = timeout
        self._http = _Http()
        self._key = uuid.uuid4().hex  # this session's Idempotency-Keys: buyer-<key>-…
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._open_lock = threading.Lock()  # one escrow opened at a time
        self._escrows: list[_EscrowRecord] = []
        self._current: _EscrowRecord | None = None
        self._locked = Decimal("0.000000")
        self._opens = 0
        self._last_dry: PaymentError | None = None
        self._in_flight = 0
        self._refused = 0
        self._unknown = 0
        self._closing = False
        self._statement: Statement | None = None
        self._route = _Route(self._http, self.url, timeout)
        self._gradio_api = _GradioApi(self._http, self.url, timeout)
        self._gradio_client = _GradioClient(url) if transport == "gradio_client" else None

        try:
            self.pricing = _read_pricing(self._http, self.url)  # nothing is spent before the price is known
        except BaseException:
            self._http.close()
            raise
        self.seller_id = self.pricing.seller_id
        headline = self.pricing.price_per_call
        if self.max_price_usdc is not None and headline is not None and headline > self.max_price_usdc:
            self._http.close()
            raise PriceTooHigh(
                f"{self.url} charges {_fmt(headline)} USDC per call, above max_price_usdc "
                f"{_fmt(self.max_price_usdc)}; nothing was spent.",
                price_usdc=headline, max_price_usdc=self.max_price_usdc, charged=False,
            )
        space_api = (self.pricing.escrow_api or "").rstrip("/")
        if space_api and space_api != wallet.escrow_api:
            log.warning("%s is paid on the escrow service at %s, but this wallet is on %s: its escrows may be "
                        "refused as not found", self.url, space_api, wallet.escrow_api)

    # -- reading ----------------------------------------------------------------------

    @property
    def escrow_id(self) -> str | None:
        """The escrow calls are paid from now (the last one opened; None before the first call)."""
        with self._lock:
            return self._escrows[-1].escrow_id if self._escrows else None

    @property
    def escrow_ids(self) -> list[str]:
        """Every escrow this session opened, oldest first."""
        with self._lock:
            return [e.escrow_id for e in self._escrows]

    @property
    def spent_usdc(self) -> Decimal:
        """The sum of the receipts' ``charged_usdc`` so far."""
        with self._lock:
            return sum((e.charged for e in self._escrows), Decimal("0.000000"))

    @property
    def locked_usdc(self) -> Decimal:
        """The sum of the amounts of the escrows opened (never above ``budget_usdc``)."""
        with self._lock:
            return self._locked

    @property
    def statement(self) -> Statement | None:
        """The closing statement (None until the session is closed)."""
        return self._statement

    def price_usdc(self, name: str) -> Decimal | None:
        """What one call of ``name`` costs according to the Space's pricing (None if it does not say)."""
        return self.pricing.function(name.lstrip("/")).price

    # -- calling ----------------------------------------------------------------------

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, Receipt | None]:
        """Call the Space's paid function ``name``; ``(result, receipt)``, or a typed ``PaymentError``."""
        fn = self.pricing.function(name.lstrip("/"))
        self._check_price(fn)
        send = self._transport_for(fn)
        with self._lock:
            if self._closing:
                raise RuntimeError("this SpaceSession is closed")
            self._in_flight += 1
        try:
            return self._call(fn, send, args, kwargs)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._idle.notify_all()

    def _call(self, fn: _Function, send: Any, args: tuple, kwargs: dict) -> tuple[Any, Receipt | None]:
        retries = self.retries
        while True:
            escrow = self._escrow_for(fn.price)
            try:
                result, raw_receipt = send(fn, args, kwargs, escrow.escrow_id)
            except _DRY as exc:
                self._run_dry(escrow, exc)
                continue
            except ServiceUnavailable as exc:
                if exc.charged is False and retries > 0:
                    retries -= 1
                    wait = exc.retry_after if exc.retry_after is not None else 1.0
                    time.sleep(min(wait, self.max_retry_wait_s))
                    continue
                self._count_failure(escrow, exc)
                raise
            except PaymentError as exc:
                self._count_failure(escrow, exc)
                raise
            if raw_receipt is None:  # the Space sent no receipt: what it charged is unknown
                self._count_failure(escrow, None)
                return result, None
            receipt = Receipt._from_dict(raw_receipt, escrow.escrow_id)
            with self._lock:
                record = next((e for e in self._escrows if e.escrow_id == receipt.escrow_id), escrow)
                record.calls += 1
                record.charged += receipt.charged_usdc
            return result, receipt

    def _check_price(self, fn: _Function) -> None:
        if self.max_price_usdc is None:
            return
        if fn.price is None or fn.price > self.max_price_usdc:
            what = "does not say what it costs" if fn.price is None else f"costs {_fmt(fn.price)} USDC"
            raise PriceTooHigh(
                f"{fn.name} on {self.url} {what}; max_price_usdc is {_fmt(self.max_price_usdc)}. Nothing was spent.",
                price_usdc=fn.price, max_price_usdc=self.max_price_usdc, charged=False,
            )

    def _transport_for(self, fn: _Function) -> Any:
        if self._gradio_client is not None:
            return self._gradio_client.call
        if self.transport == "gradio_api" or (self.transport == "auto" and not fn.route):
            return self._gradio_api.call
        if not fn.route:
            raise ValueError(f"{self.url}'s pricing lists no plain route for {fn.name}; use transport='auto'")
        return self._route.call

    def _count_failure(self, escrow: _EscrowRecord, exc: PaymentError | None) -> None:
        with self._lock:
            if exc is not None and exc.charged is False:
                self._refused += 1
            else:
                self._unknown += 1
                escrow.unknown += 1

    # -- escrows ----------------------------------------------------------------------

    def _escrow_for(self, price: Decimal | None) -> _EscrowRecord:
        """The escrow to pay from: the current one, else a new one if the budget can pay for this call."""
        with self._lock:
            if self._current is not None:
                return self._current
        with self._open_lock:
            with self._lock:
                if self._current is not None:
                    return self._current
                left = self.budget_usdc - self._locked
                amount = min(self.escrow_usdc or self.budget_usdc, left)
                if amount <= 0 or (price is not None and amount < price):
                    cost = "" if price is None else f" of {_fmt(price)} USDC"
                    raise BudgetExhausted(
                        f"The budget of {_fmt(self.budget_usdc)} USDC for {self.url} is used up: "
                        f"{_fmt(self._locked)} USDC is locked in escrows, {_fmt(left)} USDC is left, "
                        f"too little for a call{cost}. Nothing was sent.",
                        budget_usdc=self.budget_usdc, locked_usdc=self._locked, charged=False,
                    ) from self._last_dry
                self._locked += amount  # counted before it is sent: never more than the budget, whatever happens
                self._opens += 1
                key = f"buyer-{self._key}-escrow-{self._opens}"
            try:
                escrow = self._wallet.open_escrow(
                    self.seller_id, amount, ttl_seconds=self.ttl_seconds,
                    description=f"buyer session for {self.url}"[:200], idempotency_key=key,
                )
            except EscrowServiceError as exc:
                if exc.charged is False:  # refused: nothing was locked
                    with self._lock:
                        self._locked -= amount
                raise
            record = _EscrowRecord(escrow["id"], amount)
            log.info("opened escrow %s of %s USDC for %s", record.escrow_id, _fmt(amount), self.url)
            with self._lock:
                self._escrows.append(record)
                self._current = record
            return record

    def _run_dry(self, escrow: _EscrowRecord, exc: PaymentError) -> None:
        with self._lock:
            self._last_dry = exc
            if self._current is escrow:
                self._current = None
                log.info("escrow %s can pay no more (%s); the next call opens another if the budget allows",
                         escrow.escrow_id, exc.code)

    # -- closing ----------------------------------------------------------------------

    def close(self, settle_timeout_s: float | None = None) -> Statement:
        """Wait for running calls and the Space's captures, release the rest of every escrow; the Statement."""
        with self._lock:
            if self._statement is not None:
                return self._statement
            self._closing = True
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=self._timeout[1] + 10)
            escrows = list(self._escrows)
        timeout = self.settle_timeout_s if settle_timeout_s is None else settle_timeout_s
        deadline = time.monotonic() + timeout
        entries = tuple(self._settle(record, deadline) for record in escrows)
        self._statement = self._make_statement(entries)
        self._http.close()
        if self._gradio_client is not None:
            self._gradio_client.close()
        return self._statement

    def refresh_statement(self) -> Statement:
        """The statement as the escrow service sees it now (e.g. once the Space's leases have closed)."""
        with self._lock:
            escrows = list(self._escrows)
            released = {e.escrow_id: e.released for e in self._statement.escrows} if self._statement else {}
            notes = {e.escrow_id: e.note for e in self._statement.escrows} if self._statement else {}
        entries = []
        for record in escrows:
            try:
                escrow = self._wallet.escrow(record.escrow_id)
            except EscrowServiceError as exc:
                escrow = None
                notes[record.escrow_id] = str(exc)
            note = notes.get(record.escrow_id, "")
            entries.append(_entry(record, escrow, released.get(record.escrow_id, False), note))
        statement = self._make_statement(tuple(entries))
        if self._statement is not None:
            self._statement = statement
        return statement

    def _settle(self, record: _EscrowRecord, deadline: float) -> EscrowStatement:
        """Wait until the escrow service captured what the receipts say, then release the rest."""
        try:
            escrow = self._wallet.escrow(record.escrow_id)
            while (escrow["status"] == "active" and escrow["spent_usdc"] < record.charged
                   and time.monotonic() < deadline):
                time.sleep(_POLL_S)
                escrow = self._wallet.escrow(record.escrow_id)
            if escrow["status"] != "active":
                return _entry(record, escrow, True, "")
            if escrow["spent_usdc"] < record.charged:
                note = (f"not released: the service has captured {_fmt(escrow['spent_usdc'])} of the "
                        f"{_fmt(record.charged)} USDC receipts say; it refunds itself at expiry, or wallet.release()")
                log.warning("escrow %s %s", record.escrow_id, note)
                return _entry(record, escrow, False, note)
            released = self._wallet.release(record.escrow_id,
                                            idempotency_key=f"buyer-{self._key}-release-{record.escrow_id}")
            return _entry(record, released, True, "")
        except EscrowServiceError as exc:
            log.warning("escrow %s could not be settled: %s", record.escrow_id, exc)
            return _entry(record, None, False, f"not released: {exc}")

    def _make_statement(self, entries: tuple[EscrowStatement, ...]) -> Statement:
        with self._lock:
            calls = sum(e.calls for e in self._escrows)
            refused, unknown = self._refused, self._unknown
        return Statement(self.url, self.seller_id, self.budget_usdc, calls, refused, unknown, entries)

    def __enter__(self) -> SpaceSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"SpaceSession({self.url!r}, budget_usdc={_fmt(self.budget_usdc)}, "
                f"locked_usdc={_fmt(self.locked_usdc)}, spent_usdc={_fmt(self.spent_usdc)})")


def _entry(record: _EscrowRecord, escrow: dict[str, Any] | None, released: bool, note: str) -> EscrowStatement:
    zero = Decimal("0.000000")
    escrow = escrow or {}

    def money(name: str) -> Decimal:
        value = escrow.get(name)
        return zero if value is None else value

    return EscrowStatement(
        escrow_id=record.escrow_id,
        status=str(escrow.get("status") or "unknown"),
        amount_usdc=record.amount,
        calls=record.calls,
        charged_usdc=record.charged,
        captured_usdc=money("spent_usdc"),
        held_usdc=money("held_usdc"),
        remaining_usdc=money("remaining_usdc"),
        refunded_usdc=money("refunded_usdc"),
        released=released,
        note=note,
    )
