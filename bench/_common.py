"""Shared by the benchmarks: load average, percentiles, a sandbox escrow subprocess, request counting."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 60.0
ESCROW_TTL_S = 172_800


def load_average() -> str:
    """The 1/5/15-minute load averages, as `uptime` shows them."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def banner(title: str) -> str:
    """A title line with the machine and the load average at the start of the run."""
    return (f"== {title} ==\n"
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
            f"load average at start: {load_average()}")


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank on the sorted samples."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


@dataclass
class Party:
    agent_id: str
    api_key: str


@dataclass
class Market:
    """A seller, a buyer, and escrows from the buyer to the seller, on one sandbox ledger."""

    url: str
    seller: Party
    buyer: Party
    escrow_ids: list[str]


def prepare_ledger(db: Path, *, escrows: int, amount_micro: int) -> tuple[Party, Party, list[str]]:
    """Register a seller and a buyer, grant the buyer (admin grant, no faucet cap), open escrows."""
    from escrow import Store

    store = Store(db)
    try:
        seller = store.register_agent("bench-seller")
        buyer = store.register_agent("bench-buyer")
        store.grant(buyer["agent_id"], amount_micro * escrows)
        escrow_ids = []
        for _ in range(escrows):
            outcome = store.create_escrow(
                buyer["api_key"], seller_id=seller["agent_id"], amount_micro=amount_micro,
                ttl_seconds=ESCROW_TTL_S, description="bench", meta={}, release_condition=None,
            )
            assert outcome.status == 201, outcome.body
            escrow_ids.append(outcome.json()["id"])
    finally:
        store.close()
    return Party(seller["agent_id"], seller["api_key"]), Party(buyer["agent_id"], buyer["api_key"]), escrow_ids


@contextlib.contextmanager
def escrow_service(latency_ms: float, *, escrows: int = 1, amount_micro: int = 10**12) -> Iterator[Market]:
    """`python -m escrow serve --latency-ms N` on loopback in a subprocess, with a funded market."""
    with tempfile.TemporaryDirectory(prefix="bench-escrow-") as tmp:
        db = Path(tmp) / "escrow.db"
        seller, buyer, escrow_ids = prepare_ledger(db, escrows=escrows, amount_micro=amount_micro)
        process = subprocess.Popen(
            [sys.executable, "-m", "escrow", "serve", "--host", "127.0.0.1", "--port", "0", "--db", str(db),
             "--latency-ms", str(latency_ms)],
            cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            url = _read_url(process)
            yield Market(url, seller, buyer, escrow_ids)
        finally:
            stop_process(process, process.terminate)


def stop_process(process: subprocess.Popen, ask_to_stop: Callable[[], None]) -> None:
    """ask_to_stop() and wait 30 s, then SIGTERM and wait 10 s, then SIGKILL; closes its stdout."""
    try:
        ask_to_stop()
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    process.stdout.close()


def _read_url(process: subprocess.Popen) -> str:
    """The API root the server prints once it listens (bounded wait)."""
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(process.stdout.readline().strip()), daemon=True)
    reader.start()
    reader.join(STARTUP_TIMEOUT_S)
    if not found or not found[0].startswith("http://127.0.0.1:"):
        raise RuntimeError(f"the escrow service did not start (exit code {process.poll()})")
    return found[0]


class RequestCounter:
    """Counts the HTTP requests sent through the adapters of a requests.Session (wraps their send)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def attach(self, session) -> RequestCounter:
        seen = set()
        for adapter in session.adapters.values():
            if id(adapter) in seen:  # http:// and https:// often share one adapter
                continue
            seen.add(id(adapter))
            original = adapter.send

            def send(request, *args, _original=original, **kwargs):
                with self._lock:
                    self.count += 1
                return _original(request, *args, **kwargs)

            adapter.send = send
        return self

    def reset(self) -> int:
        with self._lock:
            count, self.count = self.count, 0
        return count


def tempdir(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix)
