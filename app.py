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

from gate import GateError, PerCall  # noqa: E402
from models import MAX_TEXT_CHARS, DynamicBatcher, EmptyTextError, ModelLoadError, load_model  # noqa: E402
from models import require_text as model_accepts  # noqa: E402
from space import Limits, Space, starting, usdc_from_env  # noqa: E402
from space.ui import receipt_note, refusal_note  # noqa: E402

log = logging.getLogger("space")

#: What one request may hold: the longest text, even as 12-byte JSON escapes, plus the other fields.
LIMITS = Limits.for_text(MAX_TEXT_CHARS)

#: Texts a visitor can click to try the Space.
EXAMPLES = [
    "I love this, it is wonderful!",
    "The delivery was late and the box arrived broken.",
    "The meeting has moved to Thursday at 3 pm.",
]


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
        kit.seller_id  # noqa: B018 - production: PF_API_KEY is checked now, before the (slow) model load
        # ---- the model: one log line says which model answers (a sandbox fallback: also why)
        model = load_model(os.environ.get("MODEL_ID", "").strip() or None, allow_fallback=kit.sandbox)
        model_note = f"Answers come from **{model.name}**; receipts name it too."  # the page says which model answers
        if model.fallback_reason:  # load_model logged it
            model_note = (
                f"**Offline fallback:** the model `{model.fallback_from}` could not be loaded "
                f"({model.fallback_reason}), so this sandbox answers with **{model.name}**. "
                "Receipts name the model that answered."
            )
        else:
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
            call_price_usdc=price,
        ) as demo:
            with gr.Tab("Classify", id="classify"):
                text = gr.Textbox(label="Text", lines=3, placeholder="Type something to classify")
                gr.Examples(EXAMPLES, inputs=[text], label="Try an example", api_visibility="private")
                escrow_box = kit.escrow_id_box()  # sandbox: beside it, a button that opens an escrow in one click
                button = gr.Button(f"Classify ({price_text} USDC)", variant="primary", elem_id="classify-button")
                sentiment = gr.Label(label="Sentiment", elem_id="sentiment")
                with gr.Accordion("Raw result and receipt (JSON)", open=False, elem_id="raw"):
                    result = gr.JSON(label="Result", elem_id="result")
                    receipt = gr.JSON(label="Receipt", elem_id="receipt")

                def classify_on_page(text: str, escrow_id: str, last: dict | None, request: gr.Request):
                    """The page's own event: the same paid function; a refusal is a sentence, the last result stays."""
                    try:
                        prediction, paid = classify(text, escrow_id, request)
                    except GateError as exc:
                        note = refusal_note(exc, sandbox=kit.sandbox, kept_result=bool(last))
                        return gr.skip(), gr.skip(), gr.skip(), note
                    # The model gives the top label and its score (models.Prediction), not all three classes.
                    top = {prediction["label"]: prediction["score"]}
                    return top, prediction, paid, receipt_note(paid)

                button.click(
                    classify_on_page, [text, escrow_box, result], [sentiment, result, receipt, kit.payment_status],
                    api_visibility="private", concurrency_limit=32, concurrency_id="classify",
                )
                # The public API agents call (Gradio HTTP, gradio_client, MCP): inputs [text, escrow_id], outputs
                # [result, receipt], refusals raised as "[code] sentence" errors. No button of its own on the page.
                gr.Button(visible=False).click(
                    classify, [text, escrow_box], [result, receipt], api_name="classify",
                    concurrency_limit=32, concurrency_id="classify",
                )

        # ---- serve: until stopped; the gate settles what it earned before the server stops listening
        kit.serve(demo, limits=LIMITS)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with starting(ModelLoadError):  # a setting or model it cannot start with: "Cannot start the Space: ...", exit 1
        main()
