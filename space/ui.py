"""The tabs every paid Space shows: "Use from an agent", and in sandbox mode a throwaway wallet."""

from __future__ import annotations

import secrets
from decimal import Decimal

import gradio as gr
import requests


def agent_snippet(
    space_url: str, escrow_api_url: str, seller_id: str, sandbox: bool, *, api_name: str, example_input: str
) -> str:
    """The copy-paste instructions for an agent, with this Space's own URLs and paid endpoint."""
    funding = (
        f"""# Sandbox: register a buyer and claim free test USDC.
key = requests.post(f"{{ESCROW}}/agents", json={{"name": "my-agent"}}).json()["api_key"]
auth = {{"Authorization": f"Bearer {{key}}"}}
requests.post(f"{{ESCROW}}/faucet", json={{"amount_usdc": "1"}}, headers=auth).raise_for_status()"""
        if sandbox
        else """# Your buyer key from the escrow service (never the seller's).
auth = {"Authorization": "Bearer pf_live_..."}"""
    )
    return f"""```python
import requests
from gradio_client import Client

client = Client("{space_url}")
pricing = client.predict(api_name="/pricing")   # free: seller ID, price, escrow API
ESCROW = pricing["escrow_api"]                  # {escrow_api_url}
SELLER_ID = pricing["seller_id"]                # {seller_id}

{funding}

# Lock USDC for this Space; it pays for calls until it expires.
escrow = requests.post(f"{{ESCROW}}/escrow", headers=auth, json={{
    "seller_id": SELLER_ID, "amount_usdc": "0.05", "ttl_seconds": 3600,
}}).json()
escrow_id = escrow["id"]

# Pass the escrow ID as an argument...
result, receipt = client.predict({example_input}, escrow_id, api_name="/{api_name}")

# ...or once for every call, as a header.
client = Client("{space_url}", headers={{"X-Escrow-Id": escrow_id}})
result, receipt = client.predict({example_input}, "", api_name="/{api_name}")
print(result, receipt)
```"""


def _agent_tab(space_url: str, escrow_api_url: str, seller_id: str, sandbox: bool, **example: str) -> None:
    gr.Markdown(
        f"This Space's seller ID: `{seller_id}`. Open an escrow naming it at "
        f"`{escrow_api_url}`, then pass the escrow ID with each call."
    )
    gr.Markdown(agent_snippet(space_url, escrow_api_url, seller_id, sandbox, **example))


def _wallet_tab(
    api_url: str, seller_id: str, escrow_usdc: Decimal, escrow_box: gr.Textbox | None, escrow_tab: str | None
) -> None:
    """A person's sandbox buyer: register, claim faucet USDC, open an escrow for this Space (landing in `escrow_box`)."""
    session = requests.Session()

    def call(method: str, path: str, key: str | None, body: dict | None = None) -> dict:
        headers = {"Idempotency-Key": secrets.token_hex(16)} if method == "POST" else {}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        response = session.request(method, api_url + path, json=body, headers=headers, timeout=10)
        payload = response.json()
        if response.status_code >= 400:
            raise gr.Error(payload.get("error", {}).get("message", "The sandbox refused."), print_exception=False)
        return payload

    def register(buyer: dict | None):
        if buyer:
            return buyer, _wallet_status(buyer, call)
        created = call("POST", "/agents", None, {"name": "browser-buyer"})
        buyer = {"agent_id": created["agent_id"], "api_key": created["api_key"]}
        return buyer, _wallet_status(buyer, call)

    def faucet(buyer: dict | None):
        if not buyer:
            raise gr.Error("Register a buyer first.", print_exception=False)
        call("POST", "/faucet", buyer["api_key"], {"amount_usdc": "10"})
        return _wallet_status(buyer, call)

    def open_escrow(buyer: dict | None, amount: str, ttl_minutes: float):
        if not buyer:
            raise gr.Error("Register a buyer first.", print_exception=False)
        escrow = call(
            "POST",
            "/escrow",
            buyer["api_key"],
            {
                "seller_id": seller_id,
                "amount_usdc": (amount or "").strip(),
                "ttl_seconds": int(ttl_minutes * 60),
                "description": "browser demo",
            },
        )
        landed = (escrow["id"],) if escrow_box is not None else ()
        return escrow["id"], *landed, _wallet_status(buyer, call)

    buyer_state = gr.State(None)
    lands = f"the {escrow_tab} tab" if escrow_tab else "the Escrow ID box" if escrow_box is not None else "below"
    gr.Markdown(
        "A throwaway buyer in this Space's sandbox: no account, no real money. "
        f"The escrow you open lands in {lands}."
    )
    with gr.Row():
        register_button = gr.Button("1. Register a buyer")
        faucet_button = gr.Button("2. Claim 10 test USDC")
    with gr.Row():
        amount = gr.Textbox(label="Escrow amount (USDC)", value=f"{escrow_usdc:f}")
        ttl = gr.Number(label="Expires after (minutes)", value=60, precision=0, minimum=1, maximum=2880)
    open_button = gr.Button("3. Open an escrow for this Space", variant="primary")
    new_escrow = gr.Textbox(label="New escrow ID", interactive=False, elem_id="new-escrow-id")
    status = gr.Markdown(elem_id="wallet-status")
    landing = [escrow_box] if escrow_box is not None else []
    register_button.click(register, [buyer_state], [buyer_state, status], api_visibility="private")
    faucet_button.click(faucet, [buyer_state], [status], api_visibility="private")
    open_button.click(
        open_escrow, [buyer_state, amount, ttl], [new_escrow, *landing, status], api_visibility="private"
    )


def _wallet_status(buyer: dict, call) -> str:
    me = call("GET", "/me", buyer["api_key"])
    return f"Buyer `{me['agent_id']}`: balance **{me['balance_usdc']} USDC**, {me['escrows_open']} escrow(s) open."
