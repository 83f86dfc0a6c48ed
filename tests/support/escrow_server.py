"""A real sandbox escrow server for tests: uvicorn in a background thread on a free loopback port, FakeClock injected."""

from __future__ import annotations

import asyncio
import json as jsonlib
import re
import secrets
import socket
import threading
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import requests
import uvicorn

from escrow import FakeClock, Store
from escrow.jsonio import dumps
from escrow.server import API_PREFIX, standalone_app


@dataclass(frozen=True)
class Agent:
    """A registered sandbox agent."""

    agent_id: str
    api_key: str
    referral_code: str

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header for this agent."""
        return {"Authorization": f"Bearer {self.api_key}"}


class _RequestRecorder:
    """ASGI middleware: remember (method, raw path) of every HTTP request that reached the server."""

    def __init__(self, app: Any, log: list[tuple[str, str]]) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode()
            self.log.append((scope["method"], raw.decode("latin-1")))
        await self.app(scope, receive, send)


#: How the sandbox answers every amount (escrow/README.md, "Amounts in answers"): a string with 6 decimals.
AMOUNT_TEXT = re.compile(r"[0-9]+\.[0-9]{6}")


def parse_json(response: requests.Response) -> Any:
    """A response body with numbers as Decimal, and every amount (a ``*_usdc`` field) read as a Decimal from
    its decimal string, as a client does; an amount in any other form fails the test."""
    return read_amounts(jsonlib.loads(response.content, parse_float=Decimal))


def read_amounts(value: Any, key: str | None = None) -> Any:
    """`value` with each ``*_usdc`` field's string as a Decimal (AssertionError if one is not a 6-decimal string)."""
    if isinstance(value, dict):
        return {name: read_amounts(item, name) for name, item in value.items()}
    if isinstance(value, list):
        return [read_amounts(item, key) for item in value]
    if key is not None and key.endswith("_usdc") and value is not None:
        assert isinstance(value, str) and AMOUNT_TEXT.fullmatch(value), f"{key} answered as {value!r}"
        return Decimal(value)
    return value


class EscrowServer:
    """The sandbox escrow service served over real HTTP for one test."""

    def __init__(self, db_path: Path, *, holds: bool = True, latency_ms: float = 0, sweep_interval_s: float = 0.5):
        self.clock = FakeClock()
        self.store = Store(db_path, clock=self.clock)
        self.request_log: list[tuple[str, str]] = []
        app = standalone_app(
            self.store, holds=holds, latency_ms=latency_ms, sweep_interval_s=sweep_interval_s, close_store=False,
            date_from_clock=True,
        )
        self._app = _RequestRecorder(app, self.request_log)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}{API_PREFIX}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 20.0) -> EscrowServer:
        """Serve (again) on the same port and database."""
        if self._thread is not None:
            return self
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then (else ~40 ms per response).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        config = uvicorn.Config(
            self._app, http="h11", ws="none", lifespan="on", log_level="warning", access_log=False,
            date_header=False,  # the app sets Date from its FakeClock
        )
        server = uvicorn.Server(config)
        self._server = server
        failure: list[BaseException] = []

        def serve() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
            except BaseException as exc:  # reported by start()
                failure.append(exc)
            finally:
                sock.close()

        self._thread = threading.Thread(target=serve, name=f"escrow-server-{self.port}", daemon=True)
        self._thread.start()
        ready = threading.Event()
        for _ in range(int(timeout_s / 0.01)):
            if server.started or failure or not self._thread.is_alive():
                break
            ready.wait(0.01)
        if not server.started:
            self.stop()
            raise RuntimeError(f"escrow server did not start: {failure!r}")
        return self

    def stop(self) -> None:
        """Stop serving (the database and the port stay this server's)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(20)
        self._server = None
        self._thread = None
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()
        self._local = threading.local()

    def close(self) -> None:
        """Stop serving and close the database."""
        self.stop()
        self.store.close()

    # ------------------------------------------------------------ calls

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def clear_log(self) -> None:
        """Forget the requests recorded so far."""
        self.request_log.clear()

    def call(
        self, agent: Agent | None, method: str, path: str, json: Any = None, headers: dict[str, str] | None = None,
        data: bytes | str | None = None,
    ) -> requests.Response:
        """Any call; `path` is relative to the API root; `json` may hold Decimals (sent as exact numbers)."""
        all_headers = dict(agent.auth) if agent is not None else {}
        if json is not None:
            data = dumps(json).encode()  # bytes: http.client then sends headers and body in one packet
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        return self._session().request(method, self.url + path, data=data, headers=all_headers, timeout=30)

    def _ok(self, response: requests.Response, expected: int) -> Any:
        if response.status_code != expected:
            raise AssertionError(f"{response.request.method} {response.url}: {response.status_code} {response.text}")
        return parse_json(response)

    def register(self, name: str | None = None, referred_by: str | None = None) -> Agent:
        """A new agent via POST /agents."""
        body = {} if name is None else {"name": name}
        if referred_by is not None:
            body["referred_by"] = referred_by
        created = self._ok(self.call(None, "POST", "/agents", json=body), 201)
        return Agent(created["agent_id"], created["api_key"], created["referral_code"])

    def faucet(self, agent: Agent, amount: str = "10") -> dict:
        """Credit test USDC via POST /faucet."""
        return self._ok(self.call(agent, "POST", "/faucet", json={"amount_usdc": amount}), 200)

    def open_escrow(
        self, buyer: Agent, seller_id: str, amount_usdc: Any, ttl_seconds: int = 3600, **fields: Any
    ) -> dict:
        """POST /escrow; returns the escrow object."""
        body = {"seller_id": seller_id, "amount_usdc": amount_usdc, "ttl_seconds": ttl_seconds, **fields}
        headers = {"Idempotency-Key": secrets.token_hex(16)}
        return self._ok(self.call(buyer, "POST", "/escrow", json=body, headers=headers), 201)

    def get_escrow(self, agent: Agent, escrow_id: str) -> dict:
        """GET /escrow/{id}; returns the escrow object."""
        return self._ok(self.call(agent, "GET", f"/escrow/{escrow_id}"), 200)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
