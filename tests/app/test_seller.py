"""The seller's view against `python app.py`: /metrics after known calls matches the ledger, METRICS_TOKEN in
production, and the Seller tab (open in sandbox mode, the owner's alone in production through Gradio's OAuth)."""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal

import gradio as gr
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from space.metrics import PREFIX
from space.seller import SELLER_TAB, SIGN_IN, SellerView
from tests.support.mcp import list_tools
from tests.support.processes import escrow_process, space_process
from tests.support.space import EscrowApi, random_escrow_id

TOKEN = "metrics-" + "t" * 32
MICRO = Decimal("0.000001")


def scrape(base_url: str, headers: dict | None = None) -> dict[tuple[str, tuple], Decimal]:
    """Every sample of /metrics by (name, sorted labels); values back to Decimal (floats only on the wire)."""
    answer = requests.get(base_url + "/metrics", headers=headers or {}, timeout=10)
    assert answer.status_code == 200, answer.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): Decimal(repr(sample.value))
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> Decimal:
    return samples.get((PREFIX + name, tuple(sorted(labels.items()))), Decimal(0))


def usdc(value: Decimal) -> Decimal:
    return value.quantize(MICRO)


# ---------------------------------------------------------------- /metrics against the sandbox Space


def test_metrics_after_known_calls_match_the_ledger(sandbox_space):
    base = sandbox_space.server.base_url
    before = scrape(base)
    sandbox, seller = sandbox_space.sandbox, sandbox_space.seller()
    buyer = sandbox.register("metrics-buyer")
    sandbox.fund(buyer, "1")
    escrow_id = sandbox.open_escrow(buyer, seller.agent_id, "0.050")
    url = base + "/v1/classify"
    charged = Decimal(0)
    for text in ("I love this!", "meh", "I hate this."):
        answer = requests.post(url, json={"text": text}, headers={"X-Escrow-Id": escrow_id}, timeout=30)
        assert answer.status_code == 200, answer.text
        charged += Decimal(answer.json()["receipt"]["charged_usdc"])
    refused = [requests.post(url, json={"text": "hi"}, headers=headers, timeout=30)
               for headers in ({}, {"X-Escrow-Id": random_escrow_id()})]
    assert [r.json()["error"]["code"] for r in refused] == ["missing_escrow_id", "escrow_not_found"]

    # Lease mode captures every few seconds; the gate counts a capture once the service's answer is back.
    deadline = time.monotonic() + 20
    while True:
        spent = Decimal(str(sandbox.escrow(buyer, escrow_id)["spent_usdc"]))  # a number or a decimal string
        after = scrape(base)
        captured = usdc(sample(after, "captured_usdc_total") - sample(before, "captured_usdc_total"))
        if (spent >= charged and captured == spent) or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    def delta(name: str, **labels: str) -> Decimal:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert captured == spent == charged
    assert delta("calls_total", outcome="paid") == 3
    assert delta("calls_total", outcome="refused") == 2
    assert delta("calls_total", outcome="failed") == 0
    assert delta("refusals_total", code="missing_escrow_id") == 1
    assert delta("refusals_total", code="escrow_not_found") == 1
    assert usdc(delta("charged_usdc_total")) == charged
    assert delta("escrow_requests_total", route="GET /escrow/{id}") >= 1  # the escrow's facts, and the unknown one
    assert delta("gate_latency_seconds_count", step="reserve") >= 3
    assert delta("gate_latency_seconds_count", step="settle") >= 3
    assert sample(after, "gate_latency_seconds_bucket", step="reserve", le="+Inf") == sample(
        after, "gate_latency_seconds_count", step="reserve")
    # Every charge captured: what the open lease still owes is nothing.
    assert sample(after, "owed_usdc") == 0


# ---------------------------------------------------------------- the Seller tab in the sandbox Space


def config(base_url: str) -> dict:
    return requests.get(base_url + "/config", timeout=10).json()


def seller_dependencies(page: dict) -> list[dict]:
    """The events whose trigger or outputs are in the Seller tab."""
    (tab,) = [c["id"] for c in page["components"] if c.get("props", {}).get("label") == SELLER_TAB]
    inside, parents = {tab}, {}

    def walk(node: dict, parent: int | None) -> None:
        parents[node["id"]] = parent
        for child in node.get("children", []):
            walk(child, node["id"])

    walk(page["layout"], None)
    for component in parents:
        node = component
        while node is not None:
            if node == tab:
                inside.add(component)
                break
            node = parents[node]
    return [d for d in page["dependencies"]
            if {t[0] for t in d["targets"]} & inside or set(d["outputs"]) & inside]


def test_the_sandbox_seller_tab_is_open_and_its_events_are_private(sandbox_space):
    base = sandbox_space.server.base_url
    page = config(base)
    props = {c.get("props", {}).get("elem_id"): c for c in page["components"]}
    assert "seller-summary" in props and "seller-login" not in props  # open: no sign-in in sandbox mode
    events = seller_dependencies(page)
    assert len(events) >= 3  # select, Refresh, timer
    assert {e.get("api_visibility") for e in events} == {"private"}
    info = requests.get(base + "/gradio_api/info", timeout=10).json()
    assert set(info["named_endpoints"]) == {"/classify", "/pricing"}
    tools = [tool.name for tool in list_tools(base)]
    assert len(tools) == 2 and all(name.endswith(("classify", "pricing")) for name in tools)


def run_event(base_url: str, page: dict, elem_id: str, cookies: dict | None = None) -> list:
    """Trigger the click of the button `elem_id` as the browser does (queue/join, then the event stream)."""
    (button,) = [c["id"] for c in page["components"] if c.get("props", {}).get("elem_id") == elem_id]
    (event,) = [d for d in page["dependencies"] if [button, "click"] in d["targets"]]
    session = uuid.uuid4().hex[:11]
    headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in (cookies or {}).items())}
    joined = requests.post(base_url + "/gradio_api/queue/join", json={
        "data": [], "fn_index": event["id"], "session_hash": session, "event_data": None, "trigger_id": button,
    }, headers=headers, timeout=10)
    assert joined.status_code == 200, joined.text
    with requests.get(base_url + "/gradio_api/queue/data", params={"session_hash": session}, headers=headers,
                      stream=True, timeout=30) as stream:
        for line in stream.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    assert message.get("success"), message
                    return message["output"]["data"]
    raise AssertionError("no process_completed message")


def test_the_sandbox_seller_tab_shows_calls_and_receipts(sandbox_space):
    base = sandbox_space.server.base_url
    sandbox = sandbox_space.sandbox
    buyer = sandbox.register("tab-buyer")
    sandbox.fund(buyer, "1")
    escrow_id = sandbox.open_escrow(buyer, sandbox_space.seller().agent_id, "0.010")
    answer = requests.post(base + "/v1/classify", json={"text": "lovely"}, headers={"X-Escrow-Id": escrow_id},
                           timeout=30)
    charge_id = answer.json()["receipt"]["charge_id"]
    sign_in, _, summary, *_, receipts = run_event(base, config(base), "seller-refresh")
    assert "paid calls" in summary and "USDC" in summary
    assert sign_in.get("visible") is False
    assert charge_id in json.dumps(receipts)


# ---------------------------------------------------------------- production: METRICS_TOKEN and the owner's tab


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    server = escrow_process(tmp_path_factory.mktemp("hosted")).start()
    yield server
    server.stop()


def production(tmp_path_factory, hosted, model_dir, **env: str):
    api = EscrowApi(hosted.base_url + "/api")
    seller = api.register("metrics-seller")
    tmp = tmp_path_factory.mktemp("prod-space")
    return space_process(tmp, PF_API_KEY=seller.api_key, ESCROW_URL=hosted.base_url + "/api",
                         MODEL_ID=str(model_dir), **env).start()


@pytest.fixture(scope="module")
def production_space(tmp_path_factory, hosted, tiny_model_dir):
    server = production(tmp_path_factory, hosted, tiny_model_dir, METRICS_TOKEN=TOKEN, SPACE_AUTHOR_NAME="local-user")
    yield server
    server.stop()


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", TOKEN, f"bearer {TOKEN}x"])
def test_production_metrics_refuse_a_missing_or_wrong_token(production_space, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = requests.get(production_space.base_url + "/metrics", headers=headers, timeout=10)
    assert answer.status_code == 401
    assert PREFIX not in answer.text


def test_production_metrics_with_the_token(production_space):
    samples = scrape(production_space.base_url, {"Authorization": f"Bearer {TOKEN}"})
    assert (PREFIX + "calls_total", (("outcome", "paid"),)) in samples
    assert TOKEN not in production_space.log()


def test_production_without_metrics_token_has_no_metrics_route(tmp_path_factory, hosted, tiny_model_dir):
    server = production(tmp_path_factory, hosted, tiny_model_dir)
    try:
        assert requests.get(server.base_url + "/metrics", timeout=10).status_code == 404
        assert requests.get(server.base_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=10).status_code == 404
    finally:
        server.stop()


def mocked_sign_in(base_url: str) -> dict:
    """Gradio's local OAuth mock (no Hub here: the fake `local-user`): the session cookie it sets."""
    login = requests.get(base_url + "/login/huggingface", allow_redirects=False, timeout=10)
    callback = requests.get(base_url + login.headers["location"], allow_redirects=False, timeout=10)
    assert callback.status_code in (302, 307), callback.text
    return {"session": callback.cookies["session"]}


def test_production_seller_tab_is_for_the_signed_in_owner_only(production_space):
    base = production_space.base_url
    page = config(base)
    props = {c.get("props", {}).get("elem_id") for c in page["components"]}
    assert {"seller-login", "seller-summary"} <= props
    sign_in, content, summary, *_ = run_event(base, page, "seller-refresh")  # not signed in
    assert SIGN_IN in sign_in["value"] and content.get("visible") is False and summary == ""
    sign_in, content, summary, *_ = run_event(base, page, "seller-refresh", mocked_sign_in(base))
    assert content.get("visible") is True and "paid calls" in summary


# ---------------------------------------------------------------- the handler, with fake profiles


def profile(username: str) -> gr.OAuthProfile:
    return gr.OAuthProfile({"name": username.title(), "preferred_username": username,
                            "profile": f"https://huggingface.co/{username}", "picture": ""})


def snapshot() -> dict:
    return {
        "calls": {"paid": 2, "refused": 1, "failed": 1, "withheld": 0, "cancelled": 0, "abandoned": 0, "empty": 0},
        "refusals": {"insufficient_funds": 1},
        "charged_usdc": Decimal("0.002000"), "captured_usdc": Decimal("0.001000"),
        "requests": {}, "latency_s": {},
        "recent": [{"at": 1_700_000_000.0, "escrow_id": "esc_a", "charge_id": "ded_1", "charged_usdc": "0.001000"},
                   {"at": 1_700_000_030.0, "escrow_id": "esc_a", "charge_id": "ded_2", "charged_usdc": "0.001000"}],
        "per_minute": [{"minute": 1_699_999_980, "calls": 1, "charged_usdc": Decimal("0.001000")},
                       {"minute": 1_700_000_040, "calls": 1, "charged_usdc": Decimal("0.001000")}],
        "open_leases": 1, "owed_usdc": Decimal("0.001000"),
    }


def view(**options) -> SellerView:
    return SellerView(snapshot, now=lambda: 1_700_000_100.0, **options)


def test_the_owner_sees_the_seller_view():
    sign_in, content, summary, calls, usdc_plot, refusals, receipts = view(sandbox=False, owner="alice").refresh(
        profile("alice"))
    assert sign_in["visible"] is False and content["visible"] is True
    assert "**2 paid calls**" in summary and "0.002000 USDC" in summary and "Open leases: **1**" in summary
    assert list(refusals.itertuples(index=False, name=None)) == [("insufficient_funds", 1)]
    assert list(receipts["charge_id"]) == ["ded_2", "ded_1"]  # newest first
    assert list(receipts.columns) == ["time (UTC)", "escrow_id", "charge_id", "charged_usdc"]
    assert calls["calls"].sum() == 2 and len(calls) == 30  # the last half hour, minute by minute
    assert usdc_plot is calls


@pytest.mark.parametrize(("who", "owner"), [(None, "alice"), ("mallory", "alice"), ("Alice", "alice"),
                                            ("alice", None), (None, None)])
def test_anyone_else_sees_only_the_sign_in_prompt(who, owner):
    sign_in, content, summary, calls, _, refusals, receipts = view(sandbox=False, owner=owner).refresh(
        None if who is None else profile(who))
    assert sign_in["visible"] is True and sign_in["value"].startswith(SIGN_IN)
    assert content["visible"] is False and summary == ""
    assert calls["calls"].sum() == 0 and refusals.empty and receipts.empty


def test_sandbox_shows_the_view_to_everyone():
    _, content, summary, *_ = view(sandbox=True, owner=None).refresh(None)
    assert content["visible"] is True and "paid calls" in summary
