"""Test-wide settings: nothing reaches the internet, nothing phones home."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---------------------------------------------------------------- sandbox escrow servers (tests/support/escrow_server.py)

from collections.abc import Callable, Iterator  # noqa: E402

import pytest  # noqa: E402

from tests.support.escrow_server import EscrowServer  # noqa: E402


@pytest.fixture
def escrow_server_factory(tmp_path) -> Iterator[Callable[..., EscrowServer]]:
    """factory(holds=True, latency_ms=0) -> a started sandbox escrow server; all stopped at teardown."""
    servers: list[EscrowServer] = []

    def factory(holds: bool = True, latency_ms: float = 0) -> EscrowServer:
        server = EscrowServer(tmp_path / f"escrow-{len(servers)}.db", holds=holds, latency_ms=latency_ms)
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.close()


@pytest.fixture
def escrow_server(escrow_server_factory) -> EscrowServer:
    """A started sandbox escrow server (FakeClock, holds on, no added latency)."""
    return escrow_server_factory()
