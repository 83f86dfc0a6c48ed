"""The standalone ASGI app: the contract's API mounted at /api, the sweeper run by the lifespan."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount

from .api import ClockDateHeader, create_api, error_response
from .store import Store
from .sweeper import Sweeper

API_PREFIX = "/api"


def standalone_app(
    store: Store, *, holds: bool = True, latency_ms: float = 0, sweep_interval_s: float = 1.0,
    close_store: bool = True, date_from_clock: bool = False,
) -> Starlette:
    """Mount create_api(store) at /api; the lifespan starts and stops a Sweeper (and closes the store).

    ``date_from_clock``: answers carry the store clock's time as ``Date`` (serve with the server's own Date off).
    """
    sweeper = Sweeper(store, interval_s=sweep_interval_s)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        sweeper.start()
        try:
            yield
        finally:
            sweeper.stop()
            if close_store:
                store.close()

    async def not_found(_: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(404, "not_found", "No such resource; the API is under /api.")
        return error_response(exc.status_code, "invalid_request", "The request could not be handled.", exc.headers)

    api: Any = create_api(store, holds=holds, latency_ms=latency_ms)
    if date_from_clock:  # the store's clock is not the wall clock: Date must say the store's time
        api = ClockDateHeader(api, store.clock)
    app = Starlette(
        routes=[Mount(API_PREFIX, api)],
        lifespan=lifespan,
        exception_handlers={StarletteHTTPException: not_found},
    )
    app.state.store = store
    app.state.sweeper = sweeper
    return app


def create_app(db_path: str | Path, *, clock: Any = None, holds: bool = True, latency_ms: float = 0) -> Starlette:
    """A standalone ASGI app for the database at `db_path`: the API at /api, the sweeper in the lifespan."""
    return standalone_app(Store(db_path, clock=clock), holds=holds, latency_ms=latency_ms)
