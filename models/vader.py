"""VADER: the offline stand-in model that needs no download (lexicon and rules, pure Python)."""

from __future__ import annotations

from models.base import SentimentModel
from models.prediction import Prediction

VADER_NAME = "vader"

# The VADER authors' thresholds on the compound score (README of vaderSentiment).
POSITIVE_THRESHOLD = 0.05
NEGATIVE_THRESHOLD = -0.05

#: How many words of a text VADER reads (about what the reference model's 512 tokens hold).
#: Its rules rescan the whole word list for every word, so its time grows with the square of
#: the words: unbounded, 2,000 emoji (each read as the words of its description) took 2 s and
#: a 75,000-character text 24 s. An emoji counts as the words VADER turns it into.
MAX_WORDS = 500


class VaderSentimentModel(SentimentModel):
    """vaderSentiment's SentimentIntensityAnalyzer mapped to negative / neutral / positive."""

    def __init__(self, *, fallback_reason: str | None = None, fallback_from: str | None = None) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()
        # VADER replaces single-character emoji by their descriptions, word by word.
        self._emoji_words = {
            emoji: len(description.split())
            for emoji, description in self._analyzer.emojis.items()
            if len(emoji) == 1
        }
        self.name = VADER_NAME
        self.device = "cpu"
        self.fallback_reason = fallback_reason
        self.fallback_from = fallback_from

    def _classify(self, texts: list[str]) -> list[Prediction]:
        return [
            prediction_from_compound(self._analyzer.polarity_scores(self._prefix(text))["compound"])
            for text in texts
        ]

    def _prefix(self, text: str) -> str:
        """The start of `text` holding at most MAX_WORDS words as VADER counts them."""
        words, in_word = 0, False
        for index, char in enumerate(text):
            if char in self._emoji_words:
                words += self._emoji_words[char]
                in_word = False
            elif char.isspace():
                in_word = False
            elif not in_word:
                words += 1
                in_word = True
            if words > MAX_WORDS:
                return text[:index]
        return text


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
