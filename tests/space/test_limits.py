"""space.RequestLimits: bodies the Space will not read (too large, too many JSON values) are refused first.

Regression of issue 6: Gradio keeps every session's last inputs in memory and every raw HTTP
API call is a new session, so unbounded bodies were unbounded memory (1 MB of [[],[],...]
stayed 25 MB per call). The running Space is checked in tests/reliability/test_hostile_space.py.
"""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from space import Limits, RequestLimits
from models import MAX_TEXT_CHARS

LIMITS = Limits.for_text(MAX_TEXT_CHARS)  # what app.py serves with
MAX_REQUEST_BYTES, MAX_JSON_VALUES = LIMITS.max_bytes, LIMITS.max_json_values


@pytest.fixture
def seen() -> list[bytes]:
    return []


@pytest.fixture
def client(seen) -> TestClient:
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        seen.append(body)
        return JSONResponse({"length": len(body)})

    inner = Starlette(routes=[Route("/echo", echo, methods=["GET", "POST", "PUT"])])
    with TestClient(RequestLimits(inner, LIMITS)) as test_client:
        yield test_client


def test_the_longest_text_fits_even_as_json_escapes(client, seen):
    text = "\U0001F600" * MAX_TEXT_CHARS  # 12 bytes each with ensure_ascii: "\ud83d\ude00"
    body = json.dumps({"data": [text, "esc_" + "a" * 24], "fn_index": 0, "session_hash": "x" * 12}).encode()
    assert len(body) <= MAX_REQUEST_BYTES
    answer = client.post("/echo", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 200
    assert seen == [body]  # replayed to the route byte for byte


def test_a_body_over_the_limit_is_refused_before_the_route_reads_it(client, seen):
    answer = client.post("/echo", content=b"a" * (MAX_REQUEST_BYTES + 1), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    message = answer.json()["error"]
    assert "too large" in message and "not charged" in message
    assert f"texts of up to {MAX_TEXT_CHARS:,} characters" in message
    assert seen == []


def test_a_chunked_body_over_the_limit_is_refused_too(client, seen):
    chunks = (b"a" * 65_536 for _ in range(MAX_REQUEST_BYTES // 65_536 + 2))
    answer = client.post("/echo", content=chunks)
    assert answer.status_code == 413
    assert seen == []


def test_a_lying_content_length_is_refused(client, seen):
    answer = client.post("/echo", content=b"{}", headers={"Content-Length": "not-a-number"})
    assert answer.status_code in (400, 413)
    assert seen == []


@pytest.mark.parametrize(
    "payload",
    [
        {"data": [[[]] * MAX_JSON_VALUES, "esc_x"]},
        {"data": [{str(i): i for i in range(MAX_JSON_VALUES)}, None]},
        {"data": ["ab"] * MAX_JSON_VALUES},
    ],
)
def test_json_holding_too_many_values_is_refused(client, seen, payload):
    answer = client.post("/echo", json=payload)
    assert answer.status_code == 422
    assert "not charged" in answer.json()["error"]
    assert seen == []


def test_json_nested_too_deep_is_refused(client, seen):
    body = b'{"data": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    answer = client.post("/echo", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    assert seen == []


def test_ordinary_requests_pass_untouched(client, seen):
    assert client.post("/echo", json={"data": ["I love it", "esc_" + "a" * 24]}).status_code == 200
    assert client.put("/echo", json=["x"] * (MAX_JSON_VALUES - 1)).status_code == 200  # the list counts as one
    not_json = b"[" + b"[]," * 10_000 + b"[]]"  # many values, but not declared JSON: the route decides
    assert client.post("/echo", content=not_json, headers={"Content-Type": "text/plain"}).status_code == 200
    broken = b'{"data": ["\xff\xfe", '  # not JSON at all: the route answers it (FastAPI: 400/422)
    assert client.post("/echo", content=broken, headers={"Content-Type": "application/json"}).status_code == 200
    assert client.get("/echo").status_code == 200
    assert len(seen) == 5


def test_the_limits_are_parameters():
    inner = Starlette(routes=[Route("/echo", lambda request: JSONResponse({}), methods=["POST"])])
    with TestClient(RequestLimits(inner, Limits(max_bytes=100, max_json_values=3))) as small:
        assert small.post("/echo", json=["a", "b"]).status_code == 200
        assert small.post("/echo", json=["a", "b", "c"]).status_code == 422  # the list and three strings
        answer = small.post("/echo", content=b"a" * 101, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["error"] == "The request is too large: this Space reads at most 100 bytes. You were not charged."


def test_limits_for_text_leave_room_for_json_escapes_and_other_fields():
    assert Limits.for_text(10) == Limits(max_bytes=120 + 16 * 1024, accepts="texts of up to 10 characters")
    assert Limits.for_text(10, session_capacity=5).session_capacity == 5
