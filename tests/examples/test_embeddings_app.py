"""examples/embeddings/app.py: vectors billed per 1,000, pro rata, over gradio_client, the plain route and MCP,
against the sandbox escrow inside the Space; the ledger must hold exactly what the receipts say."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
import requests
from gradio_client import Client

from models import load_embedding_model
from tests.support.mcp import call_tool, tool_outputs

PER_VECTOR = Decimal("0.00001")  # the example's default: 0.01 USDC per 1,000 vectors


@pytest.fixture(scope="module")
def encoder(tiny_encoder_dir):
    return load_embedding_model(str(tiny_encoder_dir))


@pytest.fixture
def buyer_escrow(embeddings_space):
    return embeddings_space.buyer_with_escrow("0.01")


def check_vectors(vectors: list, texts: list[str], encoder) -> None:
    """One unit vector per text, in order, as the model computes it alone."""
    assert len(vectors) == len(texts)
    for vector, expected in zip(vectors, encoder.embed_batch(texts)):
        assert len(vector) == encoder.dimensions
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, abs_tol=1e-5)
        assert max(abs(a - b) for a, b in zip(vector, expected)) < 1e-4


def check_receipt(receipt: dict, texts: list[str], encoder) -> Decimal:
    assert receipt["usage"] == {"vectors": len(texts)}
    assert Decimal(receipt["charged_usdc"]) == len(texts) * PER_VECTOR
    assert receipt["model"] == encoder.name and receipt["dimensions"] == encoder.dimensions
    return Decimal(receipt["charged_usdc"])


def test_vectors_over_gradio_client_and_the_plain_route_cost_exactly_their_receipts(
    embeddings_space, encoder, buyer_escrow
):
    buyer, escrow_id = buyer_escrow
    first = ["I love this, it is wonderful.", "The train arrives at nine.", "Paid calls settle in USDC."]
    vectors, receipt = Client(embeddings_space.url, verbose=False).predict(first, escrow_id, api_name="/embed")
    check_vectors(vectors, first, encoder)
    charged = [check_receipt(receipt, first, encoder)]

    second = [f"text number {i}" for i in range(7)]
    answer = requests.post(embeddings_space.server.base_url + "/v1/embed", json={"texts": second},
                           headers={"X-Escrow-Id": escrow_id}, timeout=30)
    assert answer.status_code == 200, answer.text
    check_vectors(answer.json()["result"], second, encoder)
    charged.append(check_receipt(answer.json()["receipt"], second, encoder))

    escrow = embeddings_space.sandbox.escrow_once_spent(buyer, escrow_id, sum(charged))
    assert escrow["spent_usdc"] == sum(charged) == Decimal("0.000100")  # the lease holds the rest until it idles


@pytest.mark.parametrize(
    "texts",
    [[], ["fine", "   "], ["x" * 2_001], [f"t{i}" for i in range(65)], ["fine", 3], "not a list", ["\ud800"]],
)
def test_texts_it_cannot_embed_are_refused_before_anything_is_reserved(embeddings_space, buyer_escrow, texts):
    buyer, escrow_id = buyer_escrow
    answer = requests.post(embeddings_space.server.base_url + "/v1/embed", json={"texts": texts},
                           headers={"X-Escrow-Id": escrow_id}, timeout=30)
    assert answer.status_code == 422, answer.text
    assert "not charged" in answer.text
    escrow = embeddings_space.sandbox.escrow(buyer, escrow_id)
    assert escrow["spent_usdc"] == 0 and escrow["held_usdc"] == 0


def test_mcp_agents_get_vectors_and_their_receipt(embeddings_space, encoder, buyer_escrow):
    buyer, escrow_id = buyer_escrow
    texts = ["Agents call the Space.", "Numbers like 42 appear too."]
    tool, result = call_tool(embeddings_space.server.base_url, "embed", {"texts": texts, "escrow_id": escrow_id})
    assert "per 1,000 vectors" in tool.description
    texts_schema = tool.inputSchema["properties"]["texts"]  # from the type hint: Gradio's gr.JSON says {"type": {}}
    assert (texts_schema["type"], texts_schema["items"]) == ("array", {"type": "string"})
    vectors, receipt = tool_outputs(result)
    check_vectors(vectors, texts, encoder)
    charged = check_receipt(receipt, texts, encoder)
    assert embeddings_space.sandbox.escrow_once_spent(buyer, escrow_id, charged)["spent_usdc"] == charged
