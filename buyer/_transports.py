"""How a call reaches a Space: its plain route, Gradio's HTTP API, or ``gradio_client``; and its pricing."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import requests

from ._http import SERVICE_TIMEOUT, _Http, _json, _never_sent, _retry_after
from ._money import _parse
from .errors import ChargeUnknown, InvalidInput, PaymentError, ServiceUnavailable, _gradio_error, _space_error

ESCROW_HEADER = "X-Escrow-Id"
_DEFAULT_RETRY_AFTER_S = 5.0  # a refusal that names no wait (Gradio's API has no headers): the gate's own 503 wait


@dataclass(frozen=True)
class _Function:
    """One paid function as the Space's pricing lists it."""

    name: str
    route: str | None  # "/v1/classify": a plain route exists
    api_name: str  # "/classify": Gradio's API name
    price: Decimal | None
    parameters: tuple[str, ...] | None


@dataclass(frozen=True)
class _Pricing:
    """A Space's pricing: who to pay, where, and what each function costs."""

    raw: dict[str, Any]
    seller_id: str
    escrow_api: str | None
    mode: str | None
    price_per_call: Decimal | None
    functions: dict[str, _Function]

    def function(self, name: str) -> _Function:
        listed = self.functions.get(name)
        if listed is not None:
            return listed
        return _Function(name, None, "/" + name, self.price_per_call, None)


def _read_pricing(http: _Http, url: str) -> _Pricing:
    """``GET <url>/v1/pricing``; where that route is absent, the free Gradio endpoint ``/pricing``."""
    try:
        answer = http.request("GET", url + "/v1/pricing", timeout=SERVICE_TIMEOUT)
        if answer.status_code in (404, 405):
            raw = _gradio_api_pricing(http, url)
        elif answer.status_code == 200 and isinstance(_json(answer, decimal=False), dict):
            raw = _json(answer, decimal=False)
        else:
            raise PaymentError(f"{url}/v1/pricing answered HTTP {answer.status_code}.", code="invalid_pricing")
    except requests.RequestException as exc:
        raise ServiceUnavailable(f"Could not read the pricing of {url} ({type(exc).__name__}); nothing was spent.",
                                 charged=False) from exc
    seller_id = raw.get("seller_id")
    if not isinstance(seller_id, str) or not seller_id.startswith("agent_"):
        raise PaymentError(f"The pricing of {url} names no seller_id: {raw!r}", code="invalid_pricing")
    functions = {}
    for name, info in (raw.get("functions") or {}).items():
        if isinstance(info, dict):
            params = info.get("parameters")
            functions[name] = _Function(
                name=name,
                route=info.get("route"),
                api_name=info.get("api_name") or "/" + name,
                price=_parse(info.get("price_usdc")),
                parameters=tuple(params) if isinstance(params, list) else None,
            )
    return _Pricing(raw, seller_id, raw.get("escrow_api"), raw.get("mode"), _parse(raw.get("price_per_call_usdc")),
                    functions)


def _gradio_api_pricing(http: _Http, url: str) -> dict[str, Any]:
    answer = http.request("POST", url + "/gradio_api/call/pricing", json={"data": []}, timeout=SERVICE_TIMEOUT)
    body = _json(answer, decimal=False)
    if answer.status_code != 200 or not isinstance(body, dict) or "event_id" not in body:
        raise PaymentError(f"{url} serves neither /v1/pricing nor Gradio's /pricing (HTTP {answer.status_code}).",
                           code="invalid_pricing")
    stream = http.request("GET", f"{url}/gradio_api/call/pricing/{body['event_id']}", timeout=SERVICE_TIMEOUT,
                          stream=True)
    with stream:
        event, data = _final_event(stream)
    if event != "complete" or not isinstance(data, list) or not data or not isinstance(data[0], dict):
        raise PaymentError(f"{url}'s /pricing did not answer its pricing ({event}: {data!r}).", code="invalid_pricing")
    return data[0]


def _final_event(response: requests.Response) -> tuple[str | None, Any]:
    """The last ``complete`` or ``error`` event of a Gradio event stream, with its data (JSON where it parses)."""
    event = None
    final: tuple[str | None, Any] = (None, None)  # the stream ended without either
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:") and event in ("complete", "error"):
            text = line[5:].strip()
            try:
                final = (event, json.loads(text))
            except ValueError:
                final = (event, text)
            break
    return final


def _split_outputs(data: Any) -> tuple[Any, Any]:
    """Gradio's outputs: the receipt is the last one; the result the one before (a tuple if several)."""
    if not isinstance(data, (list, tuple)) or len(data) < 2:
        return data, None
    *outputs, receipt = data
    return (outputs[0] if len(outputs) == 1 else tuple(outputs)), receipt


def _charge_unknown(url: str, escrow_id: str, exc: BaseException) -> ChargeUnknown:
    return ChargeUnknown(
        f"The connection to {url} was lost after the call was sent ({type(exc).__name__}): it may have been "
        f"charged to escrow {escrow_id}. It was not retried; the session's statement shows what was captured.",
        escrow_id=escrow_id,
    )


def _unreachable(url: str, escrow_id: str, exc: BaseException) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"Could not connect to {url} ({type(exc).__name__}); nothing was sent, so you were not charged.",
        escrow_id=escrow_id, charged=False, retry_after=1.0,
    )


def _bind(fn: _Function, names: list[str] | tuple[str, ...], args: tuple, kwargs: dict) -> dict[str, Any]:
    """Positional and named arguments as one mapping of parameter names (TypeError as Python would say)."""
    if len(args) > len(names):
        raise TypeError(f"{fn.name}() takes {len(names)} arguments ({', '.join(names)}) but {len(args)} were given")
    bound = dict(zip(names, args))
    for key, value in kwargs.items():
        if key in bound:
            raise TypeError(f"{fn.name}() got multiple values for argument {key!r}")
        bound[key] = value
    return bound


class _Route:
    """The Space's plain route: ``POST <url>/v1/<name>``, JSON body of named arguments, ``X-Escrow-Id``."""

    def __init__(self, http: _Http, url: str, timeout: Any) -> None:
        self.http, self.url, self.timeout = http, url, timeout

    def call(self, fn: _Function, args: tuple, kwargs: dict, escrow_id: str) -> tuple[Any, Any]:
        if args and fn.parameters is None:
            raise TypeError(f"the Space's pricing names no parameters for {fn.name}: pass them by name")
        body = _bind(fn, fn.parameters or (), args, kwargs)
        url = self.url + fn.route
        try:
            answer = self.http.request("POST", url, json=body, headers={ESCROW_HEADER: escrow_id},
                                       timeout=self.timeout, stream=True)
            with answer:
                if answer.status_code == 200 and answer.headers.get("content-type", "").startswith(
                        "application/x-ndjson"):
                    return _ndjson(answer, escrow_id)
                answer.content  # noqa: B018 - read it all inside the try: a drop while reading is after sending
        except requests.RequestException as exc:
            if _never_sent(exc):
                raise _unreachable(self.url, escrow_id, exc) from exc
            raise _charge_unknown(self.url, escrow_id, exc) from exc
        return _route_answer(answer, escrow_id)


def _route_answer(answer: requests.Response, escrow_id: str) -> tuple[Any, Any]:
    body = _json(answer, decimal=False)
    status = answer.status_code
    if status == 200:
        receipt_header = answer.headers.get("X-Payment-Receipt")
        if receipt_header is not None:  # the function answered a Response of its own
            return (body if body is not None else answer.text), json.loads(receipt_header)
        if isinstance(body, dict) and "receipt" in body and "result" in body:
            return body.get("result"), body["receipt"]
        raise PaymentError(f"HTTP 200 without a receipt from {answer.url}: the call may have been charged.",
                           code="unexpected_response", charged=None, status=status, escrow_id=escrow_id)
    error = body.get("error") if isinstance(body, dict) else None
    retry = _retry_after(answer, _DEFAULT_RETRY_AFTER_S) if status in (429, 503) else None
    if isinstance(error, dict):
        charged = error.get("charged")
        raise _space_error(
            error.get("code"), str(error.get("message") or ""), status=status, escrow_id=escrow_id,
            retry_after=retry, payment=body.get("payment"), charged=charged if isinstance(charged, bool) else None,
        )
    if status in (413, 422):  # FastAPI's own validation, or the Space's request limits: before anything ran
        detail = body.get("detail") if isinstance(body, dict) else None
        raise InvalidInput(f"The Space refused the input: {detail or answer.text[:300]}. You were not charged.",
                           status=status, escrow_id=escrow_id, charged=False)
    if status == 429:
        raise ServiceUnavailable("The Space is limiting requests; you were not charged.", code="rate_limited",
                                 status=status, escrow_id=escrow_id, retry_after=retry, charged=False)
    raise PaymentError(f"{answer.url} answered HTTP {status}: {answer.text[:300]!r}", code=f"http_{status}",
                       charged=None, status=status, escrow_id=escrow_id)


def _ndjson(answer: requests.Response, escrow_id: str) -> tuple[list, Any]:
    """A streamed result: every ``{"result": item}`` line, then its receipt (or its error)."""
    items: list[Any] = []
    for line in answer.iter_lines(decode_unicode=True):
        if not line.strip():
            continue
        record = json.loads(line)
        if "result" in record:
            items.append(record["result"])
        elif "receipt" in record:
            return items, record["receipt"]
        elif "error" in record:
            error = record["error"]
            raise _space_error(error.get("code"), str(error.get("message") or ""), escrow_id=escrow_id,
                               charged=error.get("charged") if isinstance(error.get("charged"), bool) else None)
    raise ChargeUnknown(f"The stream from {answer.url} ended without a receipt: it may have been charged.",
                        escrow_id=escrow_id)


class _GradioApi:
    """Gradio's HTTP API: ``POST <url>/gradio_api/call/<name>`` then its event stream."""

    def __init__(self, http: _Http, url: str, timeout: Any) -> None:
        self.http, self.url, self.timeout = http, url, timeout
        self._info: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def call(self, fn: _Function, args: tuple, kwargs: dict, escrow_id: str) -> tuple[Any, Any]:
        data = self._data(fn, args, kwargs, escrow_id)
        name = fn.api_name.lstrip("/")
        headers = {ESCROW_HEADER: escrow_id}
        try:
            answer = self.http.request("POST", f"{self.url}/gradio_api/call/{name}", json={"data": data},
                                       headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            if _never_sent(exc):
                raise _unreachable(self.url, escrow_id, exc) from exc
            raise _charge_unknown(self.url, escrow_id, exc) from exc
        body = _json(answer, decimal=False)
        if answer.status_code != 200 or not isinstance(body, dict) or "event_id" not in body:
            return _route_answer(answer, escrow_id)  # refused before it was queued: never charged
        try:
            stream = self.http.request("GET", f"{self.url}/gradio_api/call/{name}/{body['event_id']}",
                                       headers=headers, timeout=self.timeout, stream=True)
            with stream:
                event, data = _final_event(stream)
        except requests.RequestException as exc:
            raise _charge_unknown(self.url, escrow_id, exc) from exc
        if event == "complete":
            return _split_outputs(data)
        if event == "error":
            message = data.get("error") if isinstance(data, dict) else data
            error = _gradio_error(message, escrow_id=escrow_id)
            if isinstance(error, ServiceUnavailable):
                error.retry_after = _DEFAULT_RETRY_AFTER_S
            raise error
        raise ChargeUnknown(f"The event stream of {self.url}/gradio_api/call/{name} ended without a result: "
                            f"the call may have been charged to escrow {escrow_id}.", escrow_id=escrow_id)

    def _data(self, fn: _Function, args: tuple, kwargs: dict, escrow_id: str) -> list[Any]:
        if not kwargs:
            return [*args, escrow_id]
        params = self._parameters(fn)
        names = [p["parameter_name"] for p in params]
        bound = _bind(fn, names, args, {**kwargs, "escrow_id": escrow_id})
        missing = [p["parameter_name"] for p in params
                   if p["parameter_name"] not in bound and not p.get("parameter_has_default")]
        if missing:
            raise TypeError(f"{fn.name}() missing arguments: {', '.join(missing)}")
        return [bound.get(p["parameter_name"], p.get("parameter_default")) for p in params]

    def _parameters(self, fn: _Function) -> list[dict[str, Any]]:
        with self._lock:
            if self._info is None:
                answer = self.http.request("GET", self.url + "/gradio_api/info", timeout=SERVICE_TIMEOUT)
                self._info = _json(answer, decimal=False) if answer.status_code == 200 else {}
        endpoint = (self._info or {}).get("named_endpoints", {}).get(fn.api_name)
        params = endpoint.get("parameters") if isinstance(endpoint, dict) else None
        if not params or any("parameter_name" not in p for p in params):
            raise TypeError(f"{self.url} does not name the parameters of {fn.api_name}: pass them positionally")
        return params


class _GradioClient:
    """``gradio_client.Client`` (imported only when chosen); the escrow ID as the ``escrow_id`` argument."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Any = None
        self._lock = threading.Lock()

    def call(self, fn: _Function, args: tuple, kwargs: dict, escrow_id: str) -> tuple[Any, Any]:
        from gradio_client.exceptions import AppError

        client = self._connect(escrow_id)
        try:
            outputs = client.predict(*args, **kwargs, escrow_id=escrow_id, api_name=fn.api_name,
                                     headers={ESCROW_HEADER: escrow_id})
        except AppError as exc:
            error = _gradio_error(exc.message, escrow_id=escrow_id)
            if isinstance(error, ServiceUnavailable):
                error.retry_after = _DEFAULT_RETRY_AFTER_S
            raise error from None
        except (TypeError, ValueError):
            raise  # wrong arguments, refused by gradio_client before sending
        except Exception as exc:  # httpx and websockets failures somewhere in the job: after sending
            raise _charge_unknown(self.url, escrow_id, exc) from exc
        return _split_outputs(outputs)

    def _connect(self, escrow_id: str) -> Any:
        with self._lock:
            if self._client is None:
                from gradio_client import Client

                try:
                    self._client = Client(self.url, verbose=False)
                except Exception as exc:
                    raise _unreachable(self.url, escrow_id, exc) from exc
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            close = getattr(client, "close", None)
            if callable(close):
                close()
