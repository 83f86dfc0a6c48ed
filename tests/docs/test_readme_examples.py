"""The README's "gate your own function" examples, run exactly as printed: each is a process paying a real escrow
service over HTTP; it is stopped with SIGTERM as a Space is, and every receipt it handed out must be captured."""

from __future__ import annotations

import json
import re
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from tests.support.processes import REPO, ServerProcess, child_env, escrow_process, free_port
from tests.support.space import EscrowApi, final_event

pytestmark = pytest.mark.crash  # processes stopped by signal


def readme_example(name: str, language: str = "python") -> str:
    """The code block right after ``<!-- example: name -->`` in README.md."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- example: %s -->\s*```%s\n(.*?)```" % (re.escape(name), language), text, re.S)
    assert match, f"README.md has no example {name!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def escrow_service(tmp_path_factory):
    service = escrow_process(tmp_path_factory.mktemp("escrow")).start()
    yield service
    service.stop()


@pytest.fixture
def market(escrow_service):
    api = EscrowApi(escrow_service.base_url + "/api")
    seller, buyer = api.register("seller"), api.register("buyer")
    api.fund(buyer, "10")
    return api, seller, buyer


def run_example(tmp_path: Path, name: str, seller, escrow_service, argv: list[str]) -> ServerProcess:
    """``shop.py`` (the example) started by ``argv`` (``{port}`` filled in), on the seller's key."""
    (tmp_path / "shop.py").write_text(readme_example(name))
    port = free_port()
    env = child_env(
        PF_API_KEY=seller.api_key, ESCROW_URL=escrow_service.base_url + "/api", GRADIO_SERVER_PORT=str(port),
        PYTHONPATH=str(REPO),
    )
    env.pop("DATA_DIR", None)  # no data folder: the journal is in memory, so only the clean stop can capture
    process = ServerProcess([arg.format(port=port) for arg in argv], env, port, tmp_path / "shop.log")
    process.start()
    return process


def assert_receipts_captured(api: EscrowApi, buyer, escrow_id: str, receipts: list[dict]) -> None:
    escrow = api.escrow(buyer, escrow_id)
    charged = sum(Decimal(r["charged_usdc"]) for r in receipts)
    assert charged > 0
    assert Decimal(str(escrow["spent_usdc"])) == charged, escrow
    assert Decimal(str(escrow["held_usdc"])) == 0, escrow  # the rest of each lease went back to the buyer


def test_gradio_example_as_printed_captures_every_receipt_on_sigterm(tmp_path, market, escrow_service):
    api, seller, buyer = market
    escrow_id = api.open_escrow(buyer, seller.agent_id, "1")
    space = run_example(tmp_path, "gradio", seller, escrow_service, [sys.executable, str(tmp_path / "shop.py")])
    try:
        receipts = []
        for word in ("hi", "there", "again"):
            url = f"{space.base_url}/gradio_api/call/shout"
            answer = requests.post(url, json={"data": [word, escrow_id]}, timeout=30)
            assert answer.status_code == 200, answer.text
            event, data = final_event(requests.get(f"{url}/{answer.json()['event_id']}", timeout=30).text)
            assert event == "complete", data
            out, receipt = data
            assert out == word.upper() and receipt["settlement"] == "lease"
            receipts.append(receipt)
        # Before the stop the leases have captured at most part of it: the stop must capture the rest.
        assert space.stop() is not None, space.log()
    finally:
        space.kill()
    assert "Traceback" not in space.log(), space.log()
    assert_receipts_captured(api, buyer, escrow_id, receipts)


def test_fastapi_example_as_printed(tmp_path, market, escrow_service):
    api, seller, buyer = market
    escrow_id = api.open_escrow(buyer, seller.agent_id, "1")
    argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(tmp_path), "--port", "{port}", "shop:app"]
    shop = run_example(tmp_path, "fastapi", seller, escrow_service, argv)
    try:
        url = f"{shop.base_url}/v1/shout"
        receipts = []
        for word in ("hi", "there"):
            answer = requests.post(url, json={"text": word}, headers={"X-Escrow-Id": escrow_id}, timeout=30)
            assert answer.status_code == 200, answer.text
            assert answer.json()["result"] == word.upper()
            receipts.append(answer.json()["receipt"])
        missing = requests.post(url, json={"text": "hi"}, timeout=30)
        assert missing.status_code == 402
        assert missing.json()["error"]["code"] == "missing_escrow_id"
        assert missing.json()["payment"]["seller_id"] == seller.agent_id
        assert "not charged" in missing.json()["error"]["message"]
        bad_input = requests.post(url, json={"txt": "hi"}, headers={"X-Escrow-Id": escrow_id}, timeout=30)
        assert bad_input.status_code == 422  # FastAPI's own validation: nothing reserved
        assert shop.stop() is not None, shop.log()
    finally:
        shop.kill()
    assert "Traceback" not in shop.log(), shop.log()
    assert_receipts_captured(api, buyer, escrow_id, receipts)
    assert json.dumps(receipts)  # JSON-able as received
