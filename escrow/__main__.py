"""`python -m escrow serve`: run the sandbox escrow service; prints the API root when ready."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import uvicorn

from .server import API_PREFIX, create_app

DEFAULT_DB = Path("data") / "sandbox-escrow.db"


class _AnnouncingServer(uvicorn.Server):
    """A uvicorn server that prints the API root URL once it is listening."""

    async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        await super().startup(sockets)
        if self.started and self.servers:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            print(f"http://{self.config.host}:{port}{API_PREFIX}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until Ctrl-C / SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m escrow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the escrow API over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8787, help="0 picks a free port (printed)")
    serve.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"SQLite ledger file (default {DEFAULT_DB})")
    serve.add_argument("--latency-ms", type=float, default=0, help="sleep this long before each request")
    serve.add_argument("--no-holds", action="store_true", help="leave out the holds routes, like the hosted service")
    serve.add_argument("--access-log", action="store_true", help="log each request line (never headers or keys)")
    args = parser.parse_args(argv)

    app = create_app(args.db, holds=not args.no_holds, latency_ms=args.latency_ms)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, http="h11", ws="none", lifespan="on", log_level="warning",
        access_log=args.access_log,
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler it found:
    # make that handler a clean exit instead of a KeyboardInterrupt traceback or a death by signal.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_cleanly)
    _AnnouncingServer(config).run()
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
