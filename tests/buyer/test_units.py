"""The buyer library's pieces that need no server: configuration, money, and reading Gradio's error messages."""

from __future__ import annotations

from decimal import Decimal

import pytest

import buyer
from buyer import HOSTED_ESCROW_URL, InsufficientFunds, InvalidInput, PaymentError, Wallet
from buyer._money import _usdc
from buyer.errors import _gradio_error


def test_from_env_reads_the_buyer_key_and_its_own_escrow_url():
    wallet = Wallet.from_env({"PF_BUYER_KEY": "pf_live_k"})
    assert wallet.escrow_api == HOSTED_ESCROW_URL and "pf_live_k" not in repr(wallet)
    assert Wallet.from_env({"PF_BUYER_KEY": "k", "ESCROW_URL": "http://a/api/"}).escrow_api == "http://a/api"
    both = {"PF_BUYER_KEY": "k", "ESCROW_URL": "http://a/api", "PF_BUYER_ESCROW_URL": "http://b/api"}
    assert Wallet.from_env(both).escrow_api == "http://b/api"
    with pytest.raises(ValueError, match="PF_BUYER_KEY"):
        Wallet.from_env({"PF_API_KEY": "the seller's key is never a buyer's"})


def test_money_is_never_a_float():
    assert _usdc("0.05", "x") == Decimal("0.050000") and _usdc(1, "x") == Decimal("1.000000")
    with pytest.raises(TypeError):
        _usdc(0.05, "budget_usdc")
    for bad in ("0.0000001", "-1", "NaN", "abc"):
        with pytest.raises(ValueError):
            _usdc(bad, "budget_usdc")


def test_gradio_messages_with_and_without_a_code():
    error = _gradio_error("[insufficient_funds] Escrow esc_x has 0.000400 USDC left; this call costs 0.001000 USDC. "
                          "You were not charged.", escrow_id="esc_x")
    assert type(error) is InsufficientFunds and error.charged is False and error.escrow_id == "esc_x"
    assert error.message.startswith("Escrow esc_x has")
    assert type(_gradio_error("Texts of up to 20,000 characters. You were not charged.")) is InvalidInput
    unknown = _gradio_error("Something else broke")
    assert type(unknown) is PaymentError and unknown.code == "unknown" and unknown.charged is None
    assert _gradio_error(None).charged is None
    other = _gradio_error("[rate_limited] Slow down. You were not charged.")
    assert type(other) is PaymentError and other.code == "rate_limited"


def test_public_api_is_explicit_and_documented():
    for name in buyer.__all__:
        obj = getattr(buyer, name)
        if isinstance(obj, type):
            assert obj.__doc__ and "\n" not in obj.__doc__.strip(), name
            for attr, member in vars(obj).items():
                if callable(member) and not attr.startswith("_"):
                    assert member.__doc__ and "\n" not in member.__doc__.strip(), f"{name}.{attr}"
