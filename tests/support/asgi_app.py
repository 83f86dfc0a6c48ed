"""A FastAPI app served by uvicorn in a background thread on a free loopback port; routes can be added while it runs."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI


class ServedApp:
    """One FastAPI app over real HTTP; ``route(endpoint)`` adds a POST route and returns its URL."""

    def __init__(self) -> None:
        self.app = FastAPI()
        self._numbers = itertools.count()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, http="h11", ws="none", lifespan="off", log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve(sockets=[self._sock])),
                                        name="asgi-app", daemon=True)

    def start(self) -> ServedApp:
        self._thread.start()
        for _ in range(2000):
            if self._server.started or not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        if not self._server.started:
            raise RuntimeError("the ASGI app did not start")
        return self

    def route(self, endpoint: Callable) -> str:
        """Serve ``endpoint`` as ``POST /route-N`` from now on; its URL."""
        path = f"/route-{next(self._numbers)}"
        self.app.add_api_route(path, endpoint, methods=["POST"])
        return self.url + path

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(20)
        self._sock.close()
