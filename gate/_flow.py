"""One paid call, written once: check -> reserve -> run -> settle, or void, or charge what was delivered.

``PaidFunction`` is a function with its price, built once when it is decorated;
``Run`` is one call of it with money reserved. The four drivers below
(``run_call``, ``run_call_async``, ``run_stream``,
``run_stream_async``) are the only code that
runs a paid function, and they differ only in how they wait: every decision
(what a failure, a cancellation or an abandoned stream costs) is a method of
``Run``. The adapters (``gate._gradio``, ``gate._asgi``) turn framework
requests into ``PaidFunction.prepare`` and the drivers' results into
framework answers; they decide nothing about money.

What each ending costs the buyer:
- the function returned (or a stream ended after yielding): its price, settled
  before the result is handed out; a result that cannot be settled is withheld;
- the function raised: nothing (voided), whatever a stream yielded before;
- cancelled, or a stream stopped by its consumer: a value call is voided (its
  result never left); a stream that yielded is charged for its last item, which
  was handed out, and one that yielded nothing is voided.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import anyio.to_thread
import gradio as gr

from ._service import EscrowService
from ._settlement import Receipt, Reservation, Settlement
from .errors import FunctionFailed, GateError, InvalidInput, InvalidEscrowId, MissingEscrowId, ServiceUnavailable
from .money import round_up
from .pricing import Price

__all__ = [
    "Call", "Cashier", "PaidFunction", "Run", "run_call", "run_call_async", "run_stream", "run_stream_async",
    "validate_escrow_id",
]

log = logging.getLogger("gate")

NOTHING = object()  # a stream's last item before it yielded any
_ESCROW_ID = re.compile(r"esc_[A-Za-z0-9]{20,40}", re.ASCII)
_MAX_ID_LENGTH = 44


def validate_escrow_id(value: object) -> str:
    """The escrow ID if it is ``esc_`` + 20–40 ASCII letters/digits; else InvalidEscrowId."""
    if value is None or value == "":
        raise MissingEscrowId()
    if not isinstance(value, str) or len(value) > _MAX_ID_LENGTH or not _ESCROW_ID.fullmatch(value):
        raise InvalidEscrowId()
    return value


@dataclass(frozen=True)
class Call:
    """One call's checked inputs: the function's arguments, the escrow paying, its maximum price."""

    escrow_id: str
    args: tuple
    kwargs: dict
    maximum: Decimal
    client: str | None = None  # the caller's address, as the server saw it (gate._limits)


class Cashier:
    """The gate's money side as a paid call sees it: refuse or reserve, settle, void, later."""

    def __init__(self, service: EscrowService, settlement: Settlement, timer: Callable[[], float] = time.monotonic):
        self.service, self.settlement, self.timer = service, settlement, timer
        self.stats = service.stats
        self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gate-settle")
        self.closed = False

    def reserve(self, call: Call, reason: str, longest_call_s: float | None) -> Reservation:
        """Refuse an escrow that cannot pay (not charged), else reserve the call's maximum on it."""
        started = self.timer()
        try:
            if self.closed:
                raise ServiceUnavailable("This Space is shutting down")
            facts, fresh = self.service.usable_escrow(call.escrow_id, call.client)
            return self.settlement.reserve(
                call.escrow_id, call.maximum, reason, fresh=fresh, expires_at=facts.expires_at,
                longest_call_s=longest_call_s,
            )
        except GateError as refusal:
            self.stats.ended("refused", refusal.code)
            raise
        finally:
            self.stats.timed("reserve", self.timer() - started)

    def later(self, job: Callable, *args: Any) -> None:
        """Run a settlement step without blocking the caller (abandoned streams, cancelled tasks)."""
        try:
            self._background.submit(job, *args)
        except RuntimeError:  # shut down: run it here, before the settlement closes
            job(*args)

    def close(self) -> None:
        """Refuse new calls, finish the background steps, then settle or void what is still open."""
        self.closed = True
        self._background.shutdown(wait=True)
        self.settlement.close()
        self.service.client.close()


class PaidFunction:
    """A function sold by a gate at a price; adapters call ``prepare`` then a driver."""

    def __init__(
        self,
        cashier: Cashier,
        fn: Callable,
        price: Price,
        reason: str,
        check: Callable[..., Any] | None,
        receipt_extra: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None,
        deliverable: Callable[[Any], Any] | None = None,
    ):
        self.cashier, self.fn, self.price, self.reason = cashier, fn, price, reason
        self._check, self._receipt_extra = check, receipt_extra
        # The adapter's form of an output as it is handed out (the ASGI one: JSON). Applied before the charge, as
        # part of the call: an output that cannot be handed out fails the call, and a failed call is not charged.
        self.deliverable = deliverable or (lambda outputs: outputs)
        self.streams = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)

    def prepare(self, fn_args: tuple, fn_kwargs: dict, escrow_id: Any, client: str | None) -> Call:
        """Everything before the network: the ID's form, the Space's input check, the maximum price."""
        try:
            return self._prepare(fn_args, fn_kwargs, escrow_id, client)
        except GateError as refusal:
            self.cashier.stats.ended("refused", refusal.code)
            raise

    def _prepare(self, fn_args: tuple, fn_kwargs: dict, escrow_id: Any, client: str | None) -> Call:
        escrow_id = validate_escrow_id(escrow_id)
        if self._check is not None:
            try:
                self._check(*fn_args, **fn_kwargs)
            except GateError:
                raise
            except gr.Error as exc:
                raise InvalidInput(str(exc.message)) from exc
            except ValueError as exc:
                raise InvalidInput(str(exc)) from exc
            except Exception as exc:
                log.error("the input check of the %s failed", self.reason, exc_info=exc)
                raise FunctionFailed(self.reason, "The input check failed") from exc
        try:
            maximum = self.price.max_price(fn_args, fn_kwargs)
        except Exception as exc:
            log.error("pricing the call failed", exc_info=exc)
            raise FunctionFailed(self.reason, "The call could not be priced") from exc
        return Call(escrow_id, fn_args, fn_kwargs, maximum, client)

    def begin(self, call: Call) -> Run:
        """Reserve the call's maximum (blocking); a GateError refuses it, not charged."""
        reservation = self.cashier.reserve(call, self.reason, self.price.longest_call_s)
        return Run(self, call, reservation, self.price.start())

    async def begin_async(self, call: Call) -> Run:
        """``begin`` in a worker thread; if the task is cancelled meanwhile, the reservation is voided."""
        made: list[Run] = []

        def begin() -> None:
            made.append(self.begin(call))

        try:
            await anyio.to_thread.run_sync(begin)
        except BaseException:
            if made:
                made[0].interrupted()
            raise
        return made[0]

    def receipt_dict(self, receipt: Receipt) -> dict[str, Any]:
        """The receipt as the buyer sees it: ``Receipt.as_dict`` merged over ``receipt_extra``."""
        extra = self._receipt_extra() if callable(self._receipt_extra) else self._receipt_extra
        return receipt.as_dict(extra)


class Run:
    """One call with its maximum reserved; each method is one way the call can end."""

    def __init__(self, paid: PaidFunction, call: Call, reservation: Reservation, started: Any):
        self.paid, self.call, self.reservation, self.started = paid, call, reservation, started
        self.last: Any = NOTHING  # a stream's latest item (handed out by the time the next is asked for)

    def execute(self) -> Any:
        """Start the function: a value, a coroutine, or an iterator of items."""
        return self.paid.fn(*self.call.args, **self.call.kwargs)

    def delivered(self, item: Any) -> Any:
        """A stream's item in the form it is handed out; from now on the stream is charged for it if abandoned."""
        self.last = self.paid.deliverable(item)
        return self.last

    def settle(self, outputs: Any, outcome: str = "paid") -> Receipt:
        """Charge what the call cost (blocking); SettlementFailed withholds the result, not charged."""
        cashier = self.paid.cashier
        try:
            charge = self.paid.price.charge(self.call.args, self.call.kwargs, outputs, self.started)
            actual = charge.amount
            if not isinstance(actual, Decimal) or not actual.is_finite() or actual < 0:
                raise TypeError(f"{type(self.paid.price).__name__}.charge must return a non-negative Decimal amount")
        except Exception as exc:
            cashier.settlement.void(self.reservation)
            cashier.stats.ended("failed")
            log.error("pricing the result failed", exc_info=exc)
            raise FunctionFailed("call", "The call could not be priced") from exc
        started = cashier.timer()
        try:
            receipt = cashier.settlement.settle(self.reservation, min(round_up(actual), self.call.maximum))
        except GateError as refusal:
            cashier.stats.ended("withheld", refusal.code)
            raise
        finally:
            cashier.stats.timed("settle", cashier.timer() - started)
        if charge.usage:
            receipt = dataclasses.replace(receipt, usage=charge.usage)
        cashier.stats.charged(outcome, receipt, self.paid.receipt_dict)
        return receipt

    def failed(self, exc: BaseException) -> NoReturn:
        """The function raised (blocking): void, then raise what the buyer sees. Not charged."""
        self.paid.cashier.settlement.void(self.reservation)
        self.paid.cashier.stats.ended("failed")
        if isinstance(exc, GateError):
            raise exc
        if isinstance(exc, gr.Error):
            raise FunctionFailed(self.paid.reason, str(exc.message)) from exc
        log.error("the gated function failed (%s); the buyer was not charged", self.paid.reason, exc_info=exc)
        raise FunctionFailed(self.paid.reason, f"The {self.paid.reason} failed") from exc

    def interrupted(self) -> None:
        """Cancelled, or stopped by its consumer (never blocks): a stream is charged for what it handed
        out, anything else is voided."""
        cashier = self.paid.cashier
        if self.last is NOTHING:
            cashier.stats.ended("cancelled")
            cashier.later(cashier.settlement.void, self.reservation)
            return

        def charge_delivered() -> None:
            try:
                self.settle(self.last, outcome="abandoned")
            except GateError as exc:
                log.warning("an abandoned stream's delivered output could not be charged: %s", exc.sentence)

        cashier.later(charge_delivered)

    def ended(self) -> Receipt | None:
        """A stream was exhausted (blocking): charge its last item, or void if it yielded none."""
        if self.last is NOTHING:
            self.paid.cashier.settlement.void(self.reservation)
            self.paid.cashier.stats.ended("empty")
            return None
        return self.settle(self.last)


# -- the drivers: the only code that runs a paid function ---------------------------------


def run_call(paid: PaidFunction, call: Call) -> tuple[Any, Receipt]:
    """A plain function: its outputs and their receipt."""
    run = paid.begin(call)
    try:
        outputs = paid.deliverable(run.execute())
    except Exception as exc:
        run.failed(exc)
    except BaseException:
        run.interrupted()
        raise
    return outputs, run.settle(outputs)


async def run_call_async(paid: PaidFunction, call: Call) -> tuple[Any, Receipt]:
    """A coroutine function: its outputs and their receipt; blocking steps run in worker threads."""
    run = await paid.begin_async(call)
    try:
        outputs = paid.deliverable(await run.execute())
    except Exception as exc:
        await anyio.to_thread.run_sync(run.failed, exc)
    except BaseException:
        run.interrupted()
        raise
    return outputs, await anyio.to_thread.run_sync(run.settle, outputs)


def run_stream(run: Run) -> Iterator[tuple[Any, Receipt | None]]:
    """A generator function, already begun: ``(item, None)`` per item, then ``(last item, receipt)``."""
    items = None
    try:
        items = run.execute()
        for item in items:
            yield run.delivered(item), None
    except Exception as exc:
        run.failed(exc)
    except BaseException:  # GeneratorExit (abandoned by its consumer), KeyboardInterrupt
        run.interrupted()
        raise
    finally:
        if items is not None:
            items.close()
    receipt = run.ended()
    if receipt is not None:
        yield run.last, receipt


async def run_stream_async(run: Run) -> AsyncIterator[tuple[Any, Receipt | None]]:
    """An async generator function, already begun: as ``run_stream``."""
    items = None
    try:
        items = run.execute()
        async for item in items:
            yield run.delivered(item), None
    except Exception as exc:
        await anyio.to_thread.run_sync(run.failed, exc)
    except BaseException:  # GeneratorExit (abandoned), cancellation
        run.interrupted()
        raise
    finally:
        if items is not None:
            await items.aclose()
    receipt = await anyio.to_thread.run_sync(run.ended)
    if receipt is not None:
        yield run.last, receipt
