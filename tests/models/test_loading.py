"""load_model's failure modes: one clear sentence in production, VADER with a reason in sandbox mode."""

import logging

import pytest

from models import DEFAULT_MODEL_ID, ModelLoadError, load_model

UNREACHABLE_ID = "nobody-at-all/no-such-sentiment-model"


@pytest.fixture(autouse=True)
def _hub_is_offline():
    # tests/conftest.py sets HF_HUB_OFFLINE=1 before huggingface_hub is imported; without it these
    # tests would wait on network retries instead of failing fast.
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE, "HF_HUB_OFFLINE must be set before huggingface_hub is imported"


def assert_one_clear_sentence(message: str, model_id: str) -> None:
    assert message.startswith("Could not load the sentiment model ")
    assert repr(model_id) in message
    assert "MODEL_ID" in message  # how to fix it
    assert message.endswith(".") and message.count("\n") == 0
    assert "Traceback" not in message and 'File "' not in message


def test_default_model_is_the_newer_cardiff_checkpoint():
    assert DEFAULT_MODEL_ID == "cardiffnlp/twitter-roberta-base-sentiment-latest"


def test_unreachable_model_in_production_is_one_sentence():
    with pytest.raises(ModelLoadError) as caught:
        load_model(UNREACHABLE_ID)
    assert_one_clear_sentence(str(caught.value), UNREACHABLE_ID)
    assert "HF_HUB_OFFLINE" in str(caught.value)
    assert caught.value.model_id == UNREACHABLE_ID


def test_unreachable_model_in_sandbox_falls_back_to_vader(caplog):
    with caplog.at_level(logging.WARNING, logger="models"):
        model = load_model(UNREACHABLE_ID, allow_fallback=True)
    assert model.name == "vader"
    assert UNREACHABLE_ID in model.fallback_reason and "could not be loaded" in model.fallback_reason
    assert model.predict("I love this, it is wonderful").label == "positive"
    assert any("VADER" in record.getMessage() and UNREACHABLE_ID in record.getMessage() for record in caplog.records)


def test_missing_local_folder_is_one_sentence(tmp_path):
    missing = str(tmp_path / "no-model-here")
    with pytest.raises(ModelLoadError) as caught:
        load_model(missing)
    assert_one_clear_sentence(str(caught.value), missing)
    assert "no such folder" in str(caught.value)


def test_folder_without_a_model_is_one_sentence(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(tmp_path))
    assert_one_clear_sentence(str(caught.value), str(tmp_path))
    assert "does not hold" in str(caught.value)


def test_blank_model_id_means_the_default(monkeypatch):
    asked = []
    monkeypatch.setattr("models.loading._load_transformers_model", lambda model_id, device: asked.append(model_id))
    load_model(None)
    load_model("  ")
    assert asked == [DEFAULT_MODEL_ID, DEFAULT_MODEL_ID]


def test_unusable_device_is_a_load_error(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="device"):
        load_model(str(tiny_model_dir), device="no-such-device")
