"""Money parsing/formatting and the price rules (no network)."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gate import PerCall, PerItem, PerSecond, PerToken
from gate.money import format_usdc, parse_usdc, round_up, to_decimal, to_usdc


@pytest.mark.parametrize("bad", [0.1, True, None, [1], b"1"])
def test_owner_amounts_refuse_floats_and_other_types(bad):
    with pytest.raises(TypeError):
        to_decimal(bad)


@pytest.mark.parametrize("bad", ["-0.001", "NaN", "Infinity", "abc", "", "1000000001"])
def test_owner_amounts_refuse_negative_nan_and_junk(bad):
    with pytest.raises(ValueError):
        to_decimal(bad)


def test_format_always_has_six_decimals():
    assert format_usdc(Decimal("0.001")) == "0.001000"
    assert format_usdc(Decimal(3)) == "3.000000"
    assert format_usdc(Decimal("0")) == "0.000000"


@pytest.mark.parametrize(
    "value,expected",
    [(Decimal("0.25"), Decimal("0.250000")), (7, Decimal("7.000000")), ("0.000001", Decimal("0.000001"))],
)
def test_parse_service_amounts(value, expected):
    assert parse_usdc(value) == expected


@pytest.mark.parametrize("bad", [0.25, True, None, "-1", "0.0000001", "NaN", {"a": 1}])
def test_parse_service_amounts_refuses_nonsense(bad):
    with pytest.raises(ValueError):
        parse_usdc(bad)


@given(st.decimals(min_value=0, max_value=10**6, allow_nan=False, allow_infinity=False, places=9))
def test_round_up_never_below_and_at_most_one_micro_above(amount):
    rounded = round_up(amount)
    assert rounded >= amount
    assert rounded - amount < Decimal("0.000001")
    assert rounded == rounded.quantize(Decimal("0.000001"))


@pytest.mark.parametrize(
    "value,expected",
    [("0.0010", Decimal("0.001")), ("0.0000010", Decimal("0.000001")), ("1E-3", Decimal("0.001")),
     (Decimal("2.50"), Decimal("2.5")), (3, Decimal(3)), ("0", Decimal(0))],
)
def test_listed_amounts_with_at_most_six_decimals_are_kept_exactly(value, expected):
    amount = to_usdc(value, name="price")
    assert amount == expected
    assert amount.as_tuple().exponent == -6  # 6 places, like every amount in the gate


@pytest.mark.parametrize("bad", ["0.0000001", "0.0010001", Decimal("1.0000005"), "1E-7"])
def test_listed_amounts_finer_than_a_micro_usdc_are_refused(bad):
    with pytest.raises(ValueError, match=r"^Lease.max_usdc [0-9.]+ has more than 6 decimals: "):
        to_usdc(bad, name="Lease.max_usdc")


def test_listed_amounts_are_checked_like_other_owner_amounts():
    with pytest.raises(TypeError):
        to_usdc(0.001)
    with pytest.raises(ValueError):
        to_usdc("-0.001")


def test_per_call_charges_exactly_the_listed_price():
    assert PerCall("0.0010").max_price((), {}) == PerCall("0.0010").actual_price((), {}, None, None)
    assert PerCall("0.0010").price == Decimal("0.001")
    assert PerCall("0.0010").describe() == "0.001000 USDC per call"
    assert PerCall("0.000001").price == Decimal("0.000001")
    assert PerCall(1).actual_price((), {}, None, None) == Decimal("1.000000")


def test_per_call_refuses_a_price_finer_than_a_micro_usdc():
    # It used to be advertised as 0.0000001 and charged 0.000001 (10x).
    with pytest.raises(ValueError) as refused:
        PerCall("0.0000001")
    assert str(refused.value) == (
        "price 0.0000001 has more than 6 decimals: USDC is charged in whole micro-USDC (0.000001)"
    )
    with pytest.raises(ValueError, match="more than 6 decimals"):
        PerCall("0.0000011")


def test_per_call_validates():
    for bad in ("0", "-1"):
        with pytest.raises(ValueError):
            PerCall(bad)
    with pytest.raises(TypeError):
        PerCall(0.001)


def test_per_token_counts_inputs_and_outputs_and_caps_output():
    price = PerToken("0.002", "0.004", max_tokens=10)
    args = ("one two three four five",)
    # reserve: 5 input + 10 output tokens
    assert price.max_price(args, {}) == Decimal("0.000050")
    assert price.actual_price(args, {}, "a b c", None) == Decimal("0.000022")
    # output beyond max_tokens is charged as max_tokens, never above the reservation
    assert price.actual_price(args, {}, "w " * 50, None) == price.max_price(args, {})
    # tuple outputs: strings inside are counted
    assert price.actual_price(args, {}, ("a b", 3, {"x": "c"}), None) == Decimal("0.000022")


def test_per_token_uses_the_owners_tokenizer():
    price = PerToken("1", "1", max_tokens=100, count_tokens=len)
    assert price.actual_price(("abcd",), {}, "xy", None) == Decimal("0.006000")
    with pytest.raises(ValueError):
        PerToken("0", "0", max_tokens=1)
    with pytest.raises(ValueError):
        PerToken("1", "1", max_tokens=0)
    with pytest.raises(TypeError):
        PerToken("1", 0.5, max_tokens=3)


def test_per_second_uses_its_clock_and_caps_at_max_seconds():
    now = [100.0]
    price = PerSecond("0.01", 5, clock=lambda: now[0])
    assert price.max_price((), {}) == Decimal("0.050000")
    started = price.start()
    now[0] += 1.5
    assert price.actual_price((), {}, None, started) == Decimal("0.015000")
    now[0] += 100
    assert price.actual_price((), {}, None, started) == Decimal("0.050000")
    with pytest.raises(ValueError):
        PerSecond("0.01", 0)
    with pytest.raises(TypeError):
        PerSecond(0.01, 5)


def test_computed_rates_may_be_finer_than_a_micro_usdc_and_round_up_per_call():
    per_token = PerToken("0.0000001", "0.0000003", max_tokens=10)
    # 5 input + 10 output tokens: 0.0000035 / 1000, rounded up to one micro-USDC
    assert per_token.max_price(("one two three four five",), {}) == Decimal("0.000001")
    now = [0.0]
    per_second = PerSecond("0.0000001", 5, clock=lambda: now[0])
    assert per_second.max_price((), {}) == Decimal("0.000001")
    started = per_second.start()
    now[0] += 2
    assert per_second.actual_price((), {}, None, started) == Decimal("0.000001")


def test_per_token_counts_a_calls_input_and_caps_its_output_with_the_owners_functions():
    def prompt_tokens(message, history, max_new_tokens=8):
        return 7  # e.g. the chat template's tokens, not the words of the arguments

    def new_tokens(message, history, max_new_tokens=8):
        return max_new_tokens

    price = PerToken("1", "2", max_tokens=20, input_tokens=prompt_tokens, output_limit=new_tokens)
    args = ("hi there", [{"role": "user", "content": "earlier words"}], 5)
    # reserve: 7 input + this call's 5 output tokens (not max_tokens' 20)
    assert price.max_price(args, {}) == Decimal("0.017000")
    charge = price.charge(args, {}, "one two three", None)
    assert (charge.amount, dict(charge.usage)) == (Decimal("0.013000"), {"input_tokens": 7, "output_tokens": 3})
    # more output than the call asked for is charged as its limit: never above the reservation
    assert price.charge(args, {}, "w " * 50, None).amount == price.max_price(args, {})
    # a limit above max_tokens is held to max_tokens; keyword arguments reach the functions too
    assert price.max_price(("hi", []), {"max_new_tokens": 99}) == Decimal("0.047000")


@pytest.mark.parametrize("bad", [-1, 1.5, True, None, "3"])
def test_per_token_refuses_a_count_that_is_not_a_non_negative_int(bad):
    with pytest.raises(TypeError):
        PerToken("1", "1", max_tokens=5, input_tokens=lambda *a: bad).max_price(("x",), {})
    with pytest.raises(TypeError):
        PerToken("1", "1", max_tokens=5, output_limit=lambda *a: bad).max_price(("x",), {})
    with pytest.raises(TypeError):
        PerToken("1", "1", max_tokens=5, count_tokens=lambda text: bad).charge(("x",), {}, "y", None)
    with pytest.raises(TypeError):
        PerToken("1", "1", max_tokens=5, input_tokens="not callable")


def test_per_item_prices_pro_rata_per_thousand_rounded_up_per_call():
    price = PerItem("0.01", count=lambda texts: len(texts), unit="vectors")
    assert price.max_price((["a", "b", "c"],), {}) == Decimal("0.000030")
    charge = price.charge((["a", "b", "c"],), {}, [[0.1], [0.2], [0.3]], None)
    assert (charge.amount, dict(charge.usage)) == (Decimal("0.000030"), {"vectors": 3})
    # finer than a micro-USDC per item: each call rounds up once, never down to free
    fine = PerItem("0.0005", count=len, unit="vectors")  # 0.0000005 USDC per vector
    assert fine.max_price(("a",), {}) == Decimal("0.000001")
    assert fine.max_price(("abc",), {}) == Decimal("0.000002")  # 3 items: 0.0000015, rounded up
    assert fine.max_price(("ab",), {}) == Decimal("0.000001")
    assert "1,000 vectors" in price.describe()
    with pytest.raises(ValueError):
        PerItem("0", count=len)
    with pytest.raises(TypeError):
        PerItem(0.01, count=len)
    with pytest.raises(TypeError):
        PerItem("0.01", count=3)
    with pytest.raises(TypeError):
        PerItem("0.01", count=lambda *a: -1).max_price((), {})


def test_per_second_names_the_seconds_it_charged():
    now = [0.0]
    price = PerSecond("0.01", 5, clock=lambda: now[0])
    started = price.start()
    now[0] += 1.25
    assert dict(price.charge((), {}, None, started).usage) == {"seconds": "1.250"}
    now[0] += 100
    assert dict(price.charge((), {}, None, started).usage) == {"seconds": "5.000"}
    assert dict(PerCall("0.001").charge((), {}, None, None).usage) == {}
