"""EmbeddingModel: a tiny offline BERT encoder, loaded exactly like MODEL_ID (no mocks)."""

import json
import math
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from models import DEFAULT_EMBEDDING_MODEL_ID, DynamicBatcher, EmbeddingModel, ModelLoadError, load_embedding_model
from models.embedding import check_texts
from tests.support.tiny_model import ENCODER_MAX_POSITION_EMBEDDINGS, TRAINING_SENTENCES

# A broken lock or batcher tends to hang rather than fail: bound every test.
pytestmark = pytest.mark.timeout(60)

TOLERANCE = 1e-5
TEXTS = [
    "I love this, it is wonderful.",
    "ok",
    "The service was slow and the food was cold, and nobody answered the phone all afternoon.",
    "Numbers like 42, emoji 😀 and words the tokenizer never saw: zyxxqv.",
]


def close(left, right, tolerance=TOLERANCE) -> bool:
    return len(left) == len(right) and max(abs(a - b) for a, b in zip(left, right)) < tolerance


def hand_embedding(folder, text: str) -> list[float]:
    """sentence-transformers' all-MiniLM-L6-v2 pipeline for one text, written out: mean of the tokens, unit length."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
    mean = hidden.mean(dim=0)
    return (mean / mean.norm()).tolist()


# ---------------------------------------------------------------- loading


def test_loads_through_load_embedding_model_once(tiny_encoder, tiny_encoder_dir):
    assert isinstance(tiny_encoder, EmbeddingModel)
    assert tiny_encoder.name == tiny_encoder_dir.name
    assert tiny_encoder.dimensions == 32
    assert tiny_encoder.max_tokens == ENCODER_MAX_POSITION_EMBEDDINGS  # BERT counts positions from 0
    assert tiny_encoder.fallback_reason is None and tiny_encoder.fallback_from is None
    assert load_embedding_model(str(tiny_encoder_dir)) is tiny_encoder  # loaded once per process


def test_default_embedding_model_is_all_minilm():
    assert DEFAULT_EMBEDDING_MODEL_ID == "sentence-transformers/all-MiniLM-L6-v2"


def test_a_blank_model_id_means_the_default(monkeypatch):
    # As if the Hub's cache did not hold it (the Hub is off in tests): refused at once, naming the default.
    monkeypatch.setattr("models.loading._in_hub_cache", lambda model_id: False)
    for blank in (None, "", "  "):
        with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE") as caught:
            load_embedding_model(blank)
        assert caught.value.model_id == DEFAULT_EMBEDDING_MODEL_ID


def test_missing_folder_is_one_sentence(tmp_path):
    missing = str(tmp_path / "no-model-here")
    with pytest.raises(ModelLoadError) as caught:
        load_embedding_model(missing)
    message = str(caught.value)
    assert message.startswith(f"Could not load the embedding model {missing!r}: there is no such folder; ")
    assert "MODEL_ID" in message and message.endswith(".") and "\n" not in message


def test_folder_without_a_model_is_one_sentence(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match="does not hold a transformers text encoder"):
        load_embedding_model(str(tmp_path))


def test_a_sentence_transformers_length_is_honoured(tmp_path, tiny_encoder_dir):
    folder = shutil.copytree(tiny_encoder_dir, tmp_path / "tiny-st")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": False}))
    model = load_embedding_model(str(folder))
    assert model.max_tokens == 16
    long_text = " ".join(TRAINING_SENTENCES[:4])
    # Only the first 16 tokens are read: words past them change nothing.
    assert close(model.embed_batch([long_text])[0], model.embed_batch([long_text + " and then some more"])[0])


# ---------------------------------------------------------------- embed_batch


def test_one_unit_vector_per_text(tiny_encoder):
    vectors = tiny_encoder.embed_batch(TEXTS)
    assert len(vectors) == len(TEXTS)
    assert all(len(vector) == tiny_encoder.dimensions for vector in vectors)
    assert all(type(value) is float for vector in vectors for value in vector)
    assert all(abs(math.sqrt(sum(value * value for value in vector)) - 1) < TOLERANCE for vector in vectors)
    assert len({tuple(round(value, 4) for value in vector) for vector in vectors}) == len(TEXTS)  # the input matters
    assert tiny_encoder.embed_batch([]) == []


def test_a_text_gets_the_same_vector_whatever_its_batch(tiny_encoder):
    alone = [tiny_encoder.embed_batch([text])[0] for text in TEXTS]
    together = tiny_encoder.embed_batch(TEXTS)  # "ok" padded to the longest text
    reversed_order = tiny_encoder.embed_batch(TEXTS[::-1])
    for index, vector in enumerate(alone):
        assert close(together[index], vector)
        assert close(reversed_order[len(TEXTS) - 1 - index], vector)  # answers in the order asked
    assert close(tiny_encoder.embed_batch(["ok", "ok"])[1], alone[1])


def test_vectors_match_a_hand_computed_mean_pooling(tiny_encoder, tiny_encoder_dir):
    for text, vector in zip(TEXTS, tiny_encoder.embed_batch(TEXTS)):
        assert close(vector, hand_embedding(tiny_encoder_dir, text))


def test_long_texts_are_truncated_to_max_tokens(tiny_encoder):
    long_text = " ".join(TRAINING_SENTENCES)  # far more than the tiny encoder's 130 tokens
    assert len(tiny_encoder._tokenizer(long_text)["input_ids"]) > tiny_encoder.max_tokens
    first, second = tiny_encoder.embed_batch([long_text, long_text + " More words at the end."])
    assert close(first, second)


def test_concurrent_calls_are_safe(tiny_encoder):
    alone = [tiny_encoder.embed_batch([text])[0] for text in TEXTS]
    # Different batch shapes at once: each call changes the tokenizer's padding, which the lock serialises.
    batches = [TEXTS[index:] for index in range(len(TEXTS))] * 4
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(tiny_encoder.embed_batch, batches))
    for batch, vectors in zip(batches, answers):
        for text, vector in zip(batch, vectors):
            assert close(vector, alone[TEXTS.index(text)])


def test_works_behind_the_dynamic_batcher(tiny_encoder):
    def validate(text):
        return check_texts([text], max_texts=1, max_chars=1000)[0]

    texts = [f"{sentence} #{index}" for index, sentence in enumerate(TRAINING_SENTENCES[:24])]
    expected = {text: tiny_encoder.embed_batch([text])[0] for text in texts}
    start = threading.Barrier(len(texts))

    with DynamicBatcher(tiny_encoder.embed_batch, max_batch_size=8, max_wait_ms=20, validate=validate) as batcher:

        def submit(text):
            start.wait(10)
            return batcher.submit(text)

        with ThreadPoolExecutor(len(texts)) as pool:
            answers = list(pool.map(submit, texts))
        with pytest.raises(ValueError, match="empty"):
            batcher.submit("   ")  # refused before it is queued
    for text, vector in zip(texts, answers):
        assert close(vector, expected[text])


# ---------------------------------------------------------------- check_texts


def test_check_texts_returns_the_texts():
    assert check_texts(["a", "b c"], max_texts=2, max_chars=3) == ["a", "b c"]
    assert check_texts(("a",), max_texts=1, max_chars=1) == ["a"]


@pytest.mark.parametrize(
    ("texts", "says"),
    [
        ("just one string", "must be a list of texts"),
        (None, "must be a list of texts"),
        ({"text": "hi"}, "must be a list of texts"),
        ([], "empty"),
        (["a", "b", "c", "d"], "Too many texts: 4, and at most 3"),
        (["fine", 42], "Text 2 is not a string"),
        (["fine", None], "Text 2 is not a string"),
        (["fine", "  \n"], "Text 2 is empty"),
        (["fine", ""], "Text 2 is empty"),
        (["x" * 11], "Text 1 is too long: 11 characters, and at most 10"),
        (["bad \ud800 text"], "Text 1 is not valid Unicode"),
    ],
)
def test_check_texts_refuses_with_one_sentence(texts, says):
    with pytest.raises(ValueError, match=says) as caught:
        check_texts(texts, max_texts=3, max_chars=10)
    message = str(caught.value)
    assert message.endswith(".") and "\n" not in message
