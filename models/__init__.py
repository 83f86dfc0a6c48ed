"""The Space's reference models (sentiment, chat, embedding) and dynamic batching.

Cheap to import: torch, transformers and vaderSentiment are imported only when a model loads.
"""

from models.base import SentimentModel
from models.batching import DynamicBatcher
from models.chat import ChatModel
from models.embedding import EmbeddingModel
from models.loading import (
    DEFAULT_CHAT_MODEL_ID,
    DEFAULT_EMBEDDING_MODEL_ID,
    DEFAULT_MODEL_ID,
    load_chat_model,
    load_embedding_model,
    load_model,
)
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
    "DEFAULT_CHAT_MODEL_ID",
    "DEFAULT_EMBEDDING_MODEL_ID",
    "DEFAULT_MODEL_ID",
    "LABELS",
    "MAX_TEXT_CHARS",
    "ChatModel",
    "DynamicBatcher",
    "EmbeddingModel",
    "EmptyTextError",
    "InvalidTextError",
    "ModelLoadError",
    "Prediction",
    "SentimentModel",
    "TextTooLongError",
    "load_chat_model",
    "load_embedding_model",
    "load_model",
    "require_text",
]
