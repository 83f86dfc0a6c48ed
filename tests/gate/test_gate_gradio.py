"""The gate inside a launched Gradio app, called with gradio_client (one app for the module)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import gradio as gr
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from gate import PerCall, PerToken

from .conftest import Market, launched

PRICE = PerCall("0.001")


def require_text(text, *_):
    if not text or not text.strip():
        raise ValueError("Please enter some text")


def build_demo(gate) -> gr.Blocks:
    @gate.paid(PRICE, reason="echo", receipt=True, receipt_extra=lambda: {"model": "echo-1"}, check=require_text)
    def classify(text: str) -> str:
        return text.upper()

    @gate.paid(PRICE, reason="probe")
    def probe(text: str, request: gr.Request, progress=gr.Progress()) -> str:
        progress(0.5, desc="half way")
        tracking = type(progress).__name__ if progress is not None else "none"
        return f"{text}|{request.headers.get('x-probe')}|{tracking}|{hasattr(progress, 'iterables')}"

    @gate.paid(PRICE, reason="async echo", receipt=True)
    async def aclassify(text: str) -> str:
        await asyncio.sleep(0)
        return text[::-1]

    @gate.paid(PerToken("0.01", "0.01", max_tokens=50), reason="stream", receipt=True)
    def stream(text: str):
        words = []
        for word in text.split():
            words.append(word)
            yield " ".join(words)

    @gate.paid(PRICE, reason="async stream")
    async def astream(text: str):
        for i in range(3):
            await asyncio.sleep(0)
            yield f"{text}{i}"

    @gate.paid(PRICE, reason="sentiment classification")
    def broken(text: str) -> str:
        raise RuntimeError("the model is on fire")

    with gr.Blocks() as demo:
        text, escrow = gr.Textbox(), gr.Textbox()
        out, receipt = gr.Textbox(), gr.JSON()
        gr.Button().click(classify, [text, escrow], [out, receipt], api_name="classify")
        gr.Button().click(probe, [text, escrow], out, api_name="probe")
        gr.Button().click(aclassify, [text, escrow], [out, receipt], api_name="aclassify")
        gr.Button().click(stream, [text, escrow], [out, receipt], api_name="stream")
        gr.Button().click(astream, [text, escrow], out, api_name="astream")
        gr.Button().click(broken, [text, escrow], out, api_name="broken")
    return demo


@pytest.fixture(scope="module")
def space(module_escrow_server):
    market = Market(module_escrow_server)
    gate = market.gate()  # the default settlement: lease
    market.space_gate = gate
    with launched(build_demo(gate)) as url:
        yield market, url
    market.close()


def settled_balance(market, escrow_id):
    """The escrow's balance once the Space's leases are captured and closed (lease settlement batches)."""
    market.space_gate._settlement.flush(close_all=True)
    return market.balance(escrow_id)


@pytest.fixture
def money(space):
    market, _ = space
    yield
    market.server.store.check_invariants()


@pytest.fixture(scope="module")
def client(space):
    return Client(space[1], verbose=False)


def test_positional_escrow_id_and_receipt(space, client, money):
    market, _ = space
    escrow_id = market.escrow("0.010")
    result, receipt = client.predict("hello", escrow_id, api_name="/classify")
    assert result == "HELLO"
    balance = settled_balance(market, escrow_id)
    assert receipt["escrow_id"] == escrow_id and receipt["model"] == "echo-1"
    assert receipt["charged_usdc"] == "0.001000"
    assert Decimal(receipt["remaining_usdc"]) == balance["remaining_usdc"] == Decimal("0.009")
    assert balance["spent_usdc"] == Decimal("0.001")


def test_escrow_id_from_the_header(space, money):
    market, url = space
    escrow_id = market.escrow("0.010")
    agent = Client(url, verbose=False, headers={"X-Escrow-Id": escrow_id})
    result, receipt = agent.predict("hi", api_name="/classify")
    assert result == "HI" and receipt["escrow_id"] == escrow_id
    # the argument wins over the header
    other = market.escrow("0.010")
    _, receipt = agent.predict("hi", other, api_name="/classify")
    assert receipt["escrow_id"] == other
    assert settled_balance(market, escrow_id)["spent_usdc"] == settled_balance(market, other)["spent_usdc"] == Decimal("0.001")


def test_refusals_reach_the_client_and_not_the_service(space, client, money):
    market, _ = space
    escrow_id = market.escrow("0.010")
    market.server.clear_log()
    with pytest.raises(AppError, match="Please enter some text. You were not charged."):
        client.predict("   ", escrow_id, api_name="/classify")
    for hostile in ("../me", "esc_x/release", "%2e%2e", "esc_" + "a" * 24 + "?a=b"):
        with pytest.raises(AppError, match="malformed.*not charged"):
            client.predict("hi", hostile, api_name="/classify")
    with pytest.raises(AppError, match="X-Escrow-Id.*not charged"):
        client.predict("hi", "", api_name="/classify")
    assert market.server.request_log == []


def test_function_taking_request_and_progress_still_gets_them(space, money):
    market, url = space
    escrow_id = market.escrow("0.010")
    agent = Client(url, verbose=False, headers={"X-Escrow-Id": escrow_id, "X-Probe": "probe-42"})
    result = agent.predict("t", api_name="/probe")
    assert result == "t|probe-42|Progress|True"
    assert settled_balance(market, escrow_id)["spent_usdc"] == Decimal("0.001")


def test_async_function(space, client, money):
    market, _ = space
    escrow_id = market.escrow("0.010")
    result, receipt = client.predict("abc", escrow_id, api_name="/aclassify")
    assert result == "cba" and receipt["charged_usdc"] == "0.001000"
    assert settled_balance(market, escrow_id)["spent_usdc"] == Decimal("0.001")


def test_generator_streams_then_settles_with_a_receipt(space, client, money):
    market, _ = space
    escrow_id = market.escrow("0.010")
    job = client.submit("one two three", escrow_id, api_name="/stream")
    final_text, receipt = job.result()
    outputs = job.outputs()
    assert [o[0] for o in outputs] == ["one", "one two", "one two three", "one two three"]
    assert [o[1] for o in outputs[:-1]] == [None, None, None]
    # 3 input + 3 output tokens at 0.01 per 1k = 0.00006 (the hold was for 3 + 50 tokens)
    assert final_text == "one two three" and receipt["charged_usdc"] == "0.000060"
    balance = settled_balance(market, escrow_id)
    assert balance["spent_usdc"] == Decimal("0.00006") and balance["held_usdc"] == 0


def test_async_generator(space, client, money):
    market, _ = space
    escrow_id = market.escrow("0.010")
    assert client.predict("x", escrow_id, api_name="/astream") == "x2"
    balance = settled_balance(market, escrow_id)
    assert balance["spent_usdc"] == Decimal("0.001") and balance["held_usdc"] == 0


def test_failure_in_the_app_costs_nothing(space, client, money):
    market, _ = space
    escrow_id = market.escrow("0.010")
    with pytest.raises(AppError, match=r"^\[function_failed\] The sentiment classification failed\. You were not charged\.$"):
        client.predict("x", escrow_id, api_name="/broken")
    balance = settled_balance(market, escrow_id)
    assert balance["spent_usdc"] == 0 and balance["held_usdc"] == 0
