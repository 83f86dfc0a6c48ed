"""space.Space in one process: the sandbox seller, the production key check, /pricing, the page, the ASGI app."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import gradio as gr
import pytest
from starlette.testclient import TestClient

from gate import PerToken
from space import ConfigError, Limits, Space, starting
from space.routes import with_json_body
from tests.support.processes import REPO, child_env, free_port


def sandbox_env(data_dir: Path, **more: str) -> dict[str, str]:
    return {"DATA_DIR": str(data_dir), "GRADIO_SERVER_PORT": str(free_port()), **more}


def page(kit: Space, *, escrow_box: bool = True, **more) -> gr.Blocks:
    """A page like app.py's: one paid tab holding the escrow-ID box."""
    options = {"title": "Paid echo", "intro": "Each echo costs **1 USDC**.", "api_name": "echo",
               "example_input": '"hello"', "pricing": {"price_per_call_usdc": Decimal("1.000000")}, **more}
    with kit.blocks(**options) as demo:
        with gr.Tab("Echo", id="echo"):
            text = gr.Textbox(label="Text")
            box = kit.escrow_id_box() if escrow_box else gr.Textbox(label="Escrow")
            gr.Button("Echo").click(lambda t, e: t, [text, box], [text], api_name="echo")
    return demo


def pricing_of(demo: gr.Blocks) -> dict:
    (fn,) = [f.fn for f in demo.fns.values() if f.api_name == "pricing"]
    return fn()


def components(demo: gr.Blocks) -> dict[str, dict]:
    """The page's components by elem_id, and the tabs by label."""
    found = {}
    for component in demo.get_config_file()["components"]:
        props = component.get("props", {})
        key = props.get("elem_id") or (component["type"] == "tabitem" and props.get("label"))
        if key:
            found[key] = props
    return found


@pytest.fixture
def kit(tmp_path):
    with Space.from_env(sandbox_env(tmp_path / "data")) as kit:
        yield kit


def test_sandbox_registers_the_space_as_a_seller_once_per_database(tmp_path):
    env = sandbox_env(tmp_path / "data")
    with Space.from_env(env) as first:
        assert first.sandbox
        seller_id = first.seller_id
    saved = json.loads((tmp_path / "data" / "sandbox-seller.json").read_text())
    assert saved["agent_id"] == seller_id
    with Space.from_env(env) as again:
        assert again.seller_id == seller_id


def test_sandbox_pricing_names_the_seller_the_apps_fields_and_the_sandbox(kit):
    answer = pricing_of(page(kit, pricing={"price_per_call_usdc": Decimal("0.001000"), "model": "vader"}))
    assert answer == {
        "seller_id": kit.seller_id,
        "price_per_call_usdc": "0.001000",  # a Decimal is given as its plain string
        "model": "vader",
        "escrow_api": kit.config.public_url + "/sandbox/api",
        "mode": "sandbox",
    }


def test_the_kit_fills_in_its_own_pricing_fields(kit):
    with pytest.raises(ValueError, match="seller_id"):
        page(kit, pricing={"seller_id": "agent_someone_else"})


def test_sandbox_page_has_the_wallet_and_agent_tabs_and_lands_escrows_in_the_box(kit):
    demo = page(kit, note="Answers with **vader**.", wallet_escrow_usdc=Decimal("0.050000"))
    found = components(demo)
    assert {"escrow-id", "new-escrow-id", "wallet-status", "model-note", "Echo", "Sandbox wallet",
            "Use from an agent"} <= set(found)
    config = json.dumps(demo.get_config_file(), default=str)
    assert "The escrow you open lands in the Echo tab." in config
    assert "0.050000" in config
    assert 'client.predict(\\"hello\\", escrow_id, api_name=\\"/echo\\")' in config
    assert kit.seller_id in config
    (opened,) = [f for f in demo.fns.values() if f.fn.__name__ == "open_escrow"]
    assert [o.elem_id for o in opened.outputs] == ["new-escrow-id", "escrow-id", "wallet-status"]


def test_without_an_escrow_box_the_wallet_shows_the_escrow_alone(kit):
    demo = page(kit, escrow_box=False)
    (opened,) = [f for f in demo.fns.values() if f.fn.__name__ == "open_escrow"]
    assert [o.elem_id for o in opened.outputs] == ["new-escrow-id", "wallet-status"]
    assert "model-note" not in components(demo)


def test_production_pricing_and_page(tmp_path, escrow_server):
    seller = escrow_server.register("the-space")
    env = {"PF_API_KEY": seller.api_key, "ESCROW_URL": escrow_server.url, "DATA_DIR": str(tmp_path)}
    with Space.from_env(env) as kit:
        assert not kit.sandbox
        demo = page(kit)
        assert kit.seller_id == seller.agent_id
        answer = pricing_of(demo)
    assert (answer["seller_id"], answer["escrow_api"], answer["mode"]) == (seller.agent_id, escrow_server.url, "production")
    found = components(demo)
    assert "Sandbox wallet" not in found and "new-escrow-id" not in found
    assert "Use from an agent" in found
    assert seller.api_key not in json.dumps(demo.get_config_file(), default=str)


def test_a_key_the_escrow_service_refuses_is_one_sentence_and_closes_the_gate(tmp_path, escrow_server):
    env = {"PF_API_KEY": "pf_test_" + "n" * 32, "ESCROW_URL": escrow_server.url, "DATA_DIR": str(tmp_path)}
    stopped = []
    kit = Space.from_env(env)
    kit.on_stop(lambda: stopped.append(True))
    with pytest.raises(ConfigError) as refused:
        page(kit)
    assert str(refused.value) == (
        "The escrow service did not accept PF_API_KEY or could not be reached; check the PF_API_KEY secret and ESCROW_URL."
    )
    assert stopped == [True]
    kit.close()  # idempotent
    assert stopped == [True]


def test_the_asgi_app_mounts_the_page_the_sandbox_and_the_limits(kit):
    stopped = []
    kit.on_stop(lambda: stopped.append(True))
    app = kit.asgi_app(page(kit), limits=Limits(max_bytes=2_000, session_capacity=7))
    with TestClient(app) as client:
        info = client.get("/gradio_api/info").json()
        assert {"/echo", "/pricing"} <= set(info["named_endpoints"])
        assert client.get("/sandbox/api/me").status_code == 401  # the sandbox escrow, no key given
        too_large = client.post("/gradio_api/call/echo", content=b"x" * 2_001, headers={"Content-Type": "application/json"})
        assert too_large.status_code == 413
        assert stopped == []
    assert stopped == [True]  # the lifespan closed the Space


def test_starting_turns_a_config_error_into_one_line_and_exit_1(capsys):
    with pytest.raises(SystemExit) as exited:
        with starting():
            raise ConfigError("SETTLEMENT must be one of lease, per_call, not 'x'.")
    assert exited.value.code == 1
    assert capsys.readouterr().err == "Cannot start the Space: SETTLEMENT must be one of lease, per_call, not 'x'.\n"

    class ModelLoadError(Exception):
        pass

    with pytest.raises(SystemExit):
        with starting(ModelLoadError):
            raise ModelLoadError("MODEL_ID names no model.")
    assert capsys.readouterr().err == "Cannot start the Space: MODEL_ID names no model.\n"
    with pytest.raises(KeyError):
        with starting(ModelLoadError):
            raise KeyError("a bug is not a start-up failure")


@pytest.mark.skipif(os.path.isdir("/data"), reason="/data exists here: pick_data_dir would choose it")
def test_a_temporary_data_folder_is_removed_at_exit_and_when_the_space_closes(tmp_path):
    script = "from space import pick_data_dir; print(pick_data_dir(None)[0])"
    made = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          check=True).stdout.strip()
    assert Path(made).name.startswith("paid-space-")
    assert not Path(made).exists()

    kit = Space.from_env({"GRADIO_SERVER_PORT": str(free_port())})
    assert "paid-space-" in kit.data_dir.name and kit.data_dir.is_dir()
    kit.close()  # removes it now, not only at exit (several Spaces may be built in one process)
    assert not kit.data_dir.exists()


def test_a_configured_data_folder_is_kept(tmp_path):
    with Space.from_env(sandbox_env(tmp_path / "kept")) as kit:
        pass
    assert (kit.data_dir / "sandbox-escrow.db").exists()


def test_ctrl_c_before_serving_stops_quietly_with_exit_0(capsys):
    with pytest.raises(SystemExit) as exited:
        with starting():
            raise KeyboardInterrupt
    assert exited.value.code == 0
    assert capsys.readouterr().err == "Stopped before the Space was serving (Ctrl-C).\n"



def test_a_paid_generator_is_also_a_plain_route_that_streams_ndjson(kit):
    def words(text: str, count: int = 3):
        """Yield the growing text."""
        for i in range(count):
            yield " ".join([text] * (i + 1))

    body_fn = with_json_body(words)
    assert inspect.isgeneratorfunction(body_fn)  # so the gate's route streams it as NDJSON
    assert list(inspect.signature(body_fn).parameters) == ["text", "count"]
    assert list(body_fn(text="w", count=2)) == ["w", "w w"]
    kit.paid(PerToken("0", "1", max_tokens=10), reason="words")(words)
    listing = kit._routes["words"].listing()
    assert listing["answer"] == "ndjson" and listing["parameters"] == ["text", "count"]
