"""Texts a model must not be handed: too long, or not valid Unicode; and VADER's bounded reading.

Regressions of issue 6 (hostile Space inputs): an 8 MB text was tokenised whole before
truncation (13 s under the model lock, +800 MB); a lone surrogate made the tokenizer raise,
failing every other text of its batch; VADER's time grew with the square of the words.
"""

from __future__ import annotations

import threading
import time

import pytest

from models import (
    MAX_TEXT_CHARS,
    DynamicBatcher,
    EmptyTextError,
    InvalidTextError,
    LABELS,
    TextTooLongError,
    load_model,
    require_text,
)
from models import vader as vader_module


def test_text_at_the_cap_is_accepted_one_more_character_is_refused():
    at_cap = "a" * MAX_TEXT_CHARS
    assert require_text(at_cap) is at_cap
    with pytest.raises(TextTooLongError, match="too long") as refused:
        require_text(at_cap + "a")
    assert isinstance(refused.value, ValueError)  # the gate's check turns ValueError into "not charged"
    assert f"{MAX_TEXT_CHARS:,}" in str(refused.value)


def test_a_huge_text_is_refused_without_being_copied_into_the_message():
    with pytest.raises(TextTooLongError) as refused:
        require_text("x" * 1_000_000)
    assert len(str(refused.value)) < 300


@pytest.mark.parametrize("text", ["\ud800", "ok \udfff ok", "a" * 10 + "\udbff"])
def test_lone_surrogates_are_refused(text):
    with pytest.raises(InvalidTextError, match="Unicode"):
        require_text(text)


@pytest.mark.parametrize(
    "text",
    ["😀" * 1000, "\u202eevil\u202c text", "a\x00b", "\u200b\u200d", "ｆｕｌｌｗｉｄｔｈ １２３", "مرحبا بالعالم"],
)
def test_odd_but_valid_text_is_accepted(text):
    assert require_text(text) == text


def test_whitespace_only_is_still_empty_before_the_length_check():
    with pytest.raises(EmptyTextError):
        require_text(" " * (MAX_TEXT_CHARS + 1))


def test_the_tiny_model_classifies_text_at_the_cap_and_odd_text(tiny_model):
    for text in ["good " * (MAX_TEXT_CHARS // 5), "😀" * 500, "\u202eevil\u202c", "a\x00b\x00c"]:
        assert tiny_model.predict(text).label in LABELS


def test_a_broken_text_in_a_batch_does_not_fail_its_batch_mates(tiny_model):
    """Before: the lone surrogate reached the tokenizer, which raised for the whole batch."""
    entered = threading.Event()
    release = threading.Event()

    def predict_batch(texts):
        entered.set()
        release.wait(10)
        return tiny_model.predict_batch(texts)

    with DynamicBatcher(predict_batch, max_batch_size=8, max_wait_ms=50) as batcher:
        blocker = batcher.submit_future("first, holding the worker")
        assert entered.wait(10)
        good = [batcher.submit_future(f"a fine text number {i}") for i in range(3)]
        with pytest.raises(InvalidTextError):
            batcher.submit_future("poison \ud800")
        with pytest.raises(TextTooLongError):
            batcher.submit_future("x" * (MAX_TEXT_CHARS + 1))
        release.set()
        assert blocker.result(10).label in LABELS
        assert all(future.result(10).label in LABELS for future in good)


@pytest.fixture(scope="module")
def vader():
    return load_model("vader")


@pytest.mark.parametrize(
    "text",
    [
        "😸" * MAX_TEXT_CHARS,  # VADER reads each as "grinning cat face with smiling eyes"
        "not good but ! " * (MAX_TEXT_CHARS // 15),
        "I love it " * (MAX_TEXT_CHARS // 10),
    ],
)
def test_vader_reads_a_bounded_prefix_of_a_long_text(vader, monkeypatch, text):
    seen = []
    polarity_scores = vader._analyzer.polarity_scores
    monkeypatch.setattr(vader._analyzer, "polarity_scores", lambda t: seen.append(t) or polarity_scores(t))
    started = time.monotonic()
    prediction = vader.predict(text)
    elapsed = time.monotonic() - started
    assert prediction.label in LABELS
    assert text.startswith(seen[0])
    words = sum(vader._emoji_words.get(c, 0) for c in seen[0]) + len(seen[0].replace("😸", " ").split())
    assert words <= vader_module.MAX_WORDS
    # Not a benchmark: unbounded, the first of these took minutes (quadratic); bounded, ~0.02 s.
    assert elapsed < 20, elapsed


def test_vader_answers_a_short_text_as_before(vader):
    text = "I love this, it is wonderful"
    assert vader._prefix(text) == text
    assert vader.predict(text).label == "positive"
