"""The interface every sentiment model in this package has."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from models.prediction import Prediction, require_text


class SentimentModel(ABC):
    """A loaded sentiment classifier answering negative / neutral / positive with a score."""

    #: Shown in receipts and logs: the model id, the folder name, or "vader".
    name: str
    #: "cpu", "cuda:0", ...
    device: str
    #: Why this model stands in for the one asked for (sandbox fallback), else None: one short clause
    #: about the model asked for, e.g. "it is not in the local cache and the Hugging Face Hub could not be reached".
    fallback_reason: str | None = None
    #: The model asked for, when this one stands in for it (sandbox fallback), else None.
    fallback_from: str | None = None

    def predict(self, text: str) -> Prediction:
        """Classify one text."""
        return self.predict_batch([text])[0]

    def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        """Classify several texts at once (one forward pass); every text is checked before any model work."""
        checked = [require_text(text) for text in texts]
        if not checked:
            return []
        return self._classify(checked)

    @abstractmethod
    def _classify(self, texts: list[str]) -> list[Prediction]:
        """Classify texts already known to be non-empty strings."""

    def __repr__(self) -> str:
        fallback = f", fallback_reason={self.fallback_reason!r}" if self.fallback_reason else ""
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r}{fallback})"
