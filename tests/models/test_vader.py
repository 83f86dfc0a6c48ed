"""VADER, the offline model: obvious sentences, thresholds, scores in [0, 1]."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import EmptyTextError, Prediction, load_model
from models.vader import prediction_from_compound


@pytest.fixture(scope="module")
def vader():
    return load_model("vader")


def test_vader_is_loaded_on_purpose_by_name(vader):
    assert vader.name == "vader"
    assert vader.device == "cpu"
    assert vader.fallback_reason is None
    assert load_model("VADER") is vader  # loaded once, name case-insensitive


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I love this, it is wonderful", "positive"),
        ("This is terrible and I hate it", "negative"),
        ("The train leaves at nine.", "neutral"),
    ],
)
def test_vader_labels_obvious_sentences(vader, text, label):
    prediction = vader.predict(text)
    assert isinstance(prediction, Prediction)
    assert prediction.label == label
    assert 0.5 < prediction.score <= 1.0


def test_vader_batch_matches_single_predictions(vader):
    texts = ["I love this, it is wonderful", "This is terrible and I hate it", "The train leaves at nine."]
    assert vader.predict_batch(texts) == [vader.predict(text) for text in texts]


@pytest.mark.parametrize("text", ["", "   ", "\n\t ", None])
def test_vader_refuses_empty_text(vader, text):
    with pytest.raises(EmptyTextError, match="empty"):
        vader.predict(text)


def test_thresholds_are_the_vader_authors(vader):
    assert prediction_from_compound(0.05).label == "positive"
    assert prediction_from_compound(0.0499).label == "neutral"
    assert prediction_from_compound(-0.0499).label == "neutral"
    assert prediction_from_compound(-0.05).label == "negative"


@given(st.floats(min_value=-1.0, max_value=1.0))
def test_score_is_a_confidence_in_unit_interval(compound):
    prediction = prediction_from_compound(compound)
    assert 0.0 <= prediction.score <= 1.0
    expected = "positive" if compound >= 0.05 else "negative" if compound <= -0.05 else "neutral"
    assert prediction.label == expected
    # The further the compound leans toward the chosen label, the more confident the score.
    if prediction.label != "neutral":
        assert prediction.score >= 0.5


def test_prediction_as_dict_is_plain():
    assert Prediction("positive", 0.75).as_dict() == {"label": "positive", "score": 0.75}
