"""Sandbox mode starts on a machine that cannot download the reference model, and says what answers."""

from __future__ import annotations

import requests
from gradio_client import Client

from tests.support.processes import space_process
from tests.support.space import EscrowApi


def test_offline_sandbox_falls_back_to_vader_and_says_so(tmp_path):
    # HF_HUB_OFFLINE=1 in the child: the default hub model cannot be fetched.
    server = space_process(tmp_path).start()
    try:
        page_config = requests.get(server.base_url + "/config", timeout=10).text
        assert "Offline fallback" in page_config
        assert "fallback" in server.log().lower()

        client = Client(server.base_url + "/", verbose=False)
        pricing = client.predict(api_name="/pricing")
        assert pricing["model"] == "vader"
        sandbox = EscrowApi(server.base_url + "/sandbox/api")
        buyer = sandbox.register()
        sandbox.fund(buyer, "1")
        escrow_id = sandbox.open_escrow(buyer, pricing["seller_id"], "0.01")
        result, receipt = client.predict("I love this, it is wonderful!", escrow_id, api_name="/classify")
        assert result["label"] == "positive"
        assert receipt["model"] == "vader"
    finally:
        server.stop()
