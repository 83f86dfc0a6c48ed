"""The parts of the page every paid Space shows: the escrow box (with, in sandbox mode, a one-click escrow),
the payment status line, "Use from an agent", and in sandbox mode a throwaway wallet."""

from __future__ import annotations

import secrets
from decimal import Decimal
from typing import Any

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


def usdc_text(value: object) -> str:
    """A USDC amount (Decimal, or a string or number from an answer) as a person reads it: 0.049, 10, 0.000001."""
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        return str(value)
    return f"{amount.normalize():f}" if amount.is_finite() else str(value)


class WalletRefused(Exception):
    """The sandbox (or the wallet itself) refused a step; ``str()`` is a sentence for the person."""


class SandboxWallet:
    """A person's throwaway sandbox buyer: used by the one-click button beside the escrow box and the wallet tab.

    The buyer (``{"agent_id", "api_key"}``) lives in the page session's ``gr.State``, never on the server.
    `call_price_usdc`: what one call costs; an escrow smaller than that is refused with a sentence.
    """

    def __init__(
        self, api_url: str, seller_id: str, *, escrow_usdc: Decimal, call_price_usdc: Decimal | None = None
    ) -> None:
        self.api_url = api_url
        self.seller_id = seller_id
        self.escrow_usdc = escrow_usdc
        self.call_price_usdc = call_price_usdc
        self._session = requests.Session()

    def call(self, method: str, path: str, key: str | None, body: dict | None = None) -> dict:
        """One request to the sandbox escrow API; WalletRefused with its sentence if it refuses."""
        headers = {"Idempotency-Key": secrets.token_hex(16)} if method == "POST" else {}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            response = self._session.request(method, self.api_url + path, json=body, headers=headers, timeout=10)
            payload = response.json()
        except (requests.RequestException, ValueError):
            raise WalletRefused("The sandbox did not answer; wait a few seconds and try again.") from None
        if response.status_code >= 400:
            message = payload.get("error", {}).get("message") if isinstance(payload, dict) else None
            raise WalletRefused(message or "The sandbox refused.")
        return payload

    def register(self, buyer: dict | None) -> dict:
        """The session's buyer, registered now if it has none yet."""
        if buyer:
            return buyer
        created = self.call("POST", "/agents", None, {"name": "browser-buyer"})
        return {"agent_id": created["agent_id"], "api_key": created["api_key"]}

    def faucet(self, buyer: dict, amount: str = "10") -> None:
        self.call("POST", "/faucet", buyer["api_key"], {"amount_usdc": amount})

    def balance(self, buyer: dict) -> Decimal:
        return Decimal(str(self.call("GET", "/me", buyer["api_key"])["balance_usdc"]))

    def check_amount(self, amount: str) -> str:
        """`amount` stripped; WalletRefused when it cannot pay for one call (malformed: the sandbox says why)."""
        amount = (amount or "").strip()
        try:
            value = Decimal(amount)
        except ArithmeticError:
            return amount
        price = self.call_price_usdc
        if price is not None and value.is_finite() and 0 < value < price:
            raise WalletRefused(
                f"An escrow of {usdc_text(value)} USDC cannot pay for a single call: one call costs "
                f"{usdc_text(price)} USDC. Open one of at least {usdc_text(price)} USDC "
                f"(the suggested {usdc_text(self.escrow_usdc)} USDC pays for {self.calls(self.escrow_usdc)} calls)."
            )
        return amount

    def calls(self, amount: Decimal) -> int | None:
        """How many calls `amount` pays for, if the price is known."""
        return int(amount // self.call_price_usdc) if self.call_price_usdc else None

    def open_escrow(self, buyer: dict, amount: str, ttl_seconds: int) -> dict:
        """A new escrow for this Space's seller (the escrow object)."""
        body = {
            "seller_id": self.seller_id,
            "amount_usdc": self.check_amount(amount),
            "ttl_seconds": ttl_seconds,
            "description": "browser demo",
        }
        return self.call("POST", "/escrow", buyer["api_key"], body)

    def one_click(self, buyer: dict | None) -> tuple[dict, str, str]:
        """Register (once), claim test USDC when the balance is short, open an escrow: (buyer, escrow ID, sentence)."""
        buyer = self.register(buyer)
        if self.balance(buyer) < self.escrow_usdc:
            self.faucet(buyer)
        escrow = self.open_escrow(buyer, f"{self.escrow_usdc:f}", ONE_CLICK_TTL_S)
        calls = self.calls(self.escrow_usdc)
        pays_for = f", enough for {calls} calls" if calls else ""
        return buyer, escrow["id"], (
            f"Opened escrow `{escrow['id']}` with **{usdc_text(self.escrow_usdc)} test USDC**{pays_for}, "
            f"for {ONE_CLICK_TTL_S // 60} minutes. Now click **Classify**."
        )

    def status(self, buyer: dict) -> str:
        me = self.call("GET", "/me", buyer["api_key"])
        return (
            f"Buyer `{me['agent_id']}`: balance **{usdc_text(me['balance_usdc'])} USDC**, "
            f"{me['escrows_open']} escrow(s) open."
        )


#: How long the one-click escrow stays open.
ONE_CLICK_TTL_S = 3600
ONE_CLICK_LABEL = "Get test USDC + open an escrow"


def escrow_row(
    wallet: SandboxWallet | None, buyer_state: gr.State | None, textbox: dict[str, Any]
) -> tuple[gr.Textbox, gr.Markdown]:
    """The "Escrow ID" box, in sandbox mode with the one-click escrow button beside it, and the payment status line.

    The status line (elem_id payment-status) is where the page says what a call cost or why it was refused.
    """
    options = {"label": "Escrow ID", "placeholder": "esc_...", "elem_id": "escrow-id", **textbox}
    with gr.Row(equal_height=True, elem_classes="escrow-row"):
        box = gr.Textbox(scale=3, min_width=200, **options)
        button = None
        if wallet is not None and buyer_state is not None:
            button = gr.Button(ONE_CLICK_LABEL, scale=1, min_width=160, elem_id="one-click-escrow")
    status = gr.Markdown(elem_id="payment-status", elem_classes="paid-status")
    if button is not None:

        def open_in_one_click(buyer: dict | None):
            """Sandbox: register a throwaway buyer, claim test USDC and open an escrow, in one click."""
            try:
                buyer, escrow_id, sentence = wallet.one_click(buyer)
            except WalletRefused as exc:
                return gr.skip(), gr.skip(), f"⚠ Could not open an escrow: {exc}"
            return buyer, escrow_id, f"✓ {sentence}"

        button.click(
            open_in_one_click, [buyer_state], [buyer_state, box, status], api_visibility="private",
            concurrency_limit=8,
        )
    return box, status


def receipt_note(receipt: dict[str, Any]) -> str:
    """What a paid call cost and what its escrow has left, in words: "Paid 0.001 USDC · 0.049 USDC left in esc_…"."""
    paid = f"Paid **{usdc_text(receipt.get('charged_usdc', '0'))} USDC**{usage_text(receipt.get('usage'))}"
    escrow_id = receipt.get("escrow_id") or "your escrow"
    remaining = receipt.get("remaining_usdc")
    left = f"**{usdc_text(remaining)} USDC** left in `{escrow_id}`" if remaining is not None else f"from `{escrow_id}`"
    model = f" · answered by **{receipt['model']}**" if receipt.get("model") else ""
    return f"✓ {paid} · {left}{model}"


def usage_text(usage: Any) -> str:
    """What a charge was measured from, in words: " for 31 input tokens and 80 output tokens" ("" for none)."""
    if not isinstance(usage, dict) or not usage:
        return ""
    parts = [f"{count:,}" if isinstance(count, int) else str(count) for count in usage.values()]
    words = [f"{part} {str(name).replace('_', ' ')}" for part, name in zip(parts, usage)]
    return " for " + (", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else words[0])


def refusal_note(exc: Any, *, sandbox: bool, kept_result: bool = False) -> str:
    """A refused or failed paid call (a ``gate.GateError``: ``code``, ``sentence``, ``charged``) as what to do next."""
    if sandbox:
        get_escrow = (
            f"click **{ONE_CLICK_LABEL}** beside the Escrow ID box (one click), "
            "or open one step by step in the **Sandbox wallet** tab."
        )
    else:
        get_escrow = (
            "open a USDC escrow naming this Space's seller ID (see the **Use from an agent** tab) "
            "and paste its ID in the Escrow ID box."
        )
    code = getattr(exc, "code", "")
    sentence = getattr(exc, "sentence", None) or str(exc)
    not_charged = "" if getattr(exc, "charged", False) else " You were not charged."
    if code == "missing_escrow_id":
        text = f"Each call is paid from a USDC escrow, and the Escrow ID box is empty: {get_escrow}{not_charged}"
    elif code == "invalid_escrow_id":
        text = (
            "The Escrow ID box does not hold an escrow ID (`esc_` followed by 20 to 40 letters and digits). "
            f"Paste it again, or {get_escrow}{not_charged}"
        )
    elif code in ("escrow_not_found", "escrow_closed", "escrow_expired"):
        text = f"{sentence} Open a new one: {get_escrow}"
    elif code == "insufficient_funds":
        text = f"{sentence} To top up, open a new escrow: {get_escrow}"
    elif code in ("service_unavailable", "settlement_failed", "function_failed"):
        text = f"{sentence} Wait a few seconds, then click the button again."
    else:
        text = sentence
    if kept_result:
        text += " The result below is from your last paid call."
    return f"⚠ {text}"


#: The page's own CSS (Gradio 6 takes CSS at mount time; this rides in the page): long IDs wrap at 390 px
#: (Gradio's JSON view would otherwise clip them), and a value's comma stays on its line.
PAGE_STYLE = """<style>
#payment-status, #wallet-status, #model-note { overflow-wrap: anywhere; }
#payment-status code, #wallet-status code, #model-note code { white-space: normal; overflow-wrap: anywhere; }
#receipt .content, #result .content { display: inline; }
#receipt .value, #result .value { overflow-wrap: anywhere; }
</style>"""


def page_style() -> gr.HTML:
    """An invisible block holding PAGE_STYLE."""
    return gr.HTML(PAGE_STYLE, elem_id="paid-space-style", padding=False, container=False, js_on_load=None)


def _wallet_tab(
    wallet: SandboxWallet, buyer_state: gr.State, escrow_box: gr.Textbox | None, escrow_tab: str | None
) -> None:
    """The step-by-step sandbox buyer: register, claim faucet USDC, open an escrow (landing in `escrow_box`).

    A refusal (e.g. an escrow smaller than one call) is a sentence in the status line, not a pop-up.
    """

    def register(buyer: dict | None):
        try:
            buyer = wallet.register(buyer)
            return buyer, wallet.status(buyer)
        except WalletRefused as exc:
            return gr.skip(), f"⚠ {exc}"

    def faucet(buyer: dict | None):
        if not buyer:
            return "⚠ Register a buyer first (step 1)."
        try:
            wallet.faucet(buyer)
            return wallet.status(buyer)
        except WalletRefused as exc:
            return f"⚠ {exc}"

    def open_escrow(buyer: dict | None, amount: str, ttl_minutes: float):
        landed = (gr.skip(),) if escrow_box is not None else ()
        if not buyer:
            return gr.skip(), *landed, "⚠ Register a buyer first (step 1)."
        try:
            escrow = wallet.open_escrow(buyer, amount, int((ttl_minutes or 60) * 60))
            status = wallet.status(buyer)
        except WalletRefused as exc:
            return gr.skip(), *landed, f"⚠ {exc}"
        landed = (escrow["id"],) if escrow_box is not None else ()
        return escrow["id"], *landed, status

    lands = f"the {escrow_tab} tab" if escrow_tab else "the Escrow ID box" if escrow_box is not None else "below"
    price = wallet.call_price_usdc
    minimum = f" An escrow must hold at least one call's price ({usdc_text(price)} USDC)." if price else ""
    gr.Markdown(
        "A throwaway buyer in this Space's sandbox: no account, no real money. "
        f"The escrow you open lands in {lands}.{minimum}"
    )
    with gr.Row():
        register_button = gr.Button("1. Register a buyer")
        faucet_button = gr.Button("2. Claim 10 test USDC")
    with gr.Row():
        amount = gr.Textbox(label="Escrow amount (USDC)", value=f"{wallet.escrow_usdc:f}")
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
