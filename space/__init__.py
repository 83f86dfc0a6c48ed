"""What every paid Gradio Space needs around the gate: sandbox or production escrow, serving, limits, tabs.

    with starting(ModelLoadError), Space.from_env() as kit:   # sandbox without PF_API_KEY
        model = load_model(...)

        @kit.gate.paid(PerCall(price), reason="captioning", receipt=True)
        def caption(image): ...

        with kit.blocks(title=..., intro=..., pricing={"price_per_call_usdc": price},
                        api_name="caption", example_input='handle_file("cat.png")') as demo:
            with gr.Tab("Caption"):
                ...  # inputs, kit.escrow_id_box(), outputs, button.click(caption, ..., api_name="caption")
        kit.serve(demo)

The kit imports ``gate`` (and ``escrow`` for the sandbox, lazily); ``gate`` never imports it.
"""

from .config import ConfigError, SpaceConfig, usdc_from_env
from .data import pick_data_dir
from .kit import Space, starting
from .limits import Limits, RequestLimits
from .server import SettleFirstServer
from .ui import agent_snippet

__all__ = [
    "ConfigError",
    "Limits",
    "RequestLimits",
    "SettleFirstServer",
    "Space",
    "SpaceConfig",
    "agent_snippet",
    "pick_data_dir",
    "starting",
    "usdc_from_env",
]
