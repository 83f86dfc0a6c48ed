"""A paid embeddings Space: a list of texts in, one normalised vector per text out, billed per 1,000 vectors.

Each call reserves and pays exactly its vectors' price, pro rata (rounded up to the micro-USDC once
per call); a failed call costs nothing; the receipt names the number of vectors. Concurrent calls
share the model's forward passes through the same dynamic batcher as the classifier.

Run it from the repository root (as Hugging Face runs ``app_file: examples/embeddings/app.py``):
``python examples/embeddings/app.py``. ``MODEL_ID`` picks another encoder (hub id or folder).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the kit (gate/, space/, models/) is at the root

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from gate import GateError, PerItem  # noqa: E402
from models import DynamicBatcher, ModelLoadError, load_embedding_model  # noqa: E402
from models.embedding import check_texts  # noqa: E402
from space import Limits, Space, starting, usdc_from_env  # noqa: E402
from space.ui import receipt_note, refusal_note  # noqa: E402

log = logging.getLogger("space")

MAX_TEXTS = 64  # texts per call
MAX_TEXT_CHARS = 2_000  # per text; the model reads its first 256 tokens (about 1,000 characters of English)
LIMITS = Limits.for_text(MAX_TEXTS * MAX_TEXT_CHARS, max_json_values=MAX_TEXTS + 100)


def main() -> None:
    """Configuration, the model, the paid function, the UI, then serve until stopped."""
    per_1k = usdc_from_env("PRICE_PER_1K_VECTORS_USDC", default="0.01")
    with Space.from_env() as kit:
        kit.seller_id  # noqa: B018 - production: PF_API_KEY is checked before the (slow) model load
        model = load_embedding_model(os.environ.get("MODEL_ID", "").strip() or None)
        log.info("Model: %s on %s (%d dimensions)", model.name, model.device, model.dimensions)
        # Texts from concurrent calls share forward passes (2.6x the vectors/s of 8 agents here); a lone call
        # waits at most 2 ms for company (bench/bench_examples.py).
        batcher = DynamicBatcher(model.embed_batch, max_batch_size=MAX_TEXTS, max_wait_ms=2, validate=lambda text: text)
        kit.on_stop(batcher.close)

        def check(texts: list[str]) -> None:
            """Refuse an empty, too long or broken list before anything is reserved."""
            check_texts(texts, max_texts=MAX_TEXTS, max_chars=MAX_TEXT_CHARS)

        price = PerItem(per_1k, count=lambda texts: len(texts), unit="vectors")

        @kit.paid(price, reason="text embeddings", check=check,
                  receipt_extra={"model": model.name, "dimensions": model.dimensions})
        def embed(texts: list[str]) -> list[list[float]]:
            """Embed texts as unit-length vectors (mean-pooled sentence embeddings), for a fee per 1,000 vectors.

            Args:
                texts: The texts to embed, 1 to 64 of up to 2,000 characters each; one vector per text, in order.
            """
            futures = [batcher.submit_future(text) for text in texts]
            return [future.result() for future in futures]

        with kit.blocks(
            title="Paid text embeddings",
            intro=f"Embeddings cost **{per_1k.normalize():f} USDC per 1,000 vectors**, pro rata, paid from an "
            "escrow you open for this Space. Failed calls cost nothing.",
            note=f"Vectors come from **{model.name}** ({model.dimensions} dimensions, unit length); receipts name it.",
            pricing={"price_per_1k_vectors_usdc": per_1k, "max_texts_per_call": MAX_TEXTS, "model": model.name,
                     "dimensions": model.dimensions},
            api_name="embed",
            example_input='["first text", "second text"]',
            wallet_escrow_usdc="0.05",
            call_price_usdc=price.max_price((["one text"],), {}),
        ) as demo:
            with gr.Tab("Embed", id="embed"):
                lines = gr.Textbox(label=f"Texts, one per line (at most {MAX_TEXTS})", lines=5)
                escrow_box = kit.escrow_id_box()
                button = gr.Button("Embed", variant="primary", elem_id="embed-button")
                vectors = gr.JSON(label="Vectors", elem_id="result")
                receipt = gr.JSON(label="Receipt", elem_id="receipt")

                def embed_on_page(text: str, escrow_id: str, request: gr.Request):
                    """The page's event: one text per line, the same paid function; a refusal is a sentence."""
                    try:
                        result, paid = embed([line for line in text.splitlines() if line.strip()], escrow_id, request)
                    except GateError as exc:
                        return gr.skip(), gr.skip(), refusal_note(exc, sandbox=kit.sandbox)
                    return result, paid, receipt_note(paid)

                button.click(embed_on_page, [lines, escrow_box], [vectors, receipt, kit.payment_status],
                             api_visibility="private", concurrency_limit=16, concurrency_id="embed")
                # The public API (Gradio, gradio_client, MCP): a list of texts in, [vectors, receipt] out.
                texts = gr.JSON(visible=False)
                gr.Button(visible=False).click(embed, [texts, escrow_box], [vectors, receipt], api_name="embed",
                                               concurrency_limit=16, concurrency_id="embed")

        kit.serve(demo, limits=LIMITS)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with starting(ModelLoadError):
        main()
