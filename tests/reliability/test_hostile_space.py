"""Hostile inputs to a running Space (`python app.py`, sandbox mode, the tiny offline model).

Every hostile call, through gradio_client and through the plain HTTP API
(`POST /gradio_api/call/classify`, then its event stream), must end in one of two ways:

- refused, with a message that says the buyer was not charged, and nothing reserved:
  the escrow named (if any) keeps spent == held == 0. The gate refuses (an error event),
  or, for a body over the Space's request limits (space.RequestLimits), the HTTP layer (413/422);
- handled: a normal result with a receipt, and exactly one charge for it.

No message carries a traceback, an internal URL or the seller's key, nor echoes a huge
input; the Space keeps serving after each batch, and its memory stays bounded while big
inputs are sent again and again. The books of the whole module (receipts == what the
sandbox ledger settled, one settlement per receipt, conservation) are reconciled after
every test. The Space settles per call, so every charge is on the ledger when its result
arrives (refusals come before any reservation, whatever the settlement).
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import requests
from gradio_client import Client
from gradio_client.exceptions import AppError

from models import MAX_TEXT_CHARS
from tests.support.audit import Audit, Ledger
from tests.support.processes import space_process
from tests.support.space import MAX_REQUEST_BYTES, RunningSpace, classify_over_http, final_event

pytestmark = [pytest.mark.hostile]

PRICE = Decimal("0.001")
LABELS = {"negative", "neutral", "positive"}
MB = 1_000_000


# ---------------------------------------------------------------- calling the Space


@dataclass
class Outcome:
    """What one call came back with."""

    # "paid"; "refused" (by the gate, an error event); "limited" (413/422 from the Space's request
    # limits); "rejected" (another 4xx from the HTTP layer: the request never reached a handler)
    kind: str
    message: str = ""
    result: Any = None
    receipt: dict | None = None
    status: int = 200


def _not_accepted(status: int, text: str) -> Outcome:
    """A 4xx answer to the POST: the Space's request limits ({"error": ...}) or FastAPI's own."""
    assert 400 <= status < 500, (status, text[:500])
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        error = None
    if status in (413, 422) and isinstance(error, str):
        return Outcome("limited", error, status=status)
    return Outcome("rejected", text, status=status)


class Space:
    """The Space under test, its sandbox ledger, one buyer, and the audit of everything it was told."""

    def __init__(self, running) -> None:
        self.running = running
        self.base = running.server.base_url
        self.sandbox = running.sandbox
        self.client = Client(running.url, verbose=False)
        self.seller = running.seller()
        self.seller_id = self.client.predict(api_name="/pricing")["seller_id"]
        self.buyer = self.sandbox.register("hostile-buyer")
        self.sandbox.fund(self.buyer, "20")
        self.ledger = Ledger(running.data_dir / "sandbox-escrow.db")
        self.audit = Audit(self.ledger, seller_id=self.seller_id, buyer_ids=[self.buyer.agent_id], per_call=True)
        self.log_checked_from = 0
        self._clients: list[Client] = [self.client]

    @property
    def pid(self) -> int:
        return self.running.server.process.pid

    def escrow(self, amount: str = "0.050") -> str:
        return self.sandbox.open_escrow(self.buyer, self.seller_id, amount)

    def state(self, escrow_id: str) -> dict:
        return self.sandbox.escrow(self.buyer, escrow_id)

    # -- the two ways in
    def http(self, data: Any = None, *, headers: dict | None = None, body: bytes | None = None) -> Outcome:
        answer, stream = classify_over_http(self.base, data, body=body, headers=headers)
        if stream is None:
            return _not_accepted(answer.status_code, answer.text)
        assert stream.status_code == 200, stream.text
        event, payload = final_event(stream.text)
        if event == "complete":
            return Outcome("paid", result=payload[0], receipt=payload[1])
        return Outcome("refused", (payload or {}).get("error") or "")

    def call(self, text: Any, escrow_id: Any, *, headers: dict | None = None) -> Outcome:
        client = self.client
        if headers is not None:
            client = Client(self.running.url, verbose=False, headers=headers)
            self._clients.append(client)
        try:
            result, receipt = client.predict(text, escrow_id, api_name="/classify")
        except AppError as refusal:
            return Outcome("refused", str(refusal))
        except httpx.HTTPStatusError as refusal:  # gradio_client raises the HTTP answer as it is
            return _not_accepted(refusal.response.status_code, refusal.response.text)
        return Outcome("paid", result=result, receipt=receipt)

    # -- judging what came back
    def clean(self, message: str) -> None:
        """No traceback, internal address or seller key in what a buyer reads; no huge echo."""
        assert len(message) < 2_000, message[:200]
        assert "Traceback" not in message and 'File "' not in message, message
        assert self.seller.api_key not in message
        assert self.seller.api_key[-12:] not in message
        assert "127.0.0.1" not in message and "localhost" not in message, message
        assert "/sandbox/api" not in message, message

    def refused(self, outcome: Outcome, why: str = "") -> str:
        assert outcome.kind in ("refused", "limited"), (why, outcome)
        self.clean(outcome.message)
        assert "not charged" in outcome.message.lower(), (why, outcome.message)
        self.audit.refused(outcome.message)
        return outcome.message

    def paid(self, outcome: Outcome, escrow_id: str, why: str = "") -> dict:
        assert outcome.kind == "paid", (why, outcome)
        assert outcome.result["label"] in LABELS, outcome.result
        assert 0 <= outcome.result["score"] <= 1
        receipt = outcome.receipt
        assert receipt["escrow_id"] == escrow_id, (why, receipt)
        assert Decimal(receipt["charged_usdc"]) == PRICE, receipt
        assert receipt["charge_id"], receipt
        self.clean(json.dumps(receipt))
        self.audit.paid(outcome.result, receipt)
        return receipt

    def untouched(self, escrow_id: str, amount: str = "0.050") -> None:
        """Nothing charged and nothing even reserved on this escrow."""
        state = self.state(escrow_id)
        assert state["spent_usdc"] == 0, state
        assert state["held_usdc"] == 0, state
        assert state["remaining_usdc"] == Decimal(amount), state

    def still_serving(self) -> None:
        assert self.running.server.process.poll() is None, self.running.server.log()[-3000:]
        escrow_id = self.escrow("0.010")
        self.paid(self.call("a perfectly normal sentence", escrow_id), escrow_id, "after the batch")
        self.paid(self.http(["and another one", escrow_id]), escrow_id, "after the batch")

    def reconcile(self) -> None:
        """Per call: every receipt is a capture already, and no hold is left open."""
        self.audit.reconcile(holds_closed=True)

    def close(self) -> None:
        # Together: each close() waits up to 1 s for its heartbeat thread (12 s one after another).
        with ThreadPoolExecutor(len(self._clients)) as pool:
            list(pool.map(Client.close, self._clients))

    def rss_mib(self) -> float:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def log_size(self) -> int:
        return self.running.server.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.running.server.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")


@pytest.fixture(scope="module")
def space(tmp_path_factory, tiny_model_dir) -> Space:
    tmp = tmp_path_factory.mktemp("hostile-space")
    server = space_process(tmp, MODEL_ID=str(tiny_model_dir), SETTLEMENT="per_call").start()
    space = Space(RunningSpace(server, tmp / "space-data"))
    yield space
    space.close()
    server.stop()


@pytest.fixture(autouse=True)
def reconciled(space):
    """Each test leaves the Space serving, its log free of tracebacks, and the module's books balanced."""
    space.log_checked_from = space.log_size()
    yield
    space.still_serving()
    space.reconcile()
    new_log = space.log_since(space.log_checked_from)
    assert "Traceback" not in new_log, new_log[-3000:]
    assert space.seller.api_key not in new_log


def raw_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    """One HTTP/1.1 request written byte for byte (clients refuse to send some of these headers).

    The answer, or what came of it before the server closed the connection (b"" if nothing).
    """
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):  # refused mid-request: the server hung up
            pass
    return answer


def refused_by_the_server(answer: bytes) -> bool:
    """A 4xx from the HTTP server, or the connection closed on a request it would not read."""
    return answer == b"" or answer.startswith(b"HTTP/1.1 4")


# ---------------------------------------------------------------- memory first (a Space that has seen no big input yet)


def test_memory_stays_bounded_under_repeated_big_inputs(space):
    """RSS before and after 5 rounds of big inputs (texts, escrow IDs, JSON, headers; both ways in).

    Each round sends about 6 MB: 1 MB bodies (refused by the request limits before anything
    reads them) and bodies just under the limit (which Gradio parses and keeps as the inputs
    of a session, and the gate refuses). Before the fixes, one 1 MB text was tokenised whole
    (+160 MB, once), and Gradio kept every call's inputs: 1 MB per 1 MB text, 15 MB per list of
    200,000 strings, for up to 10,000 sessions, so 5 rounds grew the process by over 100 MB.
    Now a raw HTTP call keeps at most one body (256 KB) for one of at most 1,000 sessions:
    5 rounds keep under 5 MB. 48 MiB leaves room for allocator noise and fails on a leak.
    """
    escrow_id = space.escrow()
    for _ in range(3):  # warm: first calls allocate pools and caches that stay
        space.paid(space.call("warming up nicely", escrow_id), escrow_id)
        space.paid(space.http(["warming up nicely", escrow_id]), escrow_id)
        space.refused(space.call("hello", "esc_short"))
        space.refused(space.http(["", escrow_id]))
    before = space.rss_mib()

    under_limit = MAX_REQUEST_BYTES - 1_000  # room for the rest of the body
    big_text, big_emoji, big_id = "a" * MB, "\U0001F600" * (MB // 4), "esc_" + "a" * MB
    refused_escrow = space.escrow()
    head = b"POST /gradio_api/call/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    rounds = []
    for _ in range(5):
        started = time.monotonic()
        for outcome, why in [
            (space.http([big_text, refused_escrow]), "1 MB text"),
            (space.call(big_text, refused_escrow), "1 MB text"),
            (space.http([big_emoji, refused_escrow]), "1 MB of emoji"),
            (space.http(["hello", big_id]), "1 MB escrow ID"),
            (space.call("hello", big_id), "1 MB escrow ID"),
            (space.http([["word"] * 200_000, refused_escrow]), "a list of 200,000 strings as the text"),
        ]:
            assert space.refused(outcome, why).startswith("The request is too large"), outcome
        for outcome, why in [
            (space.http(["a" * under_limit, refused_escrow]), "text just under the body limit"),
            (space.call("a" * under_limit, refused_escrow), "text just under the body limit"),
            (space.http(["hello", "esc_" + "a" * under_limit]), "escrow ID just under the body limit"),
            (space.http([["ab"] * 999, refused_escrow]), "999 strings: within the JSON value limit"),
        ]:
            space.refused(outcome, why)
        outcome = space.http([[[]] * (under_limit // 4), refused_escrow])
        assert space.refused(outcome, "60,000 empty lists").startswith("The request holds over"), outcome
        answer = raw_request(space.running.server.port, head + b"X-Escrow-Id: esc_" + b"a" * MB + b"\r\n", b"{}")
        assert refused_by_the_server(answer), answer[:200]  # h11 refuses a 1 MB header line
        rounds.append((round(space.rss_mib()), round(time.monotonic() - started, 2)))
    after = space.rss_mib()
    print(f"\nSpace RSS: {before:.0f} MiB before, {after:.0f} MiB after 5 rounds; (MiB, s) per round: {rounds}")
    space.untouched(refused_escrow)
    assert after - before < 48, (before, after, rounds)


# ---------------------------------------------------------------- escrow IDs


def hostile_escrow_ids(real: str) -> dict[str, str]:
    body = real[4:]
    fullwidth = real.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})
    return {
        "parent": "../",
        "parent-encoded": "..%2f",
        "parent-encoded-upper": "..%2F..%2Fme",
        "sandbox route": "/sandbox/api/me",
        "escaping id": "esc_x/../..",
        "real id then path": f"{real}/../..",
        "real id then release": f"{real}/release",
        "path to the real id": f"../escrow/{real}",
        "percent-encoded e": "%65sc_" + body,
        "percent-encoded underscore": real.replace("_", "%5F"),
        "url-quoted with slash": quote(real + "/x", safe=""),
        "percent-encoded body": "esc_" + "%41" * 20,
        "1 MB": "esc_" + "a" * MB,
        "1 MB junk": "x" * MB,
        "200 KB": "esc_" + "a" * 200_000,
        "NUL": "\x00",
        "real id then NUL": real + "\x00",
        "CRLF header injection": "esc_aaaaaaaaaaaaaaaaaaaa\r\nX-Escrow-Id: " + real,
        "ANSI escape": real[:10] + "\x1b[31m" + real[10:],
        "terminal title escape": "\x1b]0;pwned\x07",
        "Cyrillic e in esc": "\u0435sc_" + body,
        "Cyrillic a in body": "esc_" + body[:-1] + "\u0430",
        "fullwidth digits": fullwidth,
        "zero-width joiner": real[:8] + "\u200d" + real[8:],
        "zero-width space after": real + "\u200b",
        "BOM before": "\ufeff" + real,
        "trailing space": real + " ",
        "trailing newline": real + "\n",
        "trailing CRLF": real + "\r\n",
        "leading space": " " + real,
        "tab": real + "\t",
        "whitespace only": "   ",
        "upper-cased body (well formed, unknown)": "esc_" + body.upper(),
        "one character too long": "esc_" + "a" * 41,
        "one character too short": "esc_" + "a" * 19,
        "null as a string": "null",
        "JSON object as a string": json.dumps({"id": real}),
        "SQL": "esc_aaaaaaaaaaaaaaaaaaaa' OR '1'='1",
    }


def test_hostile_escrow_ids_are_refused_for_free(space):
    real = space.escrow()
    refusals = {}
    for why, escrow_id in hostile_escrow_ids(real).items():
        refusals[why] = space.refused(space.http(["a fine text", escrow_id]), f"http: {why}")
        space.refused(space.call("a fine text", escrow_id), f"gradio_client: {why}")
    for why in ("200 KB", "real id then NUL", "trailing newline", "fullwidth digits", "Cyrillic e in esc"):
        assert "malformed" in refusals[why], refusals[why]
    assert "too large" in refusals["1 MB"]  # the request limits: nothing parsed it
    assert "not found" in refusals["upper-cased body (well formed, unknown)"]  # IDs are case-sensitive
    space.untouched(real)


def test_missing_escrow_id_is_refused_for_free(space):
    for escrow_id in (None, ""):
        message = space.refused(space.http(["a fine text", escrow_id]), repr(escrow_id))
        assert "X-Escrow-Id" in message
        space.refused(space.call("a fine text", escrow_id), repr(escrow_id))


def test_non_string_escrow_ids_over_http_are_refused_for_free(space):
    real = space.escrow()
    for value in (5, 0, -1, 1.5, True, False, [real], {"id": real}, [], {}, [[real]], 10**300):
        space.refused(space.http(["a fine text", value]), repr(value)[:40])
    # JSON the API cannot even take: a 5,000-digit number, invalid UTF-8, a body that is not JSON.
    for body in (
        b'{"data": ["a fine text", ' + b"9" * 5000 + b"]}",
        b'{"data": ["a fine text", "' + real.encode() + b'\xff"]}',
        b'{"data": ["a fine text", "' + real.encode(),
        b"[1, 2]",
        b'{"data": "' + real.encode() + b'"}',
    ):
        outcome = space.http(body=body)
        if outcome.kind == "rejected":  # FastAPI refuses it before any handler: 4xx, never 5xx
            assert 400 <= outcome.status < 500, outcome
            assert "Traceback" not in outcome.message
        else:
            space.refused(outcome, body[:60].decode(errors="replace"))
    space.untouched(real)


def test_wrong_number_of_arguments_never_reaches_the_gate(space):
    real = space.escrow()
    for data in ([], ["a fine text"], [real]):
        outcome = space.http(data)
        assert outcome.kind == "refused", outcome  # Gradio's own input check, before the gate
        assert "Traceback" not in outcome.message and space.seller.api_key not in outcome.message
    # Gradio prints a traceback for each of these (not shown to the caller): not this Space's to silence.
    assert "didn't receive enough input values" in space.log_since(space.log_checked_from)
    space.log_checked_from = space.log_size()
    outcome = space.http(["a fine text", real, "one too many", "and another"])
    space.paid(outcome, real, "extra arguments are ignored by Gradio")


def test_escrow_id_header_variants(space):
    a, b = space.escrow(), space.escrow()

    # Missing, empty, hostile: refused for free.
    space.refused(space.http(["a fine text", None]), "no header")
    space.refused(space.http(["a fine text", None], headers={"X-Escrow-Id": ""}), "empty header")
    space.refused(space.call("a fine text", "", headers={"X-Escrow-Id": ""}), "empty header")
    for why, hostile in hostile_escrow_ids(b).items():
        value = hostile.encode()
        if b"\r" in value or b"\n" in value or b"\x00" in value or len(value) > 10_000:
            continue  # not a header a client can send; raw bytes below
        if value.strip() != value:
            continue  # HTTP strips blanks around a header value: the real ID, handled below
        space.refused(space.http(["a fine text", None], headers={"X-Escrow-Id": value}), f"header: {why}")
        if value.isascii() and value.strip() == value and all(32 <= c < 127 for c in value):
            space.refused(space.call("a fine text", None, headers={"X-Escrow-Id": hostile}), f"header: {why}")
    # Bytes no client library sends: the HTTP server refuses them before the Space sees them.
    head = b"POST /gradio_api/call/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    body = json.dumps({"data": ["a fine text", None]}).encode()
    for header in (b"esc_\x1b[31m" + b"a" * 20, b"esc_\x00" + b"a" * 20, b"\x7f" + b.encode(), b"a" * 100_000):
        answer = raw_request(space.running.server.port, head + b"X-Escrow-Id: " + header + b"\r\n", body)
        if answer.startswith(b"HTTP/1.1 200"):  # the server took it: the gate must refuse it
            event_id = json.loads(answer.split(b"\r\n\r\n", 1)[1])["event_id"]
            stream = requests.get(f"{space.base}/gradio_api/call/classify/{event_id}", timeout=60).text
            event, payload = final_event(stream)
            assert event == "error", stream
            space.refused(Outcome("refused", payload["error"]), f"raw header {header[:20]!r}")
        else:
            assert refused_by_the_server(answer), answer[:300]
    space.untouched(b)

    # The argument wins over the header: hostile argument, real header -> refused, header escrow untouched.
    for hostile in ("../", "esc_short", b + "\n"):
        space.refused(space.http(["a fine text", hostile], headers={"X-Escrow-Id": b}), f"argument {hostile!r}")
        space.refused(space.call("a fine text", hostile, headers={"X-Escrow-Id": b}), f"argument {hostile!r}")
    space.untouched(b)

    # Conflicting real IDs: the argument's escrow pays, the header's is untouched.
    space.paid(space.http(["a fine text", a], headers={"X-Escrow-Id": b}), a, "argument over header")
    space.paid(space.call("a fine text", a, headers={"X-Escrow-Id": b}), a, "argument over header")
    space.untouched(b)

    # No argument: the header pays (HTTP strips the whitespace around a header value).
    space.paid(space.http(["a fine text", None], headers={"X-Escrow-Id": b}), b, "header")
    space.paid(space.call("a fine text", "", headers={"X-Escrow-Id": b}), b, "header")
    space.paid(space.http(["a fine text", ""], headers={"X-Escrow-Id": b + " \t"}), b, "header, trailing blanks")


# ---------------------------------------------------------------- texts, with a real funded escrow


REFUSED_TEXTS = {
    "empty": "",
    "whitespace only": " \n\t\r ",
    "ideographic spaces": "\u3000\u3000",
    "1 MB": "a" * MB,
    "one character over the cap": "a" * (MAX_TEXT_CHARS + 1),
    "200 KB": "a" * 200_000,
    "1 MB of emoji": "😀" * (MB // 4),
    "lone high surrogate": "\ud800",
    "lone low surrogate in text": "fine text \udfff fine text",
}

HANDLED_TEXTS = {
    "at the cap": "good " * (MAX_TEXT_CHARS // 5),
    "NULs": "a\x00b\x00c",
    "only NULs": "\x00" * 16,
    "control characters": "\x1b[31mred\x1b[0m \x07\x08",
    "zero-width only": "\u200b\u200d\ufeff",
    "RTL override": "\u202eevil.exe\u202c text \u2067isolate\u2069",
    "emoji flood": "😀🔥💯" * 5000,
    "ZWJ emoji sequences": "👩‍👩‍👧‍👦🏳️‍🌈" * 1000,
    "combining marks": "Z" + "\u0301" * 10_000,
    "fullwidth and Arabic": "ｆｕｌｌｗｉｄｔｈ مرحبا",
    "HTTP lookalike": "\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
    "markup": "<script>alert(1)</script>{{7*7}}%s%n",
    "a fake escrow id": "esc_aaaaaaaaaaaaaaaaaaaaaaaa",
}


@pytest.mark.parametrize("way", ["http", "gradio_client"])
def test_hostile_texts_with_a_real_escrow(space, way):
    send = (lambda text, escrow_id: space.http([text, escrow_id])) if way == "http" else space.call
    untouched = space.escrow()
    for why, text in REFUSED_TEXTS.items():
        if way == "gradio_client" and "surrogate" in why:
            continue  # httpx cannot encode a lone surrogate: gradio_client never sends one
        message = space.refused(send(text, untouched), why)
        if "over" in why or "KB" in why:
            assert "too long" in message, message  # the gate's input check (models.MAX_TEXT_CHARS)
        if "MB" in why:
            assert "too large" in message, message  # the request limits (app.LIMITS.max_bytes)
        if "surrogate" in why:
            assert "Unicode" in message, message
    space.untouched(untouched)

    paying = space.escrow("0.100")
    for why, text in HANDLED_TEXTS.items():
        space.paid(send(text, paying), paying, why)
    state = space.sandbox.escrow_once_spent(space.buyer, paying, PRICE * len(HANDLED_TEXTS))
    assert state["spent_usdc"] == PRICE * len(HANDLED_TEXTS), state  # exactly one charge each


def test_non_string_texts_over_http(space):
    """Gradio's Textbox turns a non-string into str(value): handled (and charged) as that text; null is empty."""
    untouched, paying = space.escrow(), space.escrow()
    space.refused(space.http([None, untouched]), "null text")
    space.refused(space.http([["word " * 100] * 50, untouched]), "a list whose str() is over the cap")
    space.refused(space.http([["word"] * 30_000, untouched]), "30,000 JSON values")
    space.untouched(untouched)
    values = (5, 0, -1.5, True, ["a", "list"], {"an": "object"}, [[]], 10**300)
    for value in values:
        space.paid(space.http([value, paying]), paying, repr(value)[:40])
    # Invalid UTF-8 sent as raw bytes: refused by the HTTP layer, never classified or charged.
    outcome = space.http(body=b'{"data": ["\xff\xfe bad \xc3\x28 text", "' + untouched.encode() + b'"]}')
    assert outcome.kind == "rejected" and 400 <= outcome.status < 500, outcome
    assert "Traceback" not in outcome.message
    space.untouched(untouched)
    state = space.sandbox.escrow_once_spent(space.buyer, paying, PRICE * len(values))
    assert state["spent_usdc"] == PRICE * len(values), state
