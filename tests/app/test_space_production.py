"""The Space in production mode against a separately started escrow service standing in for the hosted one."""

from __future__ import annotations

from decimal import Decimal

import pytest
import requests
from gradio_client import Client

from tests.support.space import EscrowApi
from tests.support.processes import escrow_process, space_process


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    server = escrow_process(tmp_path_factory.mktemp("hosted")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def production_space(tmp_path_factory, hosted, tiny_model_dir):
    api = EscrowApi(hosted.base_url + "/api")
    seller = api.register("production-seller")
    tmp = tmp_path_factory.mktemp("prod-space")
    server = space_process(
        tmp, PF_API_KEY=seller.api_key, ESCROW_URL=hosted.base_url + "/api", MODEL_ID=str(tiny_model_dir)
    ).start()
    yield server, api, seller
    server.stop()


def test_no_sandbox_routes_and_no_wallet_tab(production_space):
    server, _, _ = production_space
    assert requests.get(server.base_url + "/sandbox/api/me", timeout=10).status_code == 404
    assert requests.post(server.base_url + "/sandbox/api/agents", json={}, timeout=10).status_code in (404, 405)
    config = requests.get(server.base_url + "/config", timeout=10).json()
    labels = [c.get("props", {}).get("label") for c in config["components"]]
    assert "Classify" in labels
    assert "Use from an agent" in labels
    assert "Sandbox wallet" not in labels


def test_calls_are_charged_on_the_configured_service(production_space):
    server, api, seller = production_space
    buyer = api.register("production-buyer")
    api.fund(buyer, "1")
    escrow_id = api.open_escrow(buyer, seller.agent_id, "0.01")
    client = Client(server.base_url + "/", verbose=False)
    pricing = client.predict(api_name="/pricing")
    assert pricing["seller_id"] == seller.agent_id
    assert pricing["mode"] == "production"
    assert pricing["escrow_api"] == api.root  # buyers open escrows where the Space charges them
    result, receipt = client.predict("what a lovely day", escrow_id, api_name="/classify")
    assert result["label"] in {"negative", "neutral", "positive"}
    escrow = api.escrow_once_spent(buyer, escrow_id, Decimal("0.001"))
    assert escrow["spent_usdc"] == Decimal("0.001")
    assert Decimal(receipt["remaining_usdc"]) == escrow["remaining_usdc"] + escrow["held_usdc"]
    assert seller.api_key not in server.log()


def _refused_start(tmp_path, hosted, api_key: str, model_id: str) -> tuple[int, str]:
    """Start a production Space that must refuse to start; its exit code and output."""
    server = space_process(tmp_path, PF_API_KEY=api_key, ESCROW_URL=hosted.base_url + "/api", MODEL_ID=model_id)
    try:
        server.start(timeout_s=90)
    except RuntimeError:
        pass
    else:  # pragma: no cover - the caller's assertions fail
        server.stop()
    return server.process.wait(30), server.log()


def test_unloadable_model_stops_production_with_one_sentence(tmp_path, hosted):
    seller = EscrowApi(hosted.base_url + "/api").register("seller-with-no-model")  # the key is checked first
    code, output = _refused_start(tmp_path, hosted, seller.api_key, str(tmp_path / "no-such-model"))
    assert code != 0
    assert "Traceback" not in output
    assert "Cannot start the Space:" in output
    assert "MODEL_ID" in output


def test_a_key_the_escrow_service_rejects_stops_the_space_with_one_sentence(tmp_path, hosted):
    code, output = _refused_start(tmp_path, hosted, "pf_test_" + "y" * 32, "vader")
    assert code == 1
    assert "Traceback" not in output
    assert "Cannot start the Space:" in output and "PF_API_KEY" in output
    assert "y" * 32 not in output
