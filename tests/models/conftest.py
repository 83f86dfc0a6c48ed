"""Fixtures: tiny offline checkpoints (random weights, built in a temp folder, never downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_model import build_tiny_model
from tests.support.tiny_model import tiny_chat_model, tiny_chat_model_dir, tiny_encoder, tiny_encoder_dir  # noqa: F401


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny checkpoint whose config names its labels negative/neutral/positive."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-named") / "tiny-sentiment")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """The tiny checkpoint loaded through load_model, as the Space loads MODEL_ID."""
    from models import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_model_builder(tmp_path_factory):
    """Build a tiny checkpoint (same random weights) with other id2label names."""

    def build(id2label: dict[int, str]) -> Path:
        return build_tiny_model(tmp_path_factory.mktemp("tiny-variant") / "tiny-variant", id2label=id2label)

    return build
