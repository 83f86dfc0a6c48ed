"""Label mapping: whatever a checkpoint calls its classes, callers see negative / neutral / positive."""

import pytest

from models.labels import UnmappableLabelsError, map_labels


@pytest.mark.parametrize(
    ("id2label", "expected"),
    [
        ({0: "negative", 1: "neutral", 2: "positive"}, {0: "negative", 1: "neutral", 2: "positive"}),
        ({0: "Negative", 1: "Neutral", 2: "Positive"}, {0: "negative", 1: "neutral", 2: "positive"}),
        ({0: "NEG", 1: "NEU", 2: "POS"}, {0: "negative", 1: "neutral", 2: "positive"}),
        ({0: "positive", 1: "negative", 2: "neutral"}, {0: "positive", 1: "negative", 2: "neutral"}),
        ({0: "NEGATIVE", 1: "POSITIVE"}, {0: "negative", 1: "positive"}),
        # The older Cardiff checkpoint: 0 negative, 1 neutral, 2 positive.
        ({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, {0: "negative", 1: "neutral", 2: "positive"}),
        ({"0": "label_0", "1": "label_1", "2": "label_2"}, {0: "negative", 1: "neutral", 2: "positive"}),
    ],
)
def test_known_label_schemes_map_to_human_labels(id2label, expected):
    assert map_labels(id2label) == expected


@pytest.mark.parametrize(
    "id2label",
    [
        {0: "joy", 1: "anger", 2: "sadness"},
        {0: "LABEL_0", 1: "LABEL_1"},  # the transformers default for an unnamed 2-class head
        {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2", 3: "LABEL_3"},
        {0: "positive", 1: "POS", 2: "negative"},  # two classes for one sentiment
        {0: "negative", 1: "LABEL_1", 2: "positive"},
        {},
    ],
)
def test_unmappable_label_schemes_are_refused(id2label):
    with pytest.raises(UnmappableLabelsError):
        map_labels(id2label)
