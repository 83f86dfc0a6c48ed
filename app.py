"""The Space: a paid sentiment classifier, gated by an escrow.

Two modes, chosen by the environment alone:
- sandbox (no ``PF_API_KEY``): the sandbox escrow runs inside this process and is
  served on the same port under ``/sandbox/api``; a wallet tab lets a person get
  test USDC and open an escrow.
- production (``PF_API_KEY`` set): the hosted escrow service (``ESCROW_URL``);
  no sandbox route and no wallet tab exist.

This file is the example an owner copies: configuration, the model, the paid function,
the UI, serve. ``space/`` does what every paid Space needs (the gate and the sandbox,
/pricing, the wallet and agent tabs, request limits, serving); ``gate/`` charges;
``models/`` classifies.
"""

from __future__ import annotations

import logging
import os
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from gate import PerCall  # noqa: E402
from models import MAX_TEXT_CHARS, DynamicBatcher, EmptyTextError, ModelLoadError, load_model  # noqa: E402
from models import require_text as model_accepts  # noqa: E402
from space import Limits, Space, starting, usdc_from_env  # noqa: E402

log = logging.getLogger("space")

#: What one request may hold: the longest text, even as 12-byte JSON escapes, plus the other fields.
LIMITS = Limits.for_text(MAX_TEXT_CHARS)


def require_text(text: str, *_: Any) -> None:
    """Refuse empty, too long or broken text before anything is reserved."""
    if not isinstance(text, str) or not text.strip():
        raise EmptyTextError("Please enter some text to classify.")
    model_accepts(text)  # length cap and valid Unicode (models.prediction): ValueError, not charged


def main() -> None:
    """Configuration, the model, the paid function, the UI, then serve until stopped."""
    # ---- configuration: the kit reads PF_API_KEY, ESCROW_URL, DATA_DIR...; this Space adds its price.
    price = usdc_from_env("PRICE_PER_CALL_USDC", default="0.001")
    with Space.from_env() as kit:  # sandbox or production: the gate and the data folder
        # ---- the model
        model = load_model(os.environ.get("MODEL_ID", "").strip() or None, allow_fallback=kit.sandbox)
        model_note = ""
        if model.fallback_reason:
            model_note = (
                f"**Offline fallback:** the reference model could not be loaded ({model.fallback_reason}), "
                f"so this sandbox answers with **{model.name}**. Receipts name the model that answered."
            )
            log.warning("Model fallback: %s; answering with %s", model.fallback_reason, model.name)
        log.info("Model: %s on %s", model.name, model.device)
        batcher = DynamicBatcher(model.predict_batch, max_batch_size=16, max_wait_ms=5)
        kit.on_stop(batcher.close)

        # ---- the paid function: a Gradio endpoint, an MCP tool and POST /v1/classify, all on one gate
        @kit.paid(PerCall(price), reason="sentiment classification", receipt_extra={"model": model.name},
                  check=require_text)
        def classify(text: str) -> dict:
            """Classify the sentiment of a text as negative, neutral or positive, for a fee in USDC.

            Args:
                text: The text to classify (up to 20,000 characters).
            """
            return batcher.submit(text).as_dict()

        # ---- the UI (the kit adds the sandbox wallet and "Use from an agent" tabs, and /pricing)
        price_text = f"{price.normalize():f}"
        with kit.blocks(
            title="Paid sentiment classifier",
            intro=f"Each classification costs **{price_text} USDC**, "
            "paid from an escrow you open for this Space. Failed calls cost nothing.",
            note=model_note,
            pricing={"price_per_call_usdc": price, "model": model.name},
            api_name="classify",
            example_input='"I love this!"',
            wallet_escrow_usdc=price * 50,
        ) as demo:
            with gr.Tab("Classify", id="classify"):
                text = gr.Textbox(label="Text", lines=3, placeholder="Type something to classify")
                escrow_box = kit.escrow_id_box()
                button = gr.Button(f"Classify ({price_text} USDC)", variant="primary")
                result = gr.JSON(label="Result", elem_id="result")
                receipt = gr.JSON(label="Receipt", elem_id="receipt")
                button.click(
                    classify, [text, escrow_box], [result, receipt], api_name="classify", concurrency_limit=32
                )

        # ---- serve: until stopped; the gate settles what it earned before the server stops listening
        kit.serve(demo, limits=LIMITS)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with starting(ModelLoadError):  # a setting or model it cannot start with: "Cannot start the Space: ...", exit 1
        main()
