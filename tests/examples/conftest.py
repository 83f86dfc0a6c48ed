"""The example Spaces as Hugging Face runs them: `python examples/<name>/app.py` from the repository root, on
tiny offline models loaded through the same code as the real ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import space_process
from tests.support.space import RunningSpace
from tests.support.tiny_model import tiny_chat_model_dir, tiny_encoder_dir  # noqa: F401 - fixtures


def example_space(tmp: Path, app: str, model_dir: Path, **env: str) -> Iterator[RunningSpace]:
    # No PYTHONPATH: the app finds the kit at the repository root by itself, as on Hugging Face.
    server = space_process(tmp, app=app, MODEL_ID=str(model_dir), PYTHONPATH="", **env).start()
    yield RunningSpace(server, tmp / "space-data")
    server.stop()


@pytest.fixture(scope="module")
def chat_space(tmp_path_factory, tiny_chat_model_dir) -> Iterator[RunningSpace]:  # noqa: F811
    yield from example_space(tmp_path_factory.mktemp("chat-space"), "examples/chat/app.py", tiny_chat_model_dir)


@pytest.fixture(scope="module")
def embeddings_space(tmp_path_factory, tiny_encoder_dir) -> Iterator[RunningSpace]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("embeddings-space")
    yield from example_space(tmp, "examples/embeddings/app.py", tiny_encoder_dir)
