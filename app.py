"""The Space: a paid sentiment classifier, gated by an escrow.

Two modes, chosen by the environment alone:
- sandbox (no ``PF_API_KEY``): the sandbox escrow runs inside this process and is
  served on the same port under ``/sandbox/api``; a wallet tab lets a person get
  test USDC and open an escrow.
- production (``PF_API_KEY`` set): the hosted escrow service (``ESCROW_URL``);
  no sandbox route and no wallet tab exist.

This module only wires things: ``gate/`` charges, ``escrow/`` is the sandbox,
``models/`` classifies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sys
import tempfile
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import anyio.to_thread  # noqa: E402
import gradio as gr  # noqa: E402
import requests  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from gate import EscrowGate, GateError, JournalInUse, Lease, PerCall  # noqa: E402
from gate.money import to_usdc  # noqa: E402
from models import DynamicBatcher, EmptyTextError, ModelLoadError, load_model  # noqa: E402
from models import MAX_TEXT_CHARS  # noqa: E402
from models import require_text as model_accepts  # noqa: E402

log = logging.getLogger("space")

SANDBOX_PREFIX = "/sandbox/api"
SELLER_FILE = "sandbox-seller.json"
SANDBOX_DB_FILE = "sandbox-escrow.db"
JOURNAL_FILE = "gate-journal.sqlite"
SETTLEMENTS = ("lease", "per_call")

# Gradio keeps the last inputs of every session in memory (for deep links), up to
# state_session_capacity sessions (10,000 by default), and every raw HTTP API call is a new
# session: unbounded, a 1 MB text stayed 1 MB, and 1 MB of JSON such as [[],[],...] stayed
# 25 MB, per call. So the Space bounds what one request may hold and how many sessions stay.
#: The largest request body read: the longest text accepted, even as JSON escapes of 12 bytes
#: a character ("\ud83d\ude00"), plus room for the other fields.
MAX_REQUEST_BYTES = 12 * MAX_TEXT_CHARS + 16 * 1024
#: The most JSON values (strings, numbers, lists, objects...) a request body may hold: "[]" is
#: 2 bytes of JSON but 56 bytes of memory. This Space's inputs are a few strings.
MAX_JSON_VALUES = 1_000
#: Sessions whose inputs Gradio keeps: about 50 KB each plus their inputs (at most
#: MAX_REQUEST_BYTES and MAX_JSON_VALUES values), so at most about 370 MB in all; a browser's
#: sandbox wallet state lasts until this many newer sessions have come.
SESSION_CAPACITY = 1_000


class ConfigError(Exception):
    """A setting the Space cannot start with; its message is one sentence saying how to fix it."""


@dataclass(frozen=True)
class SpaceConfig:
    """What the environment says this Space is."""

    api_key: str
    escrow_url: str | None
    model_id: str | None
    price_per_call: Decimal
    host: str
    port: int
    data_dir: str | None
    public_url: str
    settlement: str = "lease"

    @property
    def sandbox(self) -> bool:
        return not self.api_key

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> SpaceConfig:
        """Read PF_API_KEY, ESCROW_URL, MODEL_ID, PRICE_PER_CALL_USDC and Gradio's server settings."""
        env = dict(os.environ if env is None else env)
        raw_price = env.get("PRICE_PER_CALL_USDC", "").strip() or "0.001"
        try:
            price = Decimal(raw_price)
        except InvalidOperation:
            price = Decimal("NaN")
        if not price.is_finite() or price <= 0:
            raise ConfigError(
                f"PRICE_PER_CALL_USDC must be a positive decimal number such as 0.001, not {raw_price!r}."
            )
        try:  # what PerCall will charge: whole micro-USDC, at most MAX_USDC
            price = to_usdc(raw_price, name="PRICE_PER_CALL_USDC")
        except ValueError as exc:
            raise ConfigError(f"{exc}.") from None
        host = env.get("GRADIO_SERVER_NAME", "").strip() or "127.0.0.1"
        raw_port = env.get("GRADIO_SERVER_PORT", "").strip() or "7860"
        if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
            raise ConfigError(f"GRADIO_SERVER_PORT must be a port number, not {raw_port!r}.")
        port = int(raw_port)
        settlement = env.get("SETTLEMENT", "").strip().lower() or "lease"
        if settlement not in SETTLEMENTS:
            raise ConfigError(f"SETTLEMENT must be one of {', '.join(SETTLEMENTS)}, not {settlement!r}.")
        space_host = env.get("SPACE_HOST", "").strip()
        browse_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        public_url = f"https://{space_host}" if space_host else f"http://{browse_host}:{port}"
        return cls(
            api_key=env.get("PF_API_KEY", "").strip(),
            escrow_url=env.get("ESCROW_URL", "").strip() or None,
            model_id=env.get("MODEL_ID", "").strip() or None,
            price_per_call=price,
            host=host,
            port=port,
            data_dir=env.get("DATA_DIR", "").strip() or None,
            public_url=public_url.rstrip("/"),
            settlement=settlement,
        )

    @property
    def loopback_url(self) -> str:
        """Where this process reaches its own server (the sandbox talks to itself over HTTP)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "localhost") else self.host
        return f"http://{host}:{self.port}"


def pick_data_dir(configured: str | None) -> tuple[Path, str]:
    """Where the sandbox keeps its SQLite file, and a phrase saying why there."""
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path, "DATA_DIR"
    persistent = Path("/data")
    if persistent.is_dir() and os.access(persistent, os.W_OK):
        return persistent, "persistent storage"
    return Path(tempfile.mkdtemp(prefix="paid-space-")), "a temporary folder: its contents are lost on restart"


@dataclass
class Sandbox:
    """The in-process sandbox escrow and this Space's seller account in it."""

    store: Any
    api: Any
    sweeper: Any
    seller_id: str
    seller_key: str
    db_path: Path


def start_sandbox(data_dir: Path) -> Sandbox:
    """Open the sandbox ledger and register this Space as a seller in it (once per database)."""
    from escrow import Store, Sweeper, create_api

    db_path = data_dir / SANDBOX_DB_FILE
    store = Store(db_path)
    seller_file = data_dir / SELLER_FILE
    seller = None
    if seller_file.exists():
        seller = json.loads(seller_file.read_text())
        if not store.agent_exists(seller["agent_id"]):
            seller = None
    if seller is None:
        seller = store.register_agent(name="this-space")
        seller_file.write_text(json.dumps(seller))
        seller_file.chmod(0o600)
    return Sandbox(
        store=store,
        api=create_api(store),
        sweeper=Sweeper(store),
        seller_id=seller["agent_id"],
        seller_key=seller["api_key"],
        db_path=db_path,
    )


# ---------------------------------------------------------------- the UI


def agent_snippet(space_url: str, escrow_api_url: str, seller_id: str, sandbox: bool) -> str:
    """The copy-paste instructions for an agent, with this Space's own URLs."""
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
result, receipt = client.predict("I love this!", escrow_id, api_name="/classify")

# ...or once for every call, as a header.
client = Client("{space_url}", headers={{"X-Escrow-Id": escrow_id}})
result, receipt = client.predict("I love this!", "", api_name="/classify")
print(result, receipt)
```"""


def build_ui(
    *,
    classify,
    pricing,
    price: Decimal,
    model_note: str,
    seller_id: str,
    space_url: str,
    escrow_api_url: str,
    wallet_api_url: str | None,
) -> gr.Blocks:
    """The Blocks app: Classify, Sandbox wallet (sandbox only) and Use from an agent tabs."""
    price_text = f"{price.normalize():f}"
    with gr.Blocks(title="Paid sentiment classifier") as demo:
        gr.Markdown(
            f"# Paid sentiment classifier\nEach classification costs **{price_text} USDC**, "
            "paid from an escrow you open for this Space. Failed calls cost nothing."
        )
        if model_note:
            gr.Markdown(model_note, elem_id="model-note")
        with gr.Tabs():
            with gr.Tab("Classify", id="classify"):
                text = gr.Textbox(label="Text", lines=3, placeholder="Type something to classify")
                escrow_box = gr.Textbox(
                    label="Escrow ID", placeholder="esc_...", elem_id="escrow-id"
                )
                button = gr.Button(f"Classify ({price_text} USDC)", variant="primary")
                result = gr.JSON(label="Result", elem_id="result")
                receipt = gr.JSON(label="Receipt", elem_id="receipt")
                button.click(
                    classify,
                    [text, escrow_box],
                    [result, receipt],
                    api_name="classify",
                    concurrency_limit=32,
                )
            if wallet_api_url is not None:
                with gr.Tab("Sandbox wallet", id="wallet"):
                    _wallet_tab(wallet_api_url, seller_id, price, escrow_box)
            with gr.Tab("Use from an agent", id="agent"):
                gr.Markdown(
                    f"This Space's seller ID: `{seller_id}`. Open an escrow naming it at "
                    f"`{escrow_api_url}`, then pass the escrow ID with each call."
                )
                gr.Markdown(agent_snippet(space_url, escrow_api_url, seller_id, wallet_api_url is not None))
        gr.api(pricing, api_name="pricing")
    return demo


def _wallet_tab(api_url: str, seller_id: str, price: Decimal, escrow_box: gr.Textbox) -> None:
    """A person's sandbox buyer: register, claim faucet USDC, open an escrow for this Space."""
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
        return escrow["id"], escrow["id"], _wallet_status(buyer, call)

    buyer_state = gr.State(None)
    gr.Markdown(
        "A throwaway buyer in this Space's sandbox: no account, no real money. "
        "The escrow you open lands in the Classify tab."
    )
    with gr.Row():
        register_button = gr.Button("1. Register a buyer")
        faucet_button = gr.Button("2. Claim 10 test USDC")
    with gr.Row():
        amount = gr.Textbox(label="Escrow amount (USDC)", value=f"{price * 50:f}")
        ttl = gr.Number(label="Expires after (minutes)", value=60, precision=0, minimum=1, maximum=2880)
    open_button = gr.Button("3. Open an escrow for this Space", variant="primary")
    new_escrow = gr.Textbox(label="New escrow ID", interactive=False, elem_id="new-escrow-id")
    status = gr.Markdown(elem_id="wallet-status")
    register_button.click(register, [buyer_state], [buyer_state, status], api_visibility="private")
    faucet_button.click(faucet, [buyer_state], [status], api_visibility="private")
    open_button.click(
        open_escrow, [buyer_state, amount, ttl], [new_escrow, escrow_box, status], api_visibility="private"
    )


def _wallet_status(buyer: dict, call) -> str:
    me = call("GET", "/me", buyer["api_key"])
    return f"Buyer `{me['agent_id']}`: balance **{me['balance_usdc']} USDC**, {me['escrows_open']} escrow(s) open."


# ---------------------------------------------------------------- wiring


def require_text(text: str, *_: Any) -> None:
    """Refuse empty, too long or broken text before anything is reserved."""
    if not isinstance(text, str) or not text.strip():
        raise EmptyTextError("Please enter some text to classify.")
    model_accepts(text)  # length cap and valid Unicode (models.prediction): ValueError, not charged


def create_space(config: SpaceConfig) -> tuple[FastAPI, dict[str, Any]]:
    """Build the whole Space as one ASGI app; returns it with the parts tests and main() use."""
    sandbox: Sandbox | None = None
    data_dir, why = pick_data_dir(config.data_dir)
    # The journal lets a restarted Space capture what it earned but had not captured yet.
    settlement = Lease(journal=data_dir / JOURNAL_FILE) if config.settlement == "lease" else "per_call"
    log.info("Settlement: %s; data folder %s (%s)", config.settlement, data_dir, why)
    try:
        if config.sandbox:
            sandbox = start_sandbox(data_dir)
            escrow_url = config.loopback_url + SANDBOX_PREFIX
            gate = EscrowGate(escrow_url, sandbox.seller_key, seller_id=sandbox.seller_id, settlement=settlement)
            log.info("Sandbox mode: no PF_API_KEY set. Sandbox escrow API at %s%s", config.public_url, SANDBOX_PREFIX)
        else:
            gate = EscrowGate.from_env(settlement=settlement)
            log.info("Production mode: charging through the escrow service configured by ESCROW_URL/PF_API_KEY.")
    except JournalInUse as exc:
        # Another Space process runs on this DATA_DIR: replaying its journal would close its live leases.
        if sandbox:
            sandbox.store.close()
        raise ConfigError(str(exc)) from None

    try:
        model = load_model(config.model_id, allow_fallback=config.sandbox)
    except ModelLoadError:
        gate.close()
        raise
    model_note = ""
    if model.fallback_reason:
        model_note = (
            f"**Offline fallback:** the reference model could not be loaded ({model.fallback_reason}), "
            f"so this sandbox answers with **{model.name}**. Receipts name the model that answered."
        )
        log.warning("Model fallback: %s; answering with %s", model.fallback_reason, model.name)
    log.info("Model: %s on %s", model.name, model.device)

    batcher = DynamicBatcher(model.predict_batch, max_batch_size=16, max_wait_ms=5)

    @gate.paid(
        PerCall(config.price_per_call),
        reason="sentiment classification",
        receipt=True,
        receipt_extra={"model": model.name},
        check=require_text,
    )
    def classify(text: str) -> dict:
        """Classify the sentiment of `text` as negative, neutral or positive, for a fee in USDC."""
        return batcher.submit(text).as_dict()

    try:
        seller_id = sandbox.seller_id if sandbox else gate.seller_id
    except GateError as exc:
        gate.close()
        batcher.close()
        raise ConfigError(
            "The escrow service did not accept PF_API_KEY or could not be reached; "
            "check the PF_API_KEY secret and ESCROW_URL."
        ) from exc
    escrow_api_url = (config.public_url + SANDBOX_PREFIX) if sandbox else gate.escrow_url
    log.info("This Space's seller ID: %s", seller_id)

    def pricing() -> dict:
        """What a call costs, who to pay (seller ID) and where to open the escrow. Free."""
        return {
            "seller_id": seller_id,
            "price_per_call_usdc": f"{config.price_per_call:f}",
            "escrow_api": escrow_api_url,
            "model": model.name,
            "mode": "sandbox" if sandbox else "production",
        }

    demo = build_ui(
        classify=classify,
        pricing=pricing,
        price=config.price_per_call,
        model_note=model_note,
        seller_id=seller_id,
        space_url=config.public_url,
        escrow_api_url=escrow_api_url,
        wallet_api_url=(config.loopback_url + SANDBOX_PREFIX) if sandbox else None,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        if sandbox:
            sandbox.sweeper.start()
        try:
            yield
        finally:
            # Settle what the gate still holds before the sandbox stops.
            gate.close()
            batcher.close()
            if sandbox:
                sandbox.sweeper.stop()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if sandbox:
        app.mount(SANDBOX_PREFIX, sandbox.api)
    demo.state_session_capacity = SESSION_CAPACITY  # read when mounted
    app = gr.mount_gradio_app(app, demo, path="/", mcp_server=True, show_error=True)
    app.add_middleware(RequestLimits)
    parts = {"gate": gate, "model": model, "demo": demo, "sandbox": sandbox, "classify": classify}
    return app, parts


class RequestLimits:
    """ASGI middleware: a request body over MAX_REQUEST_BYTES is refused (413), and so is a JSON
    body holding over MAX_JSON_VALUES values (422), before any route reads it."""

    def __init__(self, app, max_bytes: int = MAX_REQUEST_BYTES, max_json_values: int = MAX_JSON_VALUES) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_values = max_json_values

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        too_large = (
            f"The request is too large: this Space reads at most {self.max_bytes:,} bytes "
            f"(texts of up to {MAX_TEXT_CHARS:,} characters). You were not charged."
        )
        if not length.isdigit() or int(length) > self.max_bytes:
            await _refuse(send, 413, too_large)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await _refuse(send, 413, too_large)
                return
        if b"json" in headers.get(b"content-type", b"") and _json_values_over(bytes(body), self.max_json_values):
            await _refuse(
                send, 422, f"The request holds over {self.max_json_values:,} JSON values; this Space takes "
                "a few strings. You were not charged."
            )
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def _json_values_over(body: bytes, limit: int) -> bool:
    """Whether `body` is JSON holding more than `limit` values (not JSON: False, the route says so)."""
    try:
        stack = [json.loads(body)]
    except RecursionError:  # nested deeper than any input of this Space
        return True
    except ValueError:
        return False
    count = 0
    while stack:
        value = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SettleFirstServer(uvicorn.Server):
    """uvicorn, but the gate settles before the server stops listening.

    In sandbox mode the gate captures through this very server; uvicorn runs the
    lifespan shutdown only after it has closed its sockets, too late for that.
    """

    def __init__(self, config: uvicorn.Config, settle) -> None:
        super().__init__(config)
        self._settle = settle

    async def shutdown(self, sockets=None) -> None:
        await anyio.to_thread.run_sync(self._settle)
        await super().shutdown(sockets)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = SpaceConfig.from_env()
        app, parts = create_space(config)
    except (ConfigError, ModelLoadError) as exc:
        print(f"Cannot start the Space: {exc}", file=sys.stderr)
        sys.exit(1)
    log.info("Serving on %s", config.public_url)
    # Open event streams (browsers, gradio_client heartbeats) must not keep a stopping Space up.
    server_config = uvicorn.Config(
        app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=5
    )
    SettleFirstServer(server_config, parts["gate"].close).run()


if __name__ == "__main__":
    main()
