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
    with caplog.at_level(logging.INFO):
        model = load_model(UNREACHABLE_ID, allow_fallback=True)
    assert model.name == "vader"
    assert model.fallback_from == UNREACHABLE_ID
    # Short, for a page that names the model itself: no model id, no "could not be loaded" to repeat.
    assert model.fallback_reason == (
        "it is not in the local cache and Hugging Face Hub access is switched off (HF_HUB_OFFLINE)"
    )
    assert model.predict("I love this, it is wonderful").label == "positive"
    # One line says which model answers and why; nothing else is logged about it.
    (line,) = [record.getMessage() for record in caplog.records]
    assert line.startswith("Model: vader (offline fallback") and UNREACHABLE_ID in line and "HF_HUB_OFFLINE" in line


def test_an_uncached_hub_model_with_the_hub_off_is_refused_before_any_load(monkeypatch):
    import models.transformers_model

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("the model should have been refused before the transformers model was built")

    monkeypatch.setattr(models.transformers_model, "TransformersSentimentModel", must_not_run)
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_model(UNREACHABLE_ID)


def test_the_hub_counts_as_unreachable_when_hub_access_is_off():
    from models.loading import _hub_reachable

    assert _hub_reachable(DEFAULT_MODEL_ID, timeout_s=1) is False


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
