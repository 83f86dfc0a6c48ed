"""The page's payment parts without a browser: the sentences it shows, the sandbox wallet, and where the kit puts them."""

from __future__ import annotations

from decimal import Decimal

import gradio as gr
import pytest

from gate.errors import (
    EscrowExpired,
    EscrowNotFound,
    FunctionFailed,
    InsufficientFunds,
    InvalidEscrowId,
    InvalidInput,
    MissingEscrowId,
    ServiceUnavailable,
)
from space import Space
from space.ui import ONE_CLICK_LABEL, SandboxWallet, WalletRefused, receipt_note, refusal_note, usdc_text
from tests.space.test_kit import components, sandbox_env

ESCROW = "esc_" + "a" * 24


def test_amounts_read_as_a_person_reads_them():
    assert [usdc_text(v) for v in ("0.049000", "10.000000", "0.000001", Decimal("0.050"), 1, "0.000000")] == [
        "0.049", "10", "0.000001", "0.05", "1", "0"]
    assert usdc_text("not a number") == "not a number"


def test_a_paid_call_in_words():
    receipt = {"model": "vader", "escrow_id": ESCROW, "charge_id": "chg_x", "charged_usdc": "0.001000",
               "remaining_usdc": "0.049000", "reason": "sentiment classification", "settlement": "lease"}
    assert receipt_note(receipt) == f"✓ Paid **0.001 USDC** · **0.049 USDC** left in `{ESCROW}` · answered by **vader**"
    no_balance = {"escrow_id": ESCROW, "charged_usdc": "0.001000", "remaining_usdc": None}
    assert receipt_note(no_balance) == f"✓ Paid **0.001 USDC** · from `{ESCROW}`"
    tokens = {**no_balance, "usage": {"input_tokens": 31, "output_tokens": 1200}}
    assert receipt_note(tokens) == f"✓ Paid **0.001 USDC** for 31 input tokens and 1,200 output tokens · from `{ESCROW}`"
    assert receipt_note({**no_balance, "usage": {"vectors": 3}}).startswith("✓ Paid **0.001 USDC** for 3 vectors ·")


@pytest.mark.parametrize("sandbox", [True, False])
def test_no_escrow_points_a_person_at_where_to_get_one(sandbox):
    said = refusal_note(MissingEscrowId(), sandbox=sandbox)
    assert "Escrow ID box is empty" in said and "You were not charged." in said
    assert "X-Escrow-Id" not in said and "argument" not in said  # written for people, not API callers
    assert (ONE_CLICK_LABEL in said and "Sandbox wallet" in said) == sandbox
    assert ("Use from an agent" in said) == (not sandbox)


@pytest.mark.parametrize(
    "error,next_step",
    [
        (InvalidEscrowId(), "Paste it again"),
        (EscrowNotFound(ESCROW), "Open a new one"),
        (EscrowExpired(ESCROW), "Open a new one"),
        (InsufficientFunds(ESCROW, Decimal("0.001"), Decimal("0.0004")), "To top up, open a new escrow"),
        (ServiceUnavailable(), "Wait a few seconds"),
        (FunctionFailed("sentiment classification"), "Wait a few seconds"),
        (InvalidInput("Please enter some text to classify."), "Please enter some text"),
    ],
)
def test_each_refusal_says_what_happened_what_to_do_and_that_nothing_was_charged(error, next_step):
    said = refusal_note(error, sandbox=True)
    assert said.startswith("⚠ ")
    assert next_step in said
    assert said.count("not charged") == 1, said
    assert "[" not in said  # the "[code]" prefix is for programs
    assert refusal_note(error, sandbox=True, kept_result=True).endswith("The result below is from your last paid call.")


def test_the_wallet_refuses_an_escrow_smaller_than_one_call_before_asking_the_sandbox():
    wallet = SandboxWallet("http://127.0.0.1:9/unreachable", "agent_x", escrow_usdc=Decimal("0.05"),
                           call_price_usdc=Decimal("0.001"))
    with pytest.raises(WalletRefused) as refused:
        wallet.open_escrow({"agent_id": "agent_b", "api_key": "pf_test_b"}, "0.0005", 3600)
    assert str(refused.value) == (
        "An escrow of 0.0005 USDC cannot pay for a single call: one call costs 0.001 USDC. "
        "Open one of at least 0.001 USDC (the suggested 0.05 USDC pays for 50 calls)."
    )
    assert wallet.check_amount(" 0.001 ") == "0.001"
    assert wallet.check_amount("abc") == "abc"  # malformed or zero: the sandbox's own sentence says why
    assert wallet.check_amount("0") == "0"


def test_one_click_registers_funds_and_opens_an_escrow_then_reuses_the_buyer(escrow_server):
    seller = escrow_server.register("the-space")
    wallet = SandboxWallet(escrow_server.url, seller.agent_id, escrow_usdc=Decimal("0.05"),
                           call_price_usdc=Decimal("0.001"))
    buyer, escrow_id, said = wallet.one_click(None)
    assert said == (f"Opened escrow `{escrow_id}` with **0.05 test USDC**, enough for 50 calls, for 60 minutes. "
                    "Now click **Classify**.")
    assert wallet.balance(buyer) == Decimal("9.95")
    again, second, _ = wallet.one_click(buyer)
    assert again == buyer and second != escrow_id
    assert wallet.balance(buyer) == Decimal("9.9")  # no second faucet claim while the balance covers an escrow
    assert "balance **9.9 USDC**, 2 escrow(s) open" in wallet.status(buyer)
    with pytest.raises(WalletRefused, match="A valid API key is required"):
        wallet.one_click({"agent_id": "agent_x", "api_key": "pf_test_" + "x" * 32})


def paid_tab(kit: Space) -> gr.Blocks:
    with kit.blocks(title="Paid echo", intro="1 USDC a call.", api_name="echo", example_input='"hi"',
                    pricing={"price_per_call_usdc": Decimal("1")}, call_price_usdc="1") as demo:
        with gr.Tab("Echo"):
            text = gr.Textbox(label="Text")
            box = kit.escrow_id_box()
            gr.Button("Echo").click(lambda t, e: t, [text, box], [text], api_name="echo")
    return demo


def test_sandbox_page_has_the_one_click_escrow_and_a_status_line_for_payments(tmp_path):
    with Space.from_env(sandbox_env(tmp_path / "data")) as kit:
        demo = paid_tab(kit)
        found = components(demo)
        assert {"escrow-id", "one-click-escrow", "payment-status", "wallet-status"} <= set(found)
        assert found["one-click-escrow"]["value"] == ONE_CLICK_LABEL
        assert kit.payment_status.elem_id == "payment-status"
        (one_click,) = [f for f in demo.fns.values() if f.fn.__name__ == "open_in_one_click"]
        assert [o.elem_id for o in one_click.outputs][1:] == ["escrow-id", "payment-status"]
        assert one_click.api_visibility == "private"
        assert {f.api_name for f in demo.fns.values() if f.api_visibility == "public"} == {"echo", "pricing"}


def test_production_page_has_the_status_line_but_no_sandbox_button(tmp_path, escrow_server):
    seller = escrow_server.register("the-space")
    env = {"PF_API_KEY": seller.api_key, "ESCROW_URL": escrow_server.url, "DATA_DIR": str(tmp_path)}
    with Space.from_env(env) as kit:
        found = components(paid_tab(kit))
    assert "payment-status" in found and "escrow-id" in found
    assert "one-click-escrow" not in found and "Sandbox wallet" not in found
