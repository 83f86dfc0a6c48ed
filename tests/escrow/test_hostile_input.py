"""Hostile bodies that once got a wrong answer (found while writing the OpenAPI document for the schema fuzzer).

- A JSON string with a lone surrogate escape ("\\ud800") is valid JSON text but no Unicode string: SQLite could
  not store it, the request was a 500 and the server dropped the connection.
- Amounts were scaled with Decimal arithmetic, which rounds to 28 digits and underflows tiny exponents: an amount
  with a non-zero digit past the 28th was rounded (1.0000000000000000000000000000001 passed as 1 USDC) and
  1E-999999999 passed as 0, where the contract says more than 6 decimal places is 422 invalid_amount.
"""

from __future__ import annotations

from decimal import MAX_EMAX, MIN_EMIN, Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from escrow.amounts import MAX_AMOUNT_MICRO, parse_amount
from escrow.errors import ApiError
from tests.escrow.helpers import assert_error, body, funded_escrow


def _routes(escrow_id: str, hold_id: str, seller_id: str) -> list[tuple[str, str, bytes]]:
    """(who, path, body) for every route that reads strings, each with a lone surrogate somewhere."""
    return [
        ("nobody", "/agents", b'{"name": "\\ud800"}'),
        ("buyer", "/faucet", b'{"amount_usdc": "1", "note": "\\udfff"}'),
        ("buyer", "/escrow", b'{"seller_id": "%s", "amount_usdc": "1", "ttl_seconds": 60, "description": "a\\udc00b"}'
         % seller_id.encode()),
        ("buyer", "/escrow", b'{"seller_id": "%s", "amount_usdc": "1", "ttl_seconds": 60, "meta": {"\\ud83d": 1}}'
         % seller_id.encode()),
        ("seller", f"/escrow/{escrow_id}/holds", b'{"amount_usdc": "0.1", "x": ["\\ud800"]}'),
        ("seller", f"/escrow/{escrow_id}/holds/{hold_id}/capture", b'{"amount_usdc": "0.1", "y": {"z": "\\ud800"}}'),
        ("seller", f"/escrow/{escrow_id}/holds/{hold_id}/void", b'{"\\ud800": null}'),
        ("seller", f"/escrow/{escrow_id}/deduct", b'{"amount_usdc": "0.1", "reason": "\\ud800"}'),
        ("buyer", f"/escrow/{escrow_id}/release", b'{"amount_usdc": "0.1", "meta": {"k": "\\ude00"}}'),
        ("seller", f"/escrow/{escrow_id}/submit-result", b'{"metric": "acc\\ud800", "score": 1}'),
        ("seller", f"/escrow/{escrow_id}/submit-result", b'{"metric": "acc", "score": 1, "model_repo": "\\ud800"}'),
    ]


def test_lone_surrogates_in_bodies_are_invalid_request_and_apply_nothing(escrow_server):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="2", release_condition={
        "type": "benchmark", "metric": "acc", "threshold": 0})
    hold = body(escrow_server.call(seller, "POST", f"/escrow/{escrow['id']}/holds", json={"amount_usdc": "1"}))
    agents = {"buyer": buyer, "seller": seller, "nobody": None}
    before = escrow_server.store.totals(), escrow_server.get_escrow(buyer, escrow["id"])
    for who, path, payload in _routes(escrow["id"], hold["hold_id"], seller.agent_id):
        # The same keep-alive session throughout: a 500 used to drop the connection as well.
        response = escrow_server.call(agents[who], "POST", path, data=payload)
        assert_error(response, 422, "invalid_request")
        assert "surrogate" in response.json()["error"]["message"]
    assert (escrow_server.store.totals(), escrow_server.get_escrow(buyer, escrow["id"])) == before
    # A surrogate pair is one valid character and stays welcome.
    paired = escrow_server.call(None, "POST", "/agents", data=b'{"name": "\\ud83d\\ude00"}')
    assert paired.status_code == 201, paired.text
    escrow_server.store.check_invariants()


@pytest.mark.parametrize(
    ("raw", "refund_remainder"),
    [
        (b"1.0000000000000000000000000000001", False),     # a non-zero digit past Decimal's 28-digit precision
        (b'"1.0000000000000000000000000000001"', False),
        (b"0.5000000000000000000000000000000000001", True),
        (b"1E-999999999", True),                            # underflowed to 0: a release of nothing
        (b"1.2345600000000000000000000001", False),
    ],
)
def test_amounts_with_digits_beyond_decimal_precision_are_refused_not_rounded(escrow_server, raw, refund_remainder):
    buyer, seller, escrow = funded_escrow(escrow_server, amount="2")
    payload = b'{"amount_usdc": %s, "refund_remainder": %s}' % (raw, b"true" if refund_remainder else b"false")
    response = escrow_server.call(buyer, "POST", f"/escrow/{escrow['id']}/release", data=payload)
    assert_error(response, 422, "invalid_amount")
    got = escrow_server.get_escrow(buyer, escrow["id"])
    assert (got["status"], got["spent_usdc"], got["remaining_usdc"]) == ("active", 0, 2)


_DIGITS = st.text("0123456789", min_size=1, max_size=40)
# Fractions that look like few decimals but have a digit far down: 5, 50000...0001, 123456000...07
_FRACTIONS = st.builds(lambda head, zeros, tail: head + "0" * zeros + tail,
                       st.text("0123456789", max_size=8), st.integers(0, 40), st.text("0123456789", max_size=3))


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(whole=_DIGITS, fraction=st.none() | _DIGITS | _FRACTIONS.filter(bool),
       exponent=st.none() | st.integers(-40, 40) | st.sampled_from([-999_999_999, -1_000_007, 999_999_999]),
       allow_zero=st.booleans())
def test_parse_amount_is_exact_for_any_digits(whole, fraction, exponent, allow_zero):
    text = whole + (f".{fraction}" if fraction is not None else "") + (f"E{exponent}" if exponent is not None else "")
    value = Decimal(text)
    with localcontext() as exact:
        # A reference that never rounds: more digits than any drawn value has, the widest exponent range.
        exact.prec, exact.Emin, exact.Emax = 200, MIN_EMIN, MAX_EMAX
        micro = value * 1_000_000
        fits = micro == micro.to_integral_value() and value * 1_000_000 <= MAX_AMOUNT_MICRO
    expected = int(micro) if fits and (allow_zero or micro > 0) else None
    try:
        got = parse_amount(value, allow_zero=allow_zero)
    except ApiError as refusal:
        assert refusal.status == 422 and refusal.code == "invalid_amount", refusal
        got = None
    assert got == expected, text
    if exponent is None:  # the same digits as a decimal string
        try:
            as_string = parse_amount(text, allow_zero=allow_zero)
        except ApiError:
            as_string = None
        assert as_string == expected, text
