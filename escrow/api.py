"""The contract's HTTP routes (shared/escrow-api.md) on a Store; mountable under any prefix."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from decimal import Decimal
from email.utils import formatdate
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .amounts import MICRO_PER_USDC, parse_amount
from .errors import ApiError, invalid_amount, invalid_request
from .jsonio import check_plain_json, dumps, parse_body
from .store import (
    ESCROW_ID,
    ESCROW_TTL_MAX_S,
    FAUCET_DAILY_MICRO,
    HOLD_ID,
    HOLD_TTL_DEFAULT_S,
    Idempotency,
    Outcome,
    Store,
)

MAX_BODY_BYTES = 64 * 1024
MAX_TEXT = 4096
_RAW_PATH_ALLOWED = re.compile(rb"[A-Za-z0-9_/\-]*")
OPENAPI_ROUTE = "/openapi.json"
# The contract as this service implements it, written by hand (the routes read raw bodies, so FastAPI's
# generated schema would say nothing); tests/escrow/test_openapi.py keeps its paths equal to the routes.
_OPENAPI: dict = json.loads(Path(__file__).with_name("openapi.json").read_text(encoding="utf-8"))
_HOLDS_PATH_PREFIX = "/escrow/{escrow_id}/holds"


def openapi_document(*, holds: bool = True) -> dict:
    """The OpenAPI 3.1 document of create_api(store, holds=holds): a fresh copy, without the holds paths if asked."""
    document = copy.deepcopy(_OPENAPI)
    if not holds:
        document["paths"] = {
            path: item for path, item in document["paths"].items() if not path.startswith(_HOLDS_PATH_PREFIX)
        }
    return document


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """The contract's error JSON."""
    return Response(
        dumps({"error": {"code": code, "message": message}}), status, headers=headers, media_type="application/json"
    )


def _outcome_response(outcome: Outcome) -> Response:
    return Response(outcome.body, outcome.status, headers=outcome.headers or None, media_type="application/json")


# ---------------------------------------------------------------- ASGI middleware


class RawPathGuard:
    """404 for any raw path with a percent-escape, an odd character or a malformed ID, before routing or the DB."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._acceptable(scope):
            await error_response(404, "not_found", "No such resource.")(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _acceptable(scope: Scope) -> bool:
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        root = scope.get("root_path", "").encode("utf-8")
        relative = raw[len(root):] if root and raw.startswith(root) else raw
        if relative == OPENAPI_ROUTE.encode("ascii"):  # the one path with a '.'
            return True
        if not _RAW_PATH_ALLOWED.fullmatch(relative):
            return False
        segments = relative.decode("ascii").split("/")[1:]
        if segments and segments[0] == "escrow" and len(segments) > 1:
            if not ESCROW_ID.fullmatch(segments[1]):
                return False
            if len(segments) > 3 and segments[2] == "holds" and not HOLD_ID.fullmatch(segments[3]):
                return False
        return True


class SimulatedLatency:
    """Sleep `latency_ms` before each request (without blocking the loop): a stand-in for a remote service."""

    def __init__(self, app: ASGIApp, latency_ms: float) -> None:
        self.app = app
        self.latency_s = latency_ms / 1000

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await anyio.sleep(self.latency_s)
        await self.app(scope, receive, send)


class ClockDateHeader:
    """Set each answer's ``Date`` header from the store's clock (for a server whose own Date is off, e.g. a FakeClock).

    Gates read ``Date`` to learn how far their clock is from the service's (the expiries are on the service's).
    Use it with the HTTP server's own Date header turned off (uvicorn ``date_header=False``).
    """

    def __init__(self, app: ASGIApp, clock: Any) -> None:
        self.app = app
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_date(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                headers.append((b"date", formatdate(self.clock.now(), usegmt=True).encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_date)


# ---------------------------------------------------------------- request parsing


def _bearer(request: Request) -> str | None:
    values = request.headers.getlist("authorization")
    if len(values) != 1:
        return None
    parts = values[0].split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1]


def _idempotency(request: Request, route: str, body: dict) -> Idempotency | None:
    values = request.headers.getlist("idempotency-key")
    if not values:
        return None
    if len(values) > 1:
        raise invalid_request("Send at most one Idempotency-Key header.")
    key = values[0]
    if not 1 <= len(key) <= 128 or any(not 0x20 <= ord(ch) <= 0x7E for ch in key):
        raise invalid_request("Idempotency-Key must be 1-128 printable ASCII characters.")
    canonical = json.dumps(body, sort_keys=True, default=str, separators=(",", ":"))
    return Idempotency(key, route, hashlib.sha256(canonical.encode()).hexdigest())


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, "invalid_request", "The request body is over 64 KiB.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "invalid_request", "The request body is over 64 KiB.")
        chunks.append(chunk)
    return b"".join(chunks)


def _integer(body: dict, field: str, low: int, high: int, default: int | None = None) -> int:
    value = body.get(field)
    if value is None:
        if default is None:
            raise invalid_request(f"{field} is required.")
        return default
    if isinstance(value, bool) or not isinstance(value, Decimal) or not value.is_finite() or value != value.to_integral_value():
        raise invalid_request(f"{field} must be a whole number.")
    if not low <= value <= high:
        raise invalid_request(f"{field} must be between {low} and {high}.")
    return int(value)


def _text(body: dict, field: str, *, required: bool = False, max_len: int = MAX_TEXT) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise invalid_request(f"{field} is required.")
        return None
    if not isinstance(value, str) or len(value) > max_len or (required and not value):
        raise invalid_request(f"{field} must be a string of at most {max_len} characters.")
    return value


def _boolean(body: dict, field: str) -> bool:
    value = body.get(field, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid_request(f"{field} must be true or false.")
    return value


def _amount(body: dict, *, allow_zero: bool = False) -> int:
    if "amount_usdc" not in body:
        raise invalid_amount("amount_usdc is required.")
    return parse_amount(body["amount_usdc"], allow_zero=allow_zero)


def _object(body: dict, field: str) -> dict | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_request(f"{field} must be a JSON object.")
    check_plain_json(value, field)
    return value


_SIGNED_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def _number(body: dict, field: str) -> Decimal:
    value = body.get(field)
    if isinstance(value, str) and _SIGNED_DECIMAL.fullmatch(value):
        value = Decimal(value)
    if isinstance(value, bool) or not isinstance(value, Decimal) or not value.is_finite():
        raise invalid_request(f"{field} must be a finite number.")
    return value


def _release_condition(body: dict) -> dict | None:
    condition = _object(body, "release_condition")
    if condition is None:
        return None
    if condition.get("type") != "benchmark":
        raise invalid_request("release_condition.type must be 'benchmark'.")
    metric = condition.get("metric")
    if not isinstance(metric, str) or not metric or len(metric) > 200:
        raise invalid_request("release_condition.metric must be a non-empty string.")
    threshold = _number(condition, "threshold")
    higher = condition.get("higher_is_better", True)
    if not isinstance(higher, bool):
        raise invalid_request("release_condition.higher_is_better must be true or false.")
    return {"type": "benchmark", "metric": metric, "threshold": threshold, "higher_is_better": higher}


# ---------------------------------------------------------------- the app


def create_api(store: Store, *, holds: bool = True, latency_ms: float = 0) -> FastAPI:
    """The contract's routes at the app's root; `holds=False` leaves the holds routes out (404)."""
    api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    api.router.redirect_slashes = False
    openapi_body = dumps(openapi_document(holds=holds))

    async def authenticate(request: Request) -> str:
        key = _bearer(request)
        if key is None or (store.cached_agent(key) is None and not await run_in_threadpool(store.is_known_key, key)):
            raise ApiError(401, "unauthorized", "A valid API key is required (Authorization: Bearer <key>).")
        return key

    async def post_input(request: Request, route: str) -> tuple[str, dict, Idempotency | None]:
        key = await authenticate(request)
        body = parse_body(await _read_body(request))
        return key, body, _idempotency(request, route, body)

    async def run(method: Any, *args: Any, **kwargs: Any) -> Response:
        return _outcome_response(await run_in_threadpool(method, *args, **kwargs))

    @api.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.headers or None)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(404, "not_found", "No such resource.")
        if exc.status_code == 405:
            return error_response(405, "method_not_allowed", "This method is not allowed here.", exc.headers)
        return error_response(exc.status_code, "invalid_request", "The request could not be handled.", exc.headers)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, __: RequestValidationError) -> Response:
        return error_response(422, "invalid_request", "The request is malformed.")

    @api.exception_handler(Exception)
    async def _internal_error(_: Request, __: Exception) -> Response:
        return error_response(500, "internal_error", "The escrow service failed; nothing was applied.")

    @api.get(OPENAPI_ROUTE)
    async def openapi() -> Response:
        return Response(openapi_body, media_type="application/json")

    @api.post("/agents")
    async def register(request: Request) -> Response:
        body = parse_body(await _read_body(request))
        _idempotency(request, "POST /agents", body)  # validated; never replayed (see README: it would leak a key)
        name = _text(body, "name", max_len=200)
        referred_by = _text(body, "referred_by", max_len=200)
        return await run(store.register, name, referred_by)

    @api.post("/faucet")
    async def faucet(request: Request) -> Response:
        key, body, idem = await post_input(request, "POST /faucet")
        amount = _amount(body) if body.get("amount_usdc") is not None else None
        if amount is not None and amount > FAUCET_DAILY_MICRO:
            raise invalid_amount(f"The faucet gives at most {FAUCET_DAILY_MICRO // MICRO_PER_USDC} USDC a day.")
        return await run(store.faucet, key, amount, idem)

    @api.get("/me")
    async def me(request: Request) -> Response:
        return await run(store.me, await authenticate(request))

    @api.post("/escrow")
    async def create_escrow(request: Request) -> Response:
        key, body, idem = await post_input(request, "POST /escrow")
        seller_id = _text(body, "seller_id", required=True, max_len=200)
        amount = _amount(body)
        ttl = _integer(body, "ttl_seconds", 1, ESCROW_TTL_MAX_S)
        description = _text(body, "description") or ""
        meta = _object(body, "meta") or {}
        condition = _release_condition(body)
        return await run(
            store.create_escrow, key, seller_id=seller_id, amount_micro=amount, ttl_seconds=ttl,
            description=description, meta=meta, release_condition=condition, idempotency=idem,
        )

    @api.get("/escrow/{escrow_id}")
    async def get_escrow(request: Request, escrow_id: str) -> Response:
        return await run(store.get_escrow, await authenticate(request), escrow_id)

    if holds:

        @api.post("/escrow/{escrow_id}/holds")
        async def create_hold(request: Request, escrow_id: str) -> Response:
            key, body, idem = await post_input(request, f"POST /escrow/{escrow_id}/holds")
            amount = _amount(body)
            ttl = _integer(body, "ttl_seconds", 1, ESCROW_TTL_MAX_S, default=HOLD_TTL_DEFAULT_S)
            return await run(store.create_hold, key, escrow_id, amount_micro=amount, ttl_seconds=ttl, idempotency=idem)

        @api.post("/escrow/{escrow_id}/holds/{hold_id}/capture")
        async def capture(request: Request, escrow_id: str, hold_id: str) -> Response:
            key, body, idem = await post_input(request, f"POST /escrow/{escrow_id}/holds/{hold_id}/capture")
            final = _boolean(body, "final")
            amount = _amount(body, allow_zero=final)
            return await run(
                store.capture, key, escrow_id, hold_id, amount_micro=amount, final=final, idempotency=idem
            )

        @api.post("/escrow/{escrow_id}/holds/{hold_id}/void")
        async def void(request: Request, escrow_id: str, hold_id: str) -> Response:
            key, _, idem = await post_input(request, f"POST /escrow/{escrow_id}/holds/{hold_id}/void")
            return await run(store.capture, key, escrow_id, hold_id, amount_micro=0, final=True, idempotency=idem)

    @api.post("/escrow/{escrow_id}/deduct")
    async def deduct(request: Request, escrow_id: str) -> Response:
        key, body, idem = await post_input(request, f"POST /escrow/{escrow_id}/deduct")
        amount = _amount(body)
        reason = _text(body, "reason")
        return await run(store.deduct, key, escrow_id, amount_micro=amount, reason=reason, idempotency=idem)

    @api.post("/escrow/{escrow_id}/release")
    async def release(request: Request, escrow_id: str) -> Response:
        key, body, idem = await post_input(request, f"POST /escrow/{escrow_id}/release")
        refund_remainder = _boolean(body, "refund_remainder")
        amount = _amount(body, allow_zero=refund_remainder)
        meta = _object(body, "meta")
        return await run(
            store.release, key, escrow_id, amount_micro=amount, refund_remainder=refund_remainder, meta=meta,
            idempotency=idem,
        )

    @api.post("/escrow/{escrow_id}/submit-result")
    async def submit_result(request: Request, escrow_id: str) -> Response:
        key, body, idem = await post_input(request, f"POST /escrow/{escrow_id}/submit-result")
        metric = _text(body, "metric", required=True, max_len=200)
        score = _number(body, "score")
        model_repo = _text(body, "model_repo", max_len=500)
        return await run(
            store.submit_result, key, escrow_id, metric=metric, score=score, model_repo=model_repo, idempotency=idem
        )

    api.add_middleware(RawPathGuard)
    if latency_ms > 0:
        api.add_middleware(SimulatedLatency, latency_ms=latency_ms)
    return api
