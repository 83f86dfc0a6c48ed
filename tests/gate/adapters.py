"""The gate's two adapters behind one calling convention, so a test checks both (as `limits` runs its tests over
every backend).

``adapter.paid(gate, price, **options)(fn)`` gives a callable used like the Gradio wrapper called from Python:
``f(*args, escrow_id)`` returns the result, or ``(result, receipt)`` with ``receipt=True``, or raises the
GateError the buyer would see. For ASGI the call goes over real HTTP to ``gate.paid_route`` on a running FastAPI
app (the escrow ID in ``X-Escrow-Id``, the arguments as query parameters) and its JSON answer is turned back:
200 into the result and receipt, an error into the GateError class of its ``code`` with its very message.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

import requests

import gate as gate_package
from gate import GateError
from tests.support.asgi_app import ServedApp

ERRORS_BY_CODE = {
    cls.code: cls for cls in vars(gate_package).values() if isinstance(cls, type) and issubclass(cls, GateError)
}
# What the ASGI adapter answers each refusal with (gate._asgi): the contract a plain HTTP caller reads.
STATUS_BY_CODE = {"invalid_input": 422, "service_unavailable": 503, "function_failed": 500}


class GradioAdapter:
    name = "gradio"

    def paid(self, gate, price, **options):
        return gate.paid(price, **options)


class AsgiAdapter:
    name = "asgi"

    def __init__(self, app: ServedApp):
        self._app = app
        self._local = threading.local()  # a requests.Session per thread: tests call from many
        self.answers: list[requests.Response] = []  # every HTTP answer, for tests that check status and headers

    def paid(self, gate, price, *, receipt: bool = False, **options):
        def decorate(fn):
            url = self._app.route(gate.paid_route(price, **options)(fn))
            names = list(inspect.signature(fn).parameters)

            def call(*args: Any, escrow_id: str | None = None, **kwargs: Any):
                if len(args) > len(names):  # the Gradio wrapper's escrow_id comes right after the function's own
                    escrow_id, args = args[len(names)], args[: len(names)]
                params = dict(zip(names, args)) | kwargs
                headers = {"X-Escrow-Id": escrow_id} if escrow_id is not None else {}
                session = getattr(self._local, "session", None) or requests.Session()
                self._local.session = session
                answer = session.post(url, params=params, headers=headers, timeout=60)
                self.answers.append(answer)
                body = answer.json()
                if answer.status_code == 200:
                    return (body["result"], body["receipt"]) if receipt else body["result"]
                raise _refusal(answer.status_code, body)

            return call

        return decorate


def _refusal(status: int, body: dict) -> GateError:
    """The GateError the JSON answer stands for, with its message (the status checked against its code)."""
    error = body["error"]
    cls = ERRORS_BY_CODE[error["code"]]
    expected = STATUS_BY_CODE.get(error["code"], 402)
    if error["code"] == "settlement_failed" and status == 503:
        expected = 503  # the service stopped answering while the call was charged
    assert status == expected, (status, body)
    assert error["message"].strip() and isinstance(error["charged"], bool)
    if status == 402:
        assert set(body["payment"]) == {"seller_id", "price_usdc", "escrow_api"}, body
    refusal = cls.__new__(cls)
    GateError.__init__(refusal, error["message"], charged=error["charged"])
    return refusal
