"""The transformers path, exercised with a tiny offline RoBERTa loaded exactly like MODEL_ID."""

import pytest

from models import LABELS, EmptyTextError, ModelLoadError, Prediction, load_model

TEXTS = [
    "I love this, it is wonderful.",
    "This is terrible and I hate it.",
    "The meeting has been moved to Thursday.",
    "Great coffee, friendly staff, will come back.",
    "Why does this keep crashing every single time?",
    "ok",
    "Numbers like 42 and emoji :) appear too, and some words the tokenizer never saw: zyxxqv.",
]


def test_tiny_model_loads_through_load_model(tiny_model, tiny_model_dir):
    assert tiny_model.name == tiny_model_dir.name  # a folder is named by its name, not its full path
    assert tiny_model.device == "cpu"
    assert tiny_model.fallback_reason is None
    assert load_model(str(tiny_model_dir)) is tiny_model  # loaded once per process


def test_device_is_chosen_automatically_and_can_be_overridden(tiny_model, tiny_model_dir):
    import torch

    assert tiny_model.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert load_model(str(tiny_model_dir), device="cpu").device == "cpu"


def test_predictions_are_human_labels_with_probability_scores(tiny_model):
    predictions = [tiny_model.predict(text) for text in TEXTS]
    assert all(isinstance(prediction, Prediction) for prediction in predictions)
    assert {prediction.label for prediction in predictions} <= set(LABELS)
    assert all(1 / 3 <= prediction.score <= 1.0 for prediction in predictions)  # argmax of a 3-way softmax
    assert len({round(prediction.score, 6) for prediction in predictions}) > 1  # the input matters


def test_batch_matches_one_by_one(tiny_model):
    one_by_one = [tiny_model.predict(text) for text in TEXTS]
    batched = tiny_model.predict_batch(TEXTS)
    assert [prediction.label for prediction in batched] == [prediction.label for prediction in one_by_one]
    # Padding changes the arithmetic slightly, never the answer.
    assert [prediction.score for prediction in batched] == pytest.approx(
        [prediction.score for prediction in one_by_one], abs=1e-4
    )
    assert tiny_model.predict_batch([]) == []


def test_long_input_is_truncated_not_fatal(tiny_model):
    # The tiny tokenizer states no limit (like the Cardiff checkpoints), so the limit comes from
    # the 130 position embeddings: 128 tokens.
    assert tiny_model.max_tokens == 128
    # 1,600 words: far past 128 tokens, within MAX_TEXT_CHARS even with the tail added below.
    long_text = " ".join(["wonderful", "terrible", "meeting", "zyxxqv"] * 400)
    prediction = tiny_model.predict(long_text)
    assert prediction.label in LABELS
    # Only the first 128 tokens count: the tail does not change the answer.
    assert prediction == tiny_model.predict(long_text + " awful" * 500)
    assert tiny_model.predict_batch([long_text, "ok"])[0].label == prediction.label


@pytest.mark.parametrize("empty", ["", " ", "\n\t  "])
def test_empty_text_is_refused_before_any_model_work(tiny_model, empty, monkeypatch):
    forward_calls = []
    monkeypatch.setattr(tiny_model, "_classify", lambda texts: forward_calls.append(texts))
    with pytest.raises(EmptyTextError, match="empty"):
        tiny_model.predict(empty)
    with pytest.raises(EmptyTextError):
        tiny_model.predict_batch(["a fine text", empty])
    assert forward_calls == []


def test_non_text_is_a_type_error(tiny_model):
    with pytest.raises(TypeError, match="string"):
        tiny_model.predict(42)


def test_generic_label_names_follow_the_old_cardiff_order(tiny_model, tiny_model_builder):
    # Same random weights, only the label names differ: LABEL_0/1/2 must read as negative/neutral/positive.
    generic = load_model(str(tiny_model_builder({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})))
    assert [p.label for p in generic.predict_batch(TEXTS)] == [p.label for p in tiny_model.predict_batch(TEXTS)]


def test_labels_follow_the_checkpoint_config_not_the_class_order(tiny_model, tiny_model_builder):
    shuffled_names = {0: "Positive", 1: "NEG", 2: "neutral"}
    shuffled = load_model(str(tiny_model_builder(shuffled_names)))
    for named, renamed in zip(tiny_model.predict_batch(TEXTS), shuffled.predict_batch(TEXTS), strict=True):
        class_index = LABELS.index(named.label)  # the default names are in index order
        assert renamed.label == {0: "positive", 1: "negative", 2: "neutral"}[class_index]
        assert renamed.score == pytest.approx(named.score)


def test_unmappable_labels_are_refused_at_load_time(tiny_model_builder):
    folder = tiny_model_builder({0: "joy", 1: "anger", 2: "sadness"})
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(folder))
    message = str(caught.value)
    assert "'joy'" in message and "negative/neutral/positive" in message
    assert str(folder) in message
    assert "\n" not in message


def test_unmappable_labels_fall_back_to_vader_in_sandbox_mode(tiny_model_builder):
    folder = tiny_model_builder({0: "LABEL_0", 1: "LABEL_1"})
    model = load_model(str(folder), allow_fallback=True)
    assert model.name == "vader"
    assert model.fallback_from == str(folder)
    assert model.fallback_reason.startswith("its labels cannot be read as negative/neutral/positive")


def test_concurrent_direct_calls_are_safe(tiny_model):
    # Without the batcher, Gradio's worker threads call predict directly and at once.
    from concurrent.futures import ThreadPoolExecutor

    texts = TEXTS * 4
    expected = [tiny_model.predict(text) for text in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(tiny_model.predict, texts, timeout=60))
    assert [r.label for r in results] == [e.label for e in expected]
    assert [r.score for r in results] == pytest.approx([e.score for e in expected], abs=1e-5)
