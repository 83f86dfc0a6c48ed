"""The Space's reference sentiment model(s) and dynamic batching.

Cheap to import: torch, transformers and vaderSentiment are imported only when a model loads.
"""

from models.base import SentimentModel
from models.batching import DynamicBatcher
from models.loading import DEFAULT_MODEL_ID, load_model
from models.prediction import (
    LABELS,
    MAX_TEXT_CHARS,
    EmptyTextError,
    InvalidTextError,
    ModelLoadError,
    Prediction,
    TextTooLongError,
    require_text,
)

__all__ = [
    "DEFAULT_MODEL_ID",
    "LABELS",
    "MAX_TEXT_CHARS",
    "DynamicBatcher",
    "EmptyTextError",
    "InvalidTextError",
    "ModelLoadError",
    "Prediction",
    "SentimentModel",
    "TextTooLongError",
    "load_model",
    "require_text",
]
