"""A paid Space in one object: its configuration, data folder, gate and sandbox, the UI frame, and serve."""

from __future__ import annotations

import atexit
import contextlib
import gc
import inspect
import json
import logging
import sys
import typing
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import gradio as gr
import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from gradio.context import Context

from gate import EscrowGate, GateError, JournalInUse, Lease, Price

from .config import ConfigError, SpaceConfig
from .data import JOURNAL_FILE, _remove_if_temporary, pick_data_dir
from .limits import Limits, RequestLimits
from .metrics import add_metrics_route
from .routes import ROUTE_PREFIX, PaidRoute, invalid_body, with_json_body
from .sandbox import SANDBOX_PREFIX, Sandbox, start_sandbox
from .seller import seller_tab
from .server import GRACEFUL_SHUTDOWN_S, SettleFirstServer
from .ui import SandboxWallet, _agent_tab, _wallet_tab, escrow_row, page_style

log = logging.getLogger("space")

_KIT_FIELDS = ("seller_id", "escrow_api", "mode")


@contextlib.contextmanager
def starting(*errors: type[Exception]) -> Iterator[None]:
    """Inside it, a ConfigError (or one of `errors`) prints `Cannot start the Space: ...` and exits 1; Ctrl-C
    before the Space serves (loading the model, say) stops it quietly, with no traceback, and exits 0 (once it
    serves, the server handles Ctrl-C itself)."""
    try:
        yield
    except (ConfigError, *errors) as exc:
        print(f"Cannot start the Space: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("Stopped before the Space was serving (Ctrl-C).", file=sys.stderr)
        sys.exit(0)


class Space:
    """One paid Space: its settings, data folder and escrow gate; the sandbox escrow when PF_API_KEY is unset."""

    def __init__(self, config: SpaceConfig, gate: EscrowGate, data_dir: Path, sandbox: Sandbox | None = None) -> None:
        self.config = config
        self.gate = gate
        self.data_dir = data_dir
        self._sandbox = sandbox
        self._seller_id: str | None = None
        self._on_stop: list[Callable[[], Any]] = []
        self._routes: dict[str, PaidRoute] = {}
        self._pricing_answer: Callable[[], dict] | None = None
        self._escrow_box: gr.Textbox | None = None
        self._escrow_tab: str | None = None
        self._end_streams: list[Callable[[], None]] = []  # for a stop: end the pages' event streams
        self._busy: list[Callable[[], bool]] = []  # for a stop: whether Gradio's queue still runs events
        self._closed = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Space:
        """The Space the environment describes: sandbox (no PF_API_KEY) or production; ConfigError if it cannot be."""
        config = SpaceConfig.from_env(env)
        data_dir, why = pick_data_dir(config.data_dir)
        # The journal lets a restarted Space capture what it earned but had not captured yet.
        settlement = Lease(journal=data_dir / JOURNAL_FILE) if config.settlement == "lease" else "per_call"
        log.info("Settlement: %s; data folder %s (%s)", config.settlement, data_dir, why)
        sandbox = None
        try:
            if config.sandbox:
                sandbox = start_sandbox(data_dir)
                # The gate reaches the sandbox over loopback; buyers, at the Space's public address.
                gate = EscrowGate(
                    config.loopback_url + SANDBOX_PREFIX, sandbox.seller_key, seller_id=sandbox.seller_id,
                    settlement=settlement, public_escrow_url=config.public_url + SANDBOX_PREFIX,
                )
                log.info("Sandbox mode: no PF_API_KEY set. Sandbox escrow API at %s%s", config.public_url, SANDBOX_PREFIX)
            else:
                gate = EscrowGate.from_env(env, settlement=settlement)
                log.info("Production mode: charging through the escrow service configured by ESCROW_URL/PF_API_KEY.")
        except JournalInUse as exc:
            # Another Space process runs on this DATA_DIR: replaying its journal would close its live leases.
            if sandbox:
                sandbox.store.close()
            raise ConfigError(str(exc)) from None
        return cls(config, gate, data_dir, sandbox)

    @property
    def sandbox(self) -> bool:
        """Whether buyers pay with test USDC in the sandbox escrow inside this Space."""
        return self._sandbox is not None

    @property
    def seller_id(self) -> str:
        """This Space's seller ID (production: asked of the escrow service once; ConfigError if it refuses the key)."""
        if self._seller_id is None:
            if self._sandbox is not None:
                seller_id = self._sandbox.seller_id
            else:
                try:
                    seller_id = self.gate.seller_id
                except GateError as exc:
                    self.close()
                    raise ConfigError(
                        "The escrow service did not accept PF_API_KEY or could not be reached; "
                        "check the PF_API_KEY secret and ESCROW_URL."
                    ) from exc
            log.info("This Space's seller ID: %s", seller_id)
            self._seller_id = seller_id
        return self._seller_id

    @property
    def escrow_api_url(self) -> str:
        """Where buyers open escrows for this Space (its own /sandbox/api, or the service the gate charges on)."""
        return self.gate.escrow_url

    def on_stop(self, callback: Callable[[], Any]) -> Callable[[], Any]:
        """Call `callback` when the Space stops, after the gate has settled (e.g. a batcher's close)."""
        self._on_stop.append(callback)
        return callback

    def paid(
        self,
        price: Price,
        *,
        reason: str,
        receipt: bool = True,
        check: Callable[..., Any] | None = None,
        receipt_extra: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        name: str | None = None,
    ) -> Callable[[Callable], Callable]:
        """``gate.paid`` for the Gradio endpoint (and MCP), and the same function as ``POST /v1/<name>``
        (a JSON body of its parameters, ``gate.paid_route``), listed with its price in ``/pricing``."""
        options = {"reason": reason, "check": check, "receipt_extra": receipt_extra}

        def decorate(fn: Callable) -> Callable:
            route_name = name or fn.__name__
            if route_name in self._routes or route_name == "pricing":
                raise ValueError(f"a paid function named {route_name!r} is already served")
            gated = self.gate.paid(price, receipt=receipt, **options)(fn)
            endpoint = self.gate.paid_route(price, **options)(with_json_body(fn))
            parameters = tuple(inspect.signature(fn).parameters)
            streams = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
            self._routes[route_name] = PaidRoute(route_name, endpoint, price, reason.strip(), parameters, streams)
            return gated

        return decorate

    def escrow_id_box(self, **textbox: Any) -> gr.Textbox:
        """The buyer's "Escrow ID" textbox (elem_id escrow-id); the sandbox wallet puts the escrows it opens there.

        Under it, ``self.payment_status``: a status line (elem_id payment-status) for what a call cost or why it
        was refused (``space.ui.receipt_note``, ``refusal_note``). In sandbox mode, inside ``blocks()``, a button
        beside it gets test USDC and opens an escrow in one click (the session's throwaway buyer).
        """
        box, self.payment_status = escrow_row(getattr(self, "_wallet", None), getattr(self, "_buyer", None), textbox)
        self._escrow_box, self._escrow_tab = box, _enclosing_tab()
        return box

    @contextlib.contextmanager
    def blocks(
        self,
        *,
        title: str,
        intro: str,
        pricing: Mapping[str, Any],
        api_name: str,
        example_input: str,
        note: str = "",
        wallet_escrow_usdc: Decimal | str = "0.05",
        call_price_usdc: Decimal | str | None = None,
    ) -> Iterator[gr.Blocks]:
        """The Space's page: a header, the tabs added inside the `with`, then the wallet and agent tabs and /pricing.

        `pricing`: the app's own fields of the free /pricing answer (price, model...); the kit adds
        seller_id, escrow_api and mode. `api_name`, `example_input`: the paid endpoint and the Python
        arguments before the escrow ID in the agent tab's example. `note`: shown under the intro
        (elem_id model-note) when not empty. `wallet_escrow_usdc`: the wallet's suggested escrow (and the
        one-click escrow's). `call_price_usdc`: one call's price; the wallet refuses a smaller escrow.
        """
        seller_id = self.seller_id  # production: the key is checked before the page is built
        answer_pricing = self._pricing(pricing)
        self._wallet = self._buyer = None
        if self._sandbox is not None:
            self._wallet = SandboxWallet(
                self.config.loopback_url + SANDBOX_PREFIX, seller_id, escrow_usdc=Decimal(wallet_escrow_usdc),
                call_price_usdc=None if call_price_usdc is None else Decimal(call_price_usdc),
            )
        with gr.Blocks(title=title) as demo:
            page_style()
            if self._wallet is not None:
                self._buyer = gr.State(None)  # the session's throwaway sandbox buyer: one-click button and wallet tab
            gr.Markdown(f"# {title}\n{intro}")
            if note:
                gr.Markdown(note, elem_id="model-note")
            with gr.Tabs():
                yield demo
                if self._sandbox is not None:
                    with gr.Tab("Sandbox wallet", id="wallet"):
                        _wallet_tab(self._wallet, self._buyer, self._escrow_box, self._escrow_tab)
                with gr.Tab("Use from an agent", id="agent"):
                    _agent_tab(
                        self.config.public_url,
                        self.escrow_api_url,
                        seller_id,
                        self.sandbox,
                        api_name=api_name,
                        example_input=example_input,
                    )
                seller_tab(self.gate.stats, sandbox=self.sandbox)  # the owner's view (space/seller.py)
            gr.api(answer_pricing, api_name="pricing")

    def _pricing(self, fields: Mapping[str, Any]) -> Callable[[], dict]:
        """The /pricing function: the app's fields (Decimals as plain strings) between the kit's."""
        taken = sorted(set(fields) & set(_KIT_FIELDS))
        if taken:
            raise ValueError(f"pricing fields {', '.join(taken)} are the kit's: it fills them in itself")
        app_fields = {name: f"{value:f}" if isinstance(value, Decimal) else value for name, value in fields.items()}
        seller_id, escrow_api = self.seller_id, self.escrow_api_url
        mode = "sandbox" if self.sandbox else "production"

        def pricing() -> dict:
            """What a call costs, who to pay (seller ID) and where to open the escrow. Free."""
            functions = {name: route.listing() for name, route in self._routes.items()}
            answer = {"seller_id": seller_id, **app_fields, "escrow_api": escrow_api, "mode": mode}
            return answer | ({"functions": functions} if functions else {})

        self._pricing_answer = pricing
        return pricing

    def asgi_app(self, demo: gr.Blocks, *, limits: Limits = Limits()) -> FastAPI:
        """`demo` on FastAPI with MCP, the sandbox under /sandbox/api, and `limits`; its lifespan closes this Space."""

        @contextlib.asynccontextmanager
        async def lifespan(_: FastAPI):
            if self._sandbox is not None:
                self._sandbox.sweeper.start()
            try:
                yield
            finally:
                self.close()  # settles what the gate still holds before the sandbox stops

        app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
        if self._sandbox is not None:
            app.mount(SANDBOX_PREFIX, self._sandbox.api)
        # The plain API, before Gradio takes every other path: the same gate, at the speed of plain HTTP.
        app.add_api_route(f"{ROUTE_PREFIX}/pricing", self._pricing_answer or self._pricing({}), methods=["GET"])
        app.add_exception_handler(RequestValidationError, invalid_body)  # a malformed body: the gate's 422 shape
        for route in self._routes.values():
            app.add_api_route(route.path, route.endpoint, methods=["POST"])
        add_metrics_route(app, self.gate.stats, sandbox=self.sandbox)  # open in sandbox; METRICS_TOKEN in production
        demo.state_session_capacity = limits.session_capacity  # read when mounted
        app = gr.mount_gradio_app(app, demo, path="/", mcp_server=True, show_error=True)
        # What ends the pages' session heartbeat streams on a stop (the event Blocks.close would set), and
        # whether the queue still runs an event (a paid call whose page waits on its result).
        self._end_streams += [route.app.stop_event.set for route in app.routes if _is_gradio_app(route)]
        self._busy.append(lambda: any(job is not None for job in getattr(demo._queue, "active_jobs", ())))
        if getattr(demo, "mcp_server_obj", None) is not None:
            _json_tool_results(demo.mcp_server_obj)
            _typed_json_inputs(demo.mcp_server_obj)
        app.add_middleware(RequestLimits, limits=limits)
        return app

    def serve(self, demo: gr.Blocks, *, limits: Limits = Limits()) -> None:
        """Serve `demo` on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT until stopped; the gate settles before it stops listening."""
        app = self.asgi_app(demo, limits=limits)
        log.info("Serving on %s", self.config.public_url)
        # On SIGTERM or Ctrl-C: the pages' event streams end at once, paid calls in flight finish, the gate
        # settles, then the server stops listening; run() then returns (the process exits 0).
        server_config = uvicorn.Config(
            app, host=self.config.host, port=self.config.port, log_level="warning",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        end_streams, busy = list(self._end_streams), list(self._busy)
        # At exit, skip the interpreter's last collection of the whole heap (Gradio, torch...): by then
        # everything is settled and closed, and that sweep alone took most of a stop (0.6 of 0.8 s).
        atexit.register(gc.freeze)
        SettleFirstServer(
            server_config, self.gate.close,
            end_streams=lambda: [end() for end in end_streams], busy=lambda: any(check() for check in busy),
        ).run()

    def close(self) -> None:
        """Settle and close the gate, run the on_stop callbacks, stop the sandbox, drop a temporary data folder."""
        if self._closed:
            return
        self._closed = True
        try:
            self.gate.close()
            for callback in self._on_stop:
                callback()
            if self._sandbox is not None:
                self._sandbox.sweeper.stop()
        finally:
            # Now, not at exit: a test or an embedding process may build several Spaces in one run.
            _remove_if_temporary(self.data_dir)

    def __enter__(self) -> Space:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _enclosing_tab() -> str | None:
    """The label of the tab being built, if any."""
    block = Context.block
    while block is not None and not isinstance(block, gr.Tab):
        block = getattr(block, "parent", None)
    return None if block is None else str(block.label)


def _is_gradio_app(route: Any) -> bool:
    """Whether `route` mounts a Gradio app (gr.mount_gradio_app's)."""
    from gradio.routes import App

    return isinstance(getattr(route, "app", None), App)


def _json_tool_results(mcp_server: Any) -> None:
    """MCP tool results as JSON text: Gradio writes a dict, list or tuple output as its Python repr (and hands a
    function's outputs over as one tuple: the result is then one JSON array, e.g. ``[prediction, receipt]``)."""
    from gradio_client.utils import is_file_obj_with_meta

    postprocess = mcp_server.postprocess_output_data

    def as_json(data: Any, root_url: str) -> Any:
        data = [
            json.dumps(output) if isinstance(output, (dict, list, tuple)) and not is_file_obj_with_meta(output) else output
            for output in data
        ]
        return postprocess(data, root_url)

    mcp_server.postprocess_output_data = as_json


def _typed_json_inputs(mcp_server: Any) -> None:
    """MCP input schemas a client can validate against: Gradio describes a gr.JSON input as ``{"type": {}}``
    (which is no JSON Schema type: MCP clients refuse every call), so such a parameter is described from the
    paid function's type hint instead (``list[str]``: an array of strings), or as any JSON."""
    from pydantic import TypeAdapter

    input_schema = mcp_server.get_input_schema

    def typed(tool_name: str, parameters: dict[str, str] | None = None) -> tuple[dict[str, Any], list]:
        schema, file_positions = input_schema(tool_name, parameters)
        untyped = [name for name, prop in schema.get("properties", {}).items()
                   if "type" in prop and not isinstance(prop["type"], (str, list))]
        if untyped:
            block_fn = mcp_server.get_block_fn_from_endpoint_name(mcp_server.tool_to_endpoint[tool_name])
            try:
                hints = typing.get_type_hints(block_fn.fn)
            except Exception:  # no function, or hints that cannot be resolved: any JSON
                hints = {}
            for name in untyped:
                prop = schema["properties"][name]
                del prop["type"]
                with contextlib.suppress(Exception):  # a hint pydantic cannot describe: any JSON
                    prop.update({key: value for key, value in TypeAdapter(hints[name]).json_schema().items()
                                 if key not in ("title", "description", "default")})
        return schema, file_positions

    mcp_server.get_input_schema = typed
