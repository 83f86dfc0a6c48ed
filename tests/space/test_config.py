"""space.SpaceConfig and space.usdc_from_env: what the environment says, or one sentence saying how to fix it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from space import ConfigError, SpaceConfig, usdc_from_env


def test_an_empty_environment_is_a_sandbox_on_loopback():
    config = SpaceConfig.from_env({})
    assert config.sandbox
    assert (config.host, config.port, config.settlement) == ("127.0.0.1", 7860, "lease")
    assert config.public_url == config.loopback_url == "http://127.0.0.1:7860"
    assert config.escrow_url is None and config.data_dir is None


def test_a_key_means_production_and_blank_values_mean_unset():
    config = SpaceConfig.from_env(
        {"PF_API_KEY": " pf_test_abc ", "ESCROW_URL": "  ", "DATA_DIR": "", "SETTLEMENT": " Per_Call "}
    )
    assert not config.sandbox
    assert config.api_key == "pf_test_abc"
    assert config.escrow_url is None and config.data_dir is None
    assert config.settlement == "per_call"


@pytest.mark.parametrize(
    "host,space_host,public,loopback",
    [
        ("0.0.0.0", "", "http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("localhost", "", "http://localhost:9000", "http://127.0.0.1:9000"),
        ("0.0.0.0", "me-classifier.hf.space", "https://me-classifier.hf.space", "http://127.0.0.1:9000"),
        ("10.0.0.5", "", "http://10.0.0.5:9000", "http://10.0.0.5:9000"),
    ],
)
def test_public_and_loopback_urls(host, space_host, public, loopback):
    env = {"GRADIO_SERVER_NAME": host, "GRADIO_SERVER_PORT": "9000", "SPACE_HOST": space_host}
    config = SpaceConfig.from_env(env)
    assert (config.public_url, config.loopback_url) == (public, loopback)


@pytest.mark.parametrize(
    "env,sentence",
    [
        ({"GRADIO_SERVER_PORT": "http"}, "GRADIO_SERVER_PORT must be a port number, not 'http'."),
        ({"GRADIO_SERVER_PORT": "70000"}, "GRADIO_SERVER_PORT must be a port number, not '70000'."),
        ({"GRADIO_SERVER_PORT": "-1"}, "GRADIO_SERVER_PORT must be a port number, not '-1'."),
        ({"SETTLEMENT": "batch"}, "SETTLEMENT must be one of lease, per_call, not 'batch'."),
    ],
)
def test_a_bad_setting_is_one_sentence(env, sentence):
    with pytest.raises(ConfigError) as refused:
        SpaceConfig.from_env(env)
    assert str(refused.value) == sentence


def test_a_price_is_read_as_it_will_be_charged():
    assert usdc_from_env("PRICE", "0.001", {}) == Decimal("0.001")
    assert usdc_from_env("PRICE", "0.001", {"PRICE": " 0.25 "}) == Decimal("0.25")
    assert str(usdc_from_env("PRICE", "0.001", {"PRICE": "2"})) == "2.000000"  # whole micro-USDC


@pytest.mark.parametrize(
    "raw,sentence",
    [
        ("abc", "PRICE_PER_CALL_USDC must be a positive decimal number such as 0.001, not 'abc'."),
        ("0", "PRICE_PER_CALL_USDC must be a positive decimal number such as 0.001, not '0'."),
        ("-1", "PRICE_PER_CALL_USDC must be a positive decimal number such as 0.001, not '-1'."),
        ("NaN", "PRICE_PER_CALL_USDC must be a positive decimal number such as 0.001, not 'NaN'."),
        ("Infinity", "PRICE_PER_CALL_USDC must be a positive decimal number such as 0.001, not 'Infinity'."),
        ("0.0000001", "PRICE_PER_CALL_USDC 0.0000001 has more than 6 decimals: "
                      "USDC is charged in whole micro-USDC (0.000001)."),
        ("1e20", "PRICE_PER_CALL_USDC is above 1000000000 USDC (got '1e20')."),
    ],
)
def test_a_price_that_cannot_be_charged_as_listed_is_one_sentence(raw, sentence):
    with pytest.raises(ConfigError) as refused:
        usdc_from_env("PRICE_PER_CALL_USDC", "0.001", {"PRICE_PER_CALL_USDC": raw})
    assert str(refused.value) == sentence
