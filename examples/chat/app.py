"""A paid chat Space: replies streamed token by token from a small instruct model, billed per token.

The buyer's escrow reserves the prompt's tokens plus the reply's most tokens (``max_new_tokens``);
at the end of the stream it pays for the prompt's tokens and the reply's, both counted by the
model's own tokenizer, so a buyer can recount them. A client that leaves mid-reply pays for what
was streamed to it; a failed reply costs nothing; the receipt names both counts.

Run it from the repository root (as Hugging Face runs ``app_file: examples/chat/app.py``):
``python examples/chat/app.py``. ``MODEL_ID`` picks another chat model (hub id or folder).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the kit (gate/, space/, models/) is at the root

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from gate import GateError, PerToken  # noqa: E402
from models import ModelLoadError, load_chat_model  # noqa: E402
from space import Limits, Space, starting, usdc_from_env  # noqa: E402
from space.ui import receipt_note, refusal_note  # noqa: E402

log = logging.getLogger("space")

MAX_NEW_TOKENS = 512  # the longest reply a call may ask for (and be charged for)
DEFAULT_NEW_TOKENS = 256
LIMITS = Limits.for_text(32_000)  # a conversation of up to 32,000 characters in one request


def main() -> None:
    """Configuration, the model, the paid function, the UI, then serve until stopped."""
    input_rate = usdc_from_env("PRICE_PER_1K_INPUT_TOKENS_USDC", default="0.0005")
    output_rate = usdc_from_env("PRICE_PER_1K_OUTPUT_TOKENS_USDC", default="0.0015")
    with Space.from_env() as kit:
        kit.seller_id  # noqa: B018 - production: PF_API_KEY is checked before the (slow) model load
        model = load_chat_model(os.environ.get("MODEL_ID", "").strip() or None)
        log.info("Model: %s on %s", model.name, model.device)

        def check(message: str, history: list[dict] | None = None, max_new_tokens: int = DEFAULT_NEW_TOKENS) -> None:
            """Refuse a reply length out of range or a conversation the model cannot read, before reserving."""
            if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
                raise ValueError("max_new_tokens must be a whole number.")
            if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
                raise ValueError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}.")
            model.prompt_ids(message, history or [])  # ValueError: not a conversation, or too long for the model

        def prompt_tokens(message, history=None, max_new_tokens=DEFAULT_NEW_TOKENS) -> int:
            return len(model.prompt_ids(message, history or []))  # the chat template's tokens, as the model reads them

        def reply_tokens(message, history=None, max_new_tokens=DEFAULT_NEW_TOKENS) -> int:
            return max_new_tokens

        # Reserve prompt + max_new_tokens; charge prompt + the tokens generated for the last text streamed.
        price = PerToken(input_rate, output_rate, max_tokens=MAX_NEW_TOKENS, count_tokens=model.count_tokens,
                         input_tokens=prompt_tokens, output_limit=reply_tokens)

        @kit.paid(price, reason="chat reply", receipt_extra={"model": model.name}, check=check)
        def chat(message: str, history: list[dict] | None = None, max_new_tokens: int = DEFAULT_NEW_TOKENS):
            """Reply to a message in a conversation, streamed as the growing text, for a fee in USDC per token.

            Args:
                message: The user's new message.
                history: The conversation so far: [{"role": "user" or "assistant", "content": "..."}], or empty.
                max_new_tokens: The most tokens the reply may have (1 to 512); the escrow reserves them.
            """
            yield from model.stream(model.prompt_ids(message, history or []), max_new_tokens)

        rates = (f"{input_rate.normalize():f} USDC per 1,000 prompt tokens and "
                 f"{output_rate.normalize():f} per 1,000 reply tokens")
        with kit.blocks(
            title="Paid chat",
            intro=f"Each reply costs **{rates}**, paid from an escrow you open for this Space. "
            "You pay for the tokens you got; a failed reply costs nothing.",
            note=f"Replies come from **{model.name}**; receipts name it and count the tokens.",
            pricing={"input_per_1k_tokens_usdc": input_rate, "output_per_1k_tokens_usdc": output_rate,
                     "max_new_tokens": MAX_NEW_TOKENS, "model": model.name},
            api_name="chat",
            example_input='"Hello!", [], 128',
            wallet_escrow_usdc="0.05",
            call_price_usdc=price.max_price(("Hello!",), {"max_new_tokens": MAX_NEW_TOKENS}),  # the longest reply
        ) as demo:
            with gr.Tab("Chat", id="chat"):
                escrow_box = kit.escrow_id_box()
                max_new = gr.Slider(1, MAX_NEW_TOKENS, value=DEFAULT_NEW_TOKENS, step=1, precision=0,
                                    label="Most tokens in a reply (reserved, then charged as used)")
                with gr.Accordion("Receipt of the last reply (JSON)", open=False):
                    receipt = gr.JSON(label="Receipt", elem_id="receipt")

                def chat_on_page(message, history, max_new_tokens, escrow_id, request: gr.Request):
                    """The page's chat: the same paid function; a refusal is a next step under the escrow box."""
                    try:
                        for reply, paid in chat(message, history, max_new_tokens, escrow_id, request):
                            yield reply, paid, receipt_note(paid) if paid else gr.skip()
                    except GateError as exc:  # not a reply: an empty one, which the next prompt leaves out
                        yield "", gr.skip(), refusal_note(exc, sandbox=kit.sandbox)

                gr.ChatInterface(chat_on_page, additional_inputs=[max_new, escrow_box],
                                 additional_outputs=[receipt, kit.payment_status], api_name="chat_on_page",
                                 api_visibility="private", concurrency_limit=4)
                # The public API agents call (Gradio, gradio_client, MCP): the conversation is passed in, as in
                # POST /v1/chat; outputs [reply, receipt]. No button of its own on the page.
                message, history, reply = gr.Textbox(visible=False), gr.JSON(visible=False), gr.Textbox(visible=False)
                gr.Button(visible=False).click(chat, [message, history, max_new, escrow_box], [reply, receipt],
                                               api_name="chat", concurrency_limit=4, concurrency_id="chat")

        kit.serve(demo, limits=LIMITS)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with starting(ModelLoadError):
        main()
