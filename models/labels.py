"""Mapping a checkpoint's own label names (config.id2label) onto negative / neutral / positive."""

from __future__ import annotations

import re

from models.prediction import LABELS, Label

_NAMED_LABELS: dict[str, Label] = {
    "negative": "negative",
    "neg": "negative",
    "neutral": "neutral",
    "neu": "neutral",
    "positive": "positive",
    "pos": "positive",
}

# Checkpoints that never named their labels answer LABEL_0/1/2. The older
# cardiffnlp/twitter-roberta-base-sentiment is one; its model card gives the order
# 0 negative, 1 neutral, 2 positive, which is the order assumed here.
_GENERIC_LABEL = re.compile(r"label_(\d+)")


class UnmappableLabelsError(ValueError):
    """The checkpoint's labels are not a negative / neutral / positive scheme."""


def map_labels(id2label: dict[int, str]) -> dict[int, Label]:
    """Map each class index of a checkpoint to a human label, or raise UnmappableLabelsError."""
    if not id2label:
        raise UnmappableLabelsError("the checkpoint names no labels")
    normalized = {int(index): str(name).strip().lower() for index, name in id2label.items()}

    generic = {index: _GENERIC_LABEL.fullmatch(name) for index, name in normalized.items()}
    if all(generic.values()):
        numbers = {index: int(match.group(1)) for index, match in generic.items()}
        if sorted(numbers.values()) != [0, 1, 2]:
            raise UnmappableLabelsError(
                f"generic labels {_listed(id2label)} are only understood as the 3-class "
                "LABEL_0/1/2 = negative/neutral/positive scheme"
            )
        return {index: LABELS[number] for index, number in numbers.items()}

    mapping: dict[int, Label] = {}
    for index, name in normalized.items():
        if name not in _NAMED_LABELS:
            raise UnmappableLabelsError(f"label {id2label[index]!r} is not negative, neutral or positive")
        mapping[index] = _NAMED_LABELS[name]
    if len(set(mapping.values())) != len(mapping):
        raise UnmappableLabelsError(f"labels {_listed(id2label)} name the same sentiment twice")
    return mapping


def _listed(id2label: dict[int, str]) -> str:
    return "/".join(str(id2label[index]) for index in sorted(id2label))
