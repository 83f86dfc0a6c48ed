"""Serving a Space with uvicorn so that what the gate earned is settled before the server stops listening."""

from __future__ import annotations

from collections.abc import Callable

import anyio.to_thread
import uvicorn


class SettleFirstServer(uvicorn.Server):
    """uvicorn, but `settle` runs before the server stops listening.

    In sandbox mode the gate captures through this very server; uvicorn runs the
    lifespan shutdown only after it has closed its sockets, too late for that.
    """

    def __init__(self, config: uvicorn.Config, settle: Callable[[], None]) -> None:
        super().__init__(config)
        self._settle = settle

    async def shutdown(self, sockets=None) -> None:
        await anyio.to_thread.run_sync(self._settle)
        await super().shutdown(sockets)
