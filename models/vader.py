"""VADER: the offline stand-in model that needs no download (lexicon and rules, pure Python)."""

from __future__ import annotations

from models.base import SentimentModel
from models.prediction import Prediction

VADER_NAME = "vader"

# The VADER authors' thresholds on the compound score (README of vaderSentiment).
POSITIVE_THRESHOLD = 0.05
NEGATIVE_THRESHOLD = -0.05


class VaderSentimentModel(SentimentModel):
    """vaderSentiment's SentimentIntensityAnalyzer mapped to negative / neutral / positive."""

    def __init__(self, *, fallback_reason: str | None = None) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()
        self.name = VADER_NAME
        self.device = "cpu"
        self.fallback_reason = fallback_reason

    def _classify(self, texts: list[str]) -> list[Prediction]:
        return [prediction_from_compound(self._analyzer.polarity_scores(text)["compound"]) for text in texts]


def prediction_from_compound(compound: float) -> Prediction:
    """Turn VADER's compound score (-1..1) into a label and a [0, 1] confidence.

    The score is how far the compound lies toward the chosen label's end of the scale:
    positive (1 + c) / 2, negative (1 - c) / 2 (both above 0.5, reaching 1 at the extreme),
    neutral 1 - |c| (1 when the text carries no sentiment at all).
    """
    if compound >= POSITIVE_THRESHOLD:
        return Prediction("positive", (1.0 + compound) / 2.0)
    if compound <= NEGATIVE_THRESHOLD:
        return Prediction("negative", (1.0 - compound) / 2.0)
    return Prediction("neutral", 1.0 - abs(compound))
