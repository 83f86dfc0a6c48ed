"""examples/chat/app.py: streamed replies billed per token, over gradio_client, the plain route and MCP, against
the sandbox escrow inside the Space; the ledger must hold exactly what the receipts say."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest
import requests
from gradio_client import Client

from gate.money import round_up
from models import load_chat_model
from tests.support.mcp import call_tool, tool_outputs

INPUT_PER_1K, OUTPUT_PER_1K = Decimal("0.0005"), Decimal("0.0015")  # the example's default rates
HISTORY = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"}]


def price(input_tokens: int, output_tokens: int) -> Decimal:
    return round_up((input_tokens * INPUT_PER_1K + output_tokens * OUTPUT_PER_1K) / 1000)


@pytest.fixture(scope="module")
def model(tiny_chat_model_dir):
    return load_chat_model(str(tiny_chat_model_dir))  # the same model, to count tokens as a buyer would


@pytest.fixture
def buyer_escrow(chat_space):
    return chat_space.buyer_with_escrow("0.05")


def stream_lines(chat_space, escrow_id: str, body: dict) -> list[dict]:
    url = chat_space.server.base_url + "/v1/chat"
    with requests.post(url, json=body, headers={"X-Escrow-Id": escrow_id}, stream=True, timeout=60) as answer:
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in answer.iter_lines() if line]


def check_receipt(receipt: dict, model, message: str, history: list, reply: str, max_new_tokens: int) -> Decimal:
    """The receipt counts the prompt and the reply with the model's own tokenizer, and charges their price."""
    usage = {"input_tokens": len(model.prompt_ids(message, history)), "output_tokens": model.count_tokens(reply)}
    assert receipt["usage"] == usage and 0 < usage["output_tokens"] <= max_new_tokens
    assert Decimal(receipt["charged_usdc"]) == price(**usage)
    assert receipt["model"] == model.name and receipt["reason"] == "chat reply"
    return Decimal(receipt["charged_usdc"])


def test_pricing_names_the_token_rates_and_the_streamed_route(chat_space):
    pricing = requests.get(chat_space.server.base_url + "/v1/pricing", timeout=30).json()
    assert pricing["input_per_1k_tokens_usdc"] == "0.000500" and pricing["output_per_1k_tokens_usdc"] == "0.001500"
    assert pricing["max_new_tokens"] == 512
    chat = pricing["functions"]["chat"]
    assert chat["answer"] == "ndjson" and chat["parameters"] == ["message", "history", "max_new_tokens"]
    assert "per 1k input tokens" in chat["pricing"] and chat["price_usdc"] is None


def test_replies_over_gradio_client_and_the_plain_route_cost_exactly_their_receipts(chat_space, model, buyer_escrow):
    buyer, escrow_id = buyer_escrow
    client = Client(chat_space.url, verbose=False)
    reply, receipt = client.predict("Tell me about the weather", [], 40, escrow_id, api_name="/chat")
    charged = [check_receipt(receipt, model, "Tell me about the weather", [], reply, 40)]

    lines = stream_lines(chat_space, escrow_id, {"message": "And tomorrow?", "history": HISTORY, "max_new_tokens": 30})
    texts = [line["result"] for line in lines[:-1]]
    assert len(texts) > 1 and all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))  # growing
    charged.append(check_receipt(lines[-1]["receipt"], model, "And tomorrow?", HISTORY, texts[-1], 30))

    escrow = chat_space.sandbox.escrow_once_spent(buyer, escrow_id, sum(charged))
    assert escrow["spent_usdc"] == sum(charged)  # captured exactly what the receipts say (the lease holds the rest)


def read_three_then_leave_the_plain_route(chat_space, escrow_id: str, body: dict) -> list[str]:
    url = chat_space.server.base_url + "/v1/chat"
    with requests.post(url, json=body, headers={"X-Escrow-Id": escrow_id}, stream=True, timeout=60) as answer:
        lines = answer.iter_lines()
        return [json.loads(next(lines))["result"] for _ in range(3)]  # then the connection is closed


def read_three_then_cancel_over_gradio_client(chat_space, escrow_id: str, body: dict) -> list[str]:
    client = Client(chat_space.url, verbose=False)
    job = client.submit(body["message"], body["history"], body["max_new_tokens"], escrow_id, api_name="/chat")
    deadline = time.monotonic() + 30
    while len(job.outputs()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    job.cancel()  # what the page's Stop button does
    return [reply for reply, _ in job.outputs()[:3]]


@pytest.mark.parametrize("leave", [read_three_then_leave_the_plain_route, read_three_then_cancel_over_gradio_client])
def test_a_reply_the_client_leaves_mid_stream_pays_for_the_tokens_delivered(chat_space, model, buyer_escrow, leave):
    buyer, escrow_id = buyer_escrow
    body = {"message": "Write a long story", "history": [], "max_new_tokens": 512}
    whole = [line["result"] for line in stream_lines(chat_space, escrow_id, body)[:-1]]  # greedy: the same each time
    prompt_tokens = len(model.prompt_ids(body["message"], []))
    paid_whole = price(prompt_tokens, model.count_tokens(whole[-1]))
    assert chat_space.sandbox.escrow_once_spent(buyer, escrow_id, paid_whole)["spent_usdc"] == paid_whole

    assert leave(chat_space, escrow_id, body) == whole[:3]
    # The client has gone: the gate charges the last text it handed out, which the client may not all have read.
    deadline = time.monotonic() + 20
    while True:
        escrow = chat_space.sandbox.escrow(buyer, escrow_id)
        if escrow["spent_usdc"] > paid_whole or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    paid_partly = escrow["spent_usdc"] - paid_whole
    delivered = [price(prompt_tokens, model.count_tokens(text)) for text in whole[2:-1]]
    assert paid_partly in delivered, (paid_partly, delivered[:5], paid_whole)  # a prefix it sent, not the whole reply


@pytest.mark.parametrize(
    "body",
    [
        {"message": "hi", "max_new_tokens": 0},
        {"message": "hi", "max_new_tokens": 513},
        {"message": "hi", "max_new_tokens": "many"},
        {"message": "   "},
        {"message": "hi", "history": [{"role": "robot", "content": "beep"}]},
        {"message": "hi", "history": "not a list"},
    ],
)
def test_a_request_it_cannot_answer_is_refused_before_anything_is_reserved(chat_space, buyer_escrow, body):
    buyer, escrow_id = buyer_escrow
    url = chat_space.server.base_url + "/v1/chat"
    answer = requests.post(url, json=body, headers={"X-Escrow-Id": escrow_id}, timeout=30)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"] if "error" in answer.json() else answer.json()
    assert "not charged" in json.dumps(error)
    escrow = chat_space.sandbox.escrow(buyer, escrow_id)
    assert escrow["spent_usdc"] == 0 and escrow["held_usdc"] == 0


def test_mcp_agents_get_the_whole_reply_and_its_receipt(chat_space, model, buyer_escrow):
    buyer, escrow_id = buyer_escrow
    arguments = {"message": "Hello", "history": [], "max_new_tokens": 20, "escrow_id": escrow_id}
    tool, result = call_tool(chat_space.server.base_url, "chat", arguments)
    assert "per 1k input tokens" in tool.description
    reply, receipt = tool_outputs(result)
    charged = check_receipt(receipt, model, "Hello", [], reply, 20)
    assert chat_space.sandbox.escrow_once_spent(buyer, escrow_id, charged)["spent_usdc"] == charged
