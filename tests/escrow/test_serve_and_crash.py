"""`python -m escrow serve` as a real process: clean stop, --no-holds, and SIGKILL in the middle of a deduct storm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from escrow import Store

REPO = Path(__file__).resolve().parents[2]


class ServeProcess:
    """`python -m escrow serve --port 0` on a database; `url` is what it printed."""

    def __init__(self, db: Path, *extra: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "escrow", "serve", "--port", "0", "--db", str(db), *extra],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        line = self.process.stdout.readline().strip()
        assert line.startswith("http://127.0.0.1:") and line.endswith("/api"), line + self.process.stdout.read()
        self.url = line

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        self.process.stdout.close()
        return code

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)
        self.process.stdout.close()


def _post(session: requests.Session, url: str, key: str | None, payload: dict, idem: str | None = None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if idem:
        headers["Idempotency-Key"] = idem
    import json

    return session.post(url, data=json.dumps(payload).encode(), headers=headers, timeout=30)


def _agents_and_escrow(url: str, amount: str = "100") -> tuple[dict, dict, dict]:
    with requests.Session() as session:
        buyer = _post(session, url + "/agents", None, {}).json()
        seller = _post(session, url + "/agents", None, {}).json()
        assert _post(session, url + "/faucet", buyer["api_key"], {"amount_usdc": amount}).status_code == 200
        escrow = _post(session, url + "/escrow", buyer["api_key"],
                       {"seller_id": seller["agent_id"], "amount_usdc": amount, "ttl_seconds": 3600})
        assert escrow.status_code == 201, escrow.text
        return buyer, seller, escrow.json()


def test_serve_prints_its_url_serves_and_stops_cleanly_on_sigterm(tmp_path):
    server = ServeProcess(tmp_path / "serve.db")
    try:
        buyer, seller, escrow = _agents_and_escrow(server.url, "5")
        with requests.Session() as session:
            hold = _post(session, f"{server.url}/escrow/{escrow['id']}/holds", seller["api_key"], {"amount_usdc": "1"})
            assert hold.status_code == 201
    finally:
        assert server.terminate() == 0
    store = Store(tmp_path / "serve.db")
    try:
        store.check_invariants()
        assert store.balance_micro(buyer["agent_id"]) == 0
    finally:
        store.close()


def test_serve_without_holds_answers_404_on_the_holds_routes(tmp_path):
    server = ServeProcess(tmp_path / "noholds.db", "--no-holds", "--latency-ms", "1")
    try:
        buyer, seller, escrow = _agents_and_escrow(server.url, "5")
        with requests.Session() as session:
            hold = _post(session, f"{server.url}/escrow/{escrow['id']}/holds", seller["api_key"], {"amount_usdc": "1"})
            assert hold.status_code == 404 and hold.json()["error"]["code"] == "not_found"
            deduct = _post(session, f"{server.url}/escrow/{escrow['id']}/deduct", seller["api_key"],
                           {"amount_usdc": "1"})
            assert deduct.status_code == 200
    finally:
        assert server.terminate() == 0


@pytest.mark.crash
@pytest.mark.slow
def test_sigkill_mid_deduct_storm_then_retries_apply_each_request_exactly_once(tmp_path):
    db = tmp_path / "crash.db"
    server = ServeProcess(db)
    buyer, seller, escrow = _agents_and_escrow(server.url)
    deduct_path = f"/escrow/{escrow['id']}/deduct"
    amounts = {}  # idempotency key -> micro amount (distinct amounts make every effect identifiable)
    answered: dict[str, dict] = {}  # key -> first response body seen before the crash
    in_flight: set[str] = set()
    lock = threading.Lock()
    enough = threading.Event()
    killed = threading.Event()

    def storm(worker: int) -> None:
        with requests.Session() as session:
            for n in range(10_000):
                if killed.is_set():
                    return
                key = f"w{worker}-{n}"
                micro = 1000 + worker * 10_000 + n  # 0.001... USDC, unique per request
                with lock:
                    amounts[key] = micro
                    in_flight.add(key)
                try:
                    response = _post(session, server.url + deduct_path, seller["api_key"],
                                     {"amount_usdc": str(Decimal(micro) / 10**6)}, key)
                except requests.RequestException:
                    return  # the server died with this request in flight
                assert response.status_code == 200, response.text
                with lock:
                    in_flight.discard(key)
                    answered[key] = response.json()
                    if len(answered) >= 60:
                        enough.set()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(storm, worker) for worker in range(8)]
        assert enough.wait(120), "the storm never got going"
        server.kill()  # SIGKILL: no shutdown, no lifespan, mid-transaction for some requests
        killed.set()
        for future in futures:
            future.result()
    assert in_flight, "no request was in flight at the kill"

    restarted = ServeProcess(db)
    try:
        with requests.Session() as session:
            url = restarted.url + deduct_path
            for key in sorted(in_flight):
                retry = _post(session, url, seller["api_key"], {"amount_usdc": str(Decimal(amounts[key]) / 10**6)}, key)
                assert retry.status_code == 200, retry.text
            for key in sorted(answered)[:10]:  # already answered: the replay is the same answer, no new effect
                replay = _post(session, url, seller["api_key"],
                               {"amount_usdc": str(Decimal(amounts[key]) / 10**6)}, key)
                assert replay.json() == answered[key]
            state = session.get(f"{restarted.url}/escrow/{escrow['id']}",
                                headers={"Authorization": f"Bearer {buyer['api_key']}"}, timeout=30).json()
    finally:
        assert restarted.terminate() == 0

    applied = set(answered) | in_flight
    expected_spent = sum(amounts[key] for key in applied)
    assert Decimal(str(state["spent_usdc"])) * 10**6 == expected_spent
    store = Store(db)
    try:
        store.check_invariants()
        import sqlite3

        conn = sqlite3.connect(db)
        try:
            count, total = conn.execute(
                "SELECT COUNT(*), SUM(gross_micro) FROM settlements WHERE escrow_id = ?", (escrow["id"],)
            ).fetchone()
        finally:
            conn.close()
        assert (count, total) == (len(applied), expected_spent)
    finally:
        store.close()
