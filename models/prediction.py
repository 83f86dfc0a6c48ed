"""What every sentiment model answers, the errors it raises, and the input check they share."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Label = Literal["negative", "neutral", "positive"]
LABELS: tuple[Label, ...] = ("negative", "neutral", "positive")
#: Answers carry scores to 4 decimals: more is noise (0.7383500000000001), and the same on every path.
SCORE_DECIMALS = 4


@dataclass(frozen=True)
class Prediction:
    """One classification: a human label and the model's confidence in it, in [0, 1]."""

    label: Label
    score: float

    def as_dict(self) -> dict[str, object]:
        """The prediction as a plain dict for JSON answers, the score rounded to SCORE_DECIMALS."""
        return {"label": self.label, "score": round(self.score, SCORE_DECIMALS)}


class EmptyTextError(ValueError):
    """The text to classify is empty or only whitespace."""


class TextTooLongError(ValueError):
    """The text to classify is longer than MAX_TEXT_CHARS."""


class InvalidTextError(ValueError):
    """The text to classify is not valid Unicode (it holds lone surrogates)."""


#: The longest text accepted, in characters. A model reads only its first few hundred tokens
#: (512 for the reference checkpoint: about 2,000 characters of English) and truncates the
#: rest, but the tokenizer reads the whole text before truncating: unbounded, an 8 MB text
#: held the model for 13 s and grew the process by 800 MB. 20,000 characters is ten times
#: what the model reads, and costs the tokenizer a few hundredths of a second.
MAX_TEXT_CHARS = 20_000

# JSON can carry "\ud800" escapes that decode to lone surrogates; tokenizers refuse those.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


DEFAULT_FIX = "set MODEL_ID to a reachable Hugging Face model repo or a local model folder, or check the network"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; str() is one sentence saying which model and how to fix it."""

    def __init__(self, message: str, *, model_id: str | None = None, cause: str | None = None) -> None:
        super().__init__(message)
        self.model_id = model_id
        #: The short clause saying why (no model id, no fix), e.g. for a fallback notice.
        self.cause = cause or message

    @classmethod
    def for_model(cls, model_id: str, cause: str, *, fix: str = DEFAULT_FIX) -> ModelLoadError:
        """The error for `model_id`, failed because of `cause`, fixed by `fix`: one sentence."""
        cause = " ".join(cause.split()).rstrip(".")
        return cls(f"Could not load the sentiment model {model_id!r}: {cause}; {fix}.", model_id=model_id, cause=cause)


def require_text(text: object) -> str:
    """Return `text` if it is something to classify; raise EmptyTextError (or TypeError) otherwise."""
    # None is what an empty form field may arrive as: it is the same mistake as "".
    if text is None:
        raise EmptyTextError("The text is empty: enter some text to classify.")
    if not isinstance(text, str):
        raise TypeError(f"The text to classify must be a string, not {type(text).__name__}.")
    if not text.strip():
        raise EmptyTextError("The text is empty or only whitespace: enter some text to classify.")
    if len(text) > MAX_TEXT_CHARS:
        raise TextTooLongError(
            f"The text is too long: {len(text):,} characters, and at most {MAX_TEXT_CHARS:,} are "
            "accepted (the model reads only the first few hundred words)."
        )
    if _SURROGATE.search(text):
        raise InvalidTextError("The text is not valid Unicode: it contains a lone surrogate (such as \\ud800).")
    return text
