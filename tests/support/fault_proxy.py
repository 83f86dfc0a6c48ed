"""A loopback HTTP proxy that injects faults between the gate and the escrow service.

Each request the proxy reads is numbered; rules decide what happens to it:

    ok          forward it and relay the answer
    delay       wait ``delay_s``, then forward
    drop        close the client's connection without forwarding (nothing applied upstream)
    drop_after  forward (applied upstream), then close without answering
    error       answer ``status`` (503) without forwarding (nothing applied)
    error_after forward (applied upstream), then answer ``status`` (502) instead of its answer
    reset       forward (applied), send half the answer, then reset the connection (RST)
    blackhole   accept and read the request, never answer (until the proxy stops)

``proxy.add(fault, match="POST /holds", skip=0, times=1)`` applies ``fault`` to the next
``times`` requests (None: all) whose "METHOD path" matches the regular expression ``match``
(``re.search``) after ``skip`` of them passed. The first matching rule with budget left wins. ``proxy.log`` lists
``(n, "METHOD path", fault, idempotency_key_or_None)`` for every request seen.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from dataclasses import dataclass

FAULTS = ("ok", "delay", "drop", "drop_after", "error", "error_after", "reset", "blackhole")


@dataclass
class Rule:
    fault: str
    match: str = ""
    skip: int = 0
    times: int | None = 1
    delay_s: float = 0.5
    status: int = 503
    seen: int = 0
    applied: int = 0

    def take(self, line: str) -> bool:
        if not re.search(self.match, line):
            return False
        self.seen += 1
        if self.seen <= self.skip:
            return False
        if self.times is not None and self.applied >= self.times:
            return False
        self.applied += 1
        return True


def _read_head(sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes] | None:
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest


def _header(head: bytes, wanted: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == wanted:
            return value.strip().decode("latin-1")
    return None


def _content_length(head: bytes) -> int:
    value = _header(head, b"content-length")
    return int(value) if value else 0


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class FaultProxy:
    """Listens on a free loopback port and forwards to ``upstream_port`` on 127.0.0.1."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.rules: list[Rule] = []
        self.log: list[tuple[int, str, str, str | None]] = []
        self._lock = threading.Lock()
        self._count = 0
        self._stopping = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(256)
        self._listener.settimeout(0.05)  # so close() is noticed at once
        self.port = self._listener.getsockname()[1]
        self._clients: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()

    def url(self, path: str = "/api") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # -- configuration -------------------------------------------------------------------

    def add(self, fault: str, match: str = "", *, skip: int = 0, times: int | None = 1, **options) -> Rule:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        rule = Rule(fault, match, skip, times, **options)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def faults_applied(self) -> list[tuple[int, str, str, str | None]]:
        return [entry for entry in self.log if entry[2] != "ok"]

    def close(self) -> None:
        self._stopping.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            try:
                client.close()
            except OSError:
                pass
        self._thread.join(5)

    # -- serving ---------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                self._clients.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _decide(self, line: str, key: str | None) -> Rule | None:
        with self._lock:
            self._count += 1
            number = self._count
            chosen = next((rule for rule in self.rules if rule.take(line)), None)
            self.log.append((number, line, chosen.fault if chosen else "ok", key))
        return chosen

    def _serve(self, client: socket.socket) -> None:
        buffer = b""
        try:
            while not self._stopping.is_set():
                parsed = _read_head(client, buffer)
                if parsed is None:
                    return
                head, rest = parsed
                length = _content_length(head)
                while len(rest) < length:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    rest += chunk
                body, buffer = rest[:length], rest[length:]
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                method, _, remainder = request_line.partition(" ")
                line = f"{method} {remainder.rsplit(' ', 1)[0]}"
                rule = self._decide(line, _header(head, b"idempotency-key"))
                fault = rule.fault if rule else "ok"
                if fault == "blackhole":
                    self._stopping.wait()
                    return
                if fault == "drop":
                    _reset(client)
                    return
                if fault == "error":
                    client.sendall(_error_response(rule.status))
                    continue
                if fault == "delay":
                    time.sleep(rule.delay_s)
                answer = self._forward(head, body)
                if answer is None:
                    _reset(client)
                    return
                if fault == "drop_after":
                    _reset(client)
                    return
                if fault == "error_after":
                    client.sendall(_error_response(rule.status if rule.status != 503 else 502))
                    continue
                if fault == "reset":
                    client.sendall(answer[: max(1, len(answer) // 2)])
                    _reset(client)
                    return
                client.sendall(answer)
                if b"\r\nconnection: close" in answer.split(b"\r\n\r\n", 1)[0].lower():
                    client.close()
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._clients.discard(client)
            try:
                client.close()
            except OSError:
                pass

    def _forward(self, head: bytes, body: bytes) -> bytes | None:
        """Send one request upstream on its own connection; the whole answer (uvicorn frames it)."""
        try:
            with socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30) as upstream:
                upstream.sendall(head + b"\r\n\r\n" + body)
                parsed = _read_head(upstream, b"")
                if parsed is None:
                    return None
                answer_head, rest = parsed
                length = _content_length(answer_head)
                while len(rest) < length:
                    chunk = upstream.recv(65536)
                    if not chunk:
                        return None
                    rest += chunk
                return answer_head + b"\r\n\r\n" + rest[:length]
        except OSError:
            return None


def _error_response(status: int) -> bytes:
    body = b'{"error": {"code": "internal_error", "message": "injected by the fault proxy"}}'
    reason = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
    return (
        f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
