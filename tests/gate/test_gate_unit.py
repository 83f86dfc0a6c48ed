"""The gate's checks that happen before any network call, its signature and its cache."""

from __future__ import annotations  # the gate must resolve string annotations

import inspect
import typing
from pathlib import Path

import gradio as gr
import pytest

from gate import EscrowGate, GateError, InvalidEscrowId, InvalidInput, MissingEscrowId, PerCall
from gate._cache import NOT_FOUND, EscrowFacts, FactsCache
from gate._gate import validate_escrow_id

GOOD_ID = "esc_" + "a1B2" * 6
HOSTILE_IDS = [
    "../me",
    "esc_x/release",
    "%2e%2e",
    "esc_" + "a" * 24 + "?x=1",
    "esc_" + "a" * 24 + "/release",
    " esc_" + "a" * 24,
    "esc_" + "a" * 24 + "\n",
    "esc_" + "a" * 24 + " ",
    "esc_" + "é" * 24,
    "esc_" + "a" * 19,
    "esc_" + "a" * 41,
    "esc_" + "a" * 10_000,
    "ESC_" + "a" * 24,
    "hold_" + "a" * 24,
    "esc_%2e%2e%2f" + "a" * 20,
    "esc_" + "a" * 23 + "\x00",
    "esc_" + "a" * 23 + "٣",  # an Arabic-Indic digit: alphanumeric for Python, not for the contract
]


class RecordingGate(EscrowGate):
    """A gate whose HTTP client records requests instead of sending them."""

    def __init__(self, **kwargs):
        super().__init__("http://127.0.0.1:9/api", "pf_test_secretkey", seller_id="agent_" + "s" * 24, **kwargs)
        self.sent = []

        def refuse(method, path, body, key):
            self.sent.append((method, path))
            raise AssertionError("no request may be sent")

        self._client._send = refuse


@pytest.fixture
def gate():
    g = RecordingGate()
    yield g
    g.close()


@pytest.mark.parametrize("escrow_id", HOSTILE_IDS)
def test_hostile_ids_are_refused_before_any_request(gate, escrow_id):
    ran = []

    @gate.paid(PerCall("0.001"), reason="test")
    def echo(text: str) -> str:
        ran.append(text)
        return text

    with pytest.raises(InvalidEscrowId) as refused:
        echo("hi", escrow_id)
    assert "not charged" in refused.value.message
    assert escrow_id not in refused.value.message
    assert ran == [] and gate.sent == []


@pytest.mark.parametrize("escrow_id", [None, 42, b"esc_" + b"a" * 24, ["x"]])
def test_non_string_ids_are_refused(escrow_id):
    with pytest.raises(InvalidEscrowId):
        validate_escrow_id(escrow_id)


def test_valid_ids_pass():
    assert validate_escrow_id(GOOD_ID) == GOOD_ID
    assert validate_escrow_id("esc_" + "Z9" * 20) == "esc_" + "Z9" * 20


def test_missing_id_says_how_to_pass_one(gate):
    @gate.paid(PerCall("0.001"), reason="test")
    def echo(text: str) -> str:
        return text

    with pytest.raises(MissingEscrowId) as refused:
        echo("hi")
    assert "X-Escrow-Id" in refused.value.message and "not charged" in refused.value.message
    assert gate.sent == []


@pytest.mark.parametrize("raised", [ValueError("Please enter some text"), gr.Error("Please enter some text")])
def test_input_check_refuses_before_any_request(gate, raised):
    def require_text(text):
        if not text.strip():
            raise raised

    @gate.paid(PerCall("0.001"), reason="test", check=require_text)
    def echo(text: str) -> str:
        raise AssertionError("must not run")

    with pytest.raises(InvalidInput) as refused:
        echo("  ", GOOD_ID)
    assert refused.value.message == "[invalid_input] Please enter some text. You were not charged."
    assert gate.sent == []


def test_messages_never_leak_the_key_or_url(gate):
    @gate.paid(PerCall("0.001"), reason="test")
    def echo(text: str) -> str:
        return text

    with pytest.raises(GateError) as refused:
        echo("x", "../me")
    for secret in ("pf_test_secretkey", "127.0.0.1", "Traceback"):
        assert secret not in refused.value.message


def test_gate_error_is_a_quiet_gradio_error():
    err = InvalidEscrowId()
    assert isinstance(err, gr.Error)
    assert err.print_exception is False and err.charged is False
    assert str(err) == err.message


def test_decoration_refuses_an_escrow_id_parameter_and_star_args(gate):
    with pytest.raises(TypeError, match="escrow_id"):

        @gate.paid(PerCall("0.001"), reason="test")
        def f(text: str, escrow_id: str):
            return text

    with pytest.raises(TypeError, match=r"\*args"):

        @gate.paid(PerCall("0.001"), reason="test")
        def g(*texts: str):
            return texts

    with pytest.raises(TypeError):
        gate.paid(0.001, reason="test")
    with pytest.raises(ValueError):
        gate.paid(PerCall("0.001"), reason=" ")


def test_wrapper_presents_its_own_resolved_signature(gate):
    @gate.paid(PerCall("0.001"), reason="test")
    def classify(text: str, progress=gr.Progress(), *, top_k: int = 1) -> dict:
        """Classify."""
        return {}

    assert not hasattr(classify, "__wrapped__")
    assert classify.__name__ == "classify"
    # Gradio's API page and MCP read the docstring: what a call costs, and what escrow_id is.
    assert classify.__doc__.startswith("Classify.\nCosts 0.001000 USDC per call from your escrow")
    assert "\nArgs:\n    escrow_id: The ID of your USDC escrow" in classify.__doc__
    params = inspect.signature(classify).parameters
    assert list(params) == ["text", "progress", "escrow_id", "request", "top_k"]
    assert isinstance(params["progress"].default, gr.Progress)
    assert params["escrow_id"].default is None  # optional for gradio_client (header instead)
    hints = typing.get_type_hints(classify)
    assert hints["text"] is str and hints["request"] is gr.Request and hints["return"] is dict


def test_wrapper_reuses_the_functions_own_request_parameter(gate):
    @gate.paid(PerCall("0.001"), reason="test", receipt=True)
    def whoami(text: str, request: gr.Request) -> str:
        return text

    assert list(inspect.signature(whoami).parameters) == ["text", "request", "escrow_id"]
    assert "return" not in typing.get_type_hints(whoami)  # the receipt changes the outputs


def test_wrapper_is_of_the_same_kind(gate):
    paid = gate.paid(PerCall("0.001"), reason="test")

    def sync(x: str): ...

    async def coro(x: str): ...

    def gen(x: str):
        yield x

    async def agen(x: str):
        yield x

    assert not inspect.iscoroutinefunction(paid(sync)) and not inspect.isgeneratorfunction(paid(sync))
    assert inspect.iscoroutinefunction(paid(coro))
    assert inspect.isgeneratorfunction(paid(gen))
    assert inspect.isasyncgenfunction(paid(agen))


def test_closed_gate_refuses_before_any_request():
    gate = RecordingGate()
    gate.close()
    gate.close()  # idempotent

    @gate.paid(PerCall("0.001"), reason="test")
    def echo(text: str) -> str:
        raise AssertionError("must not run")

    with pytest.raises(GateError, match="not charged"):
        echo("x", GOOD_ID)
    assert gate.sent == []


def test_from_env_needs_a_key():
    with pytest.raises(ValueError, match="PF_API_KEY"):
        EscrowGate.from_env({})
    with pytest.raises(ValueError, match="PF_API_KEY"):
        EscrowGate.from_env({"ESCROW_URL": "http://127.0.0.1:9/api"})
    gate = EscrowGate.from_env({"PF_API_KEY": "pf_live_x"})
    try:
        assert gate._client.base_url == "https://escrow.purpleflea.com/api"
    finally:
        gate.close()


def test_facts_cache_expires_with_the_injected_clock():
    now = [0.0]
    cache = FactsCache(lambda: now[0], ttl=60, negative_ttl=5)
    facts = EscrowFacts(GOOD_ID, "agent_x", "active", 1000.0)
    cache.put(facts)
    cache.put_not_found("esc_" + "b" * 24)
    assert cache.get(GOOD_ID) == facts
    assert cache.get("esc_" + "b" * 24) is NOT_FOUND
    now[0] = 6
    assert cache.get("esc_" + "b" * 24) is None  # unknown IDs are cached briefly
    assert cache.get(GOOD_ID) == facts
    now[0] = 61
    assert cache.get(GOOD_ID) is None
    cache.put(facts)
    cache.forget(GOOD_ID)
    assert cache.get(GOOD_ID) is None


def test_the_default_journal_lives_in_the_data_folder_where_there_is_one(tmp_path):
    from gate._gate import JOURNAL_FILE, default_journal

    assert default_journal({"DATA_DIR": str(tmp_path)}) == tmp_path / JOURNAL_FILE
    assert default_journal({"DATA_DIR": str(tmp_path / "missing")}) is None  # never created behind the owner's back
    assert default_journal({}) == (Path("/data") / JOURNAL_FILE if Path("/data").is_dir() else None)


def test_a_gate_is_a_context_manager_that_closes_itself():
    with RecordingGate(settlement="per_call") as gate:
        assert not gate._closed
    assert gate._closed
    gate.close()  # idempotent


def test_paid_route_checks_its_arguments_when_applied():
    with RecordingGate() as gate:
        with pytest.raises(TypeError):
            gate.paid_route("0.001", reason="x")
        with pytest.raises(ValueError):
            gate.paid_route(PerCall("0.001"), reason=" ")


def test_a_gate_dropped_without_close_is_still_closed_at_exit():
    import gc

    from gate import _gate

    gate = RecordingGate(settlement="per_call")
    del gate
    gc.collect()
    [kept] = [g for g in _gate._open_gates if isinstance(g, RecordingGate) and not g._closed]  # exit closes it
    kept.close()  # (atexit runs _gate._close_open_gates: tests/docs/test_readme_examples.py shows it in a process)
    assert kept not in _gate._open_gates
