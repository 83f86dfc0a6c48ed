"""Deducts per second: over HTTP (`python -m escrow serve` in a subprocess) vs straight against the Store.

`python -m bench.bench_ledger [--short]` prints one table; `run(short)` returns its rows.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from escrow import Store

REPO = Path(__file__).resolve().parents[1]
CLIENT_COUNTS = (1, 8, 32)
DEDUCT_MICRO = 1_000  # 0.001 USDC


def _setup(store: Store, clients: int) -> tuple[dict, list[str]]:
    """A seller and one escrow per client, funded by admin grant (no faucet cap)."""
    seller = store.register_agent("bench-seller")
    escrow_ids = []
    for _ in range(clients):
        buyer = store.register_agent("bench-buyer")
        store.grant(buyer["agent_id"], 10**12)
        outcome = store.create_escrow(
            buyer["api_key"], seller_id=seller["agent_id"], amount_micro=10**12, ttl_seconds=172_800,
            description="bench", meta={}, release_condition=None,
        )
        escrow_ids.append(outcome.json()["id"])
    return seller, escrow_ids


def _measure(clients: int, seconds: float, one_deduct) -> float:
    """Run `one_deduct(client_index, session)` in `clients` threads for `seconds`; returns deducts/s."""
    counts = [0] * clients
    stop = threading.Event()
    barrier = threading.Barrier(clients + 1)

    def worker(index: int) -> None:
        with requests.Session() as session:
            barrier.wait()
            while not stop.is_set():
                one_deduct(index, session)
                counts[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def _store_rate(db: Path, clients: int, seconds: float) -> float:
    store = Store(db)
    try:
        seller, escrow_ids = _setup(store, clients)
        key = seller["api_key"]

        def deduct(index: int, _: requests.Session) -> None:
            outcome = store.deduct(key, escrow_ids[index], amount_micro=DEDUCT_MICRO, reason=None)
            assert outcome.status == 200, outcome.body

        return _measure(clients, seconds, deduct)
    finally:
        store.close()


def _http_rate(db: Path, clients: int, seconds: float) -> float:
    store = Store(db)
    seller, escrow_ids = _setup(store, clients)
    store.close()
    process = subprocess.Popen(
        [sys.executable, "-m", "escrow", "serve", "--port", "0", "--db", str(db)],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = process.stdout.readline().strip()
        headers = {"Authorization": f"Bearer {seller['api_key']}"}
        payload = b'{"amount_usdc": "0.001"}'

        def deduct(index: int, session: requests.Session) -> None:
            response = session.post(f"{url}/escrow/{escrow_ids[index]}/deduct", data=payload, headers=headers,
                                    timeout=60)
            assert response.status_code == 200, response.text

        return _measure(clients, seconds, deduct)
    finally:
        process.terminate()
        process.wait(30)
        process.stdout.close()


def run(short: bool = False) -> list[dict]:
    """One row per client count: deducts/s over HTTP, straight on the Store, and their ratio."""
    seconds = 2.0 if short else 6.0
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        for clients in CLIENT_COUNTS:
            store_rate = _store_rate(Path(tmp) / f"store-{clients}.db", clients, seconds)
            http_rate = _http_rate(Path(tmp) / f"http-{clients}.db", clients, seconds)
            rows.append({
                "benchmark": "ledger deduct",
                "clients": clients,
                "http_deducts_per_s": round(http_rate, 1),
                "store_deducts_per_s": round(store_rate, 1),
                "store_over_http": round(store_rate / http_rate, 2) if http_rate else None,
            })
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width table."""
    lines = [f"{'clients':>7}  {'HTTP deducts/s':>14}  {'Store deducts/s':>15}  {'Store/HTTP':>10}"]
    for row in rows:
        lines.append(f"{row['clients']:>7}  {row['http_deducts_per_s']:>14.1f}  {row['store_deducts_per_s']:>15.1f}"
                     f"  {row['store_over_http']:>9.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--short", action="store_true", help="2 s per measurement instead of 6 s")
    args = parser.parse_args(argv)
    print(f"Ledger deducts/s (SQLite WAL, synchronous=NORMAL) on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; HTTP = requests.Session per client thread -> uvicorn (h11), "
          f"one escrow per client")
    print(format_table(run(args.short)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
