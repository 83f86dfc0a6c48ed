"""A Hugging Face sequence-classification checkpoint (hub repo or local folder) as a SentimentModel."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from models.base import SentimentModel
from models.labels import map_labels
from models.prediction import Label, Prediction

if TYPE_CHECKING:  # pragma: no cover
    import torch

# A tokenizer that does not state its limit reports a huge sentinel number instead.
_UNSTATED_LIMIT = 1_000_000


class TransformersSentimentModel(SentimentModel):
    """Tokenizer + AutoModelForSequenceClassification, as the text-classification pipeline runs them.

    The pipeline's own steps (tokenize with truncation, forward, softmax, id2label) are done
    here directly so that a batch is one tokenizer call and one forward pass, padded together,
    instead of the pipeline's per-item preprocessing and DataLoader.
    """

    def __init__(self, source: str, *, name: str, device: str) -> None:
        """Load config, tokenizer and weights from `source` onto `device`; raises on any failure."""
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        config = AutoConfig.from_pretrained(source)
        # Labels first: a checkpoint we cannot map is refused before its weights are fetched.
        self._labels: dict[int, Label] = map_labels(config.id2label)
        self._tokenizer = AutoTokenizer.from_pretrained(source)
        # float32 everywhere: the reference checkpoint is stored that way and CPUs run it best.
        model = AutoModelForSequenceClassification.from_pretrained(source, config=config, dtype=torch.float32)
        self._model = model.to(device).eval()
        self._torch = torch
        self.max_tokens = max_input_tokens(self._tokenizer.model_max_length, config)
        self.name = name
        self.device = device
        self.fallback_reason = None
        # One forward pass at a time: the Rust tokenizer can refuse concurrent calls that change its
        # truncation/padding state ("Already borrowed"), and parallel forwards on one CPU only
        # compete for the same cores.
        self._lock = threading.Lock()

    def _classify(self, texts: list[str]) -> list[Prediction]:
        torch = self._torch
        with self._lock, torch.inference_mode():
            encoded = self._tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
            ).to(self.device)
            logits = self._model(**encoded).logits
            probabilities = torch.softmax(logits.float(), dim=-1).cpu()
        best_scores, best_indices = probabilities.max(dim=-1)
        return [
            Prediction(self._labels[index], score)
            for index, score in zip(best_indices.tolist(), best_scores.tolist(), strict=True)
        ]


def max_input_tokens(tokenizer_limit: int | None, config) -> int:
    """How many tokens (special tokens included) one input may have before it is truncated.

    The Cardiff checkpoints' tokenizers do not state a limit, so the model's position
    embeddings decide: RoBERTa-family models number positions from padding_idx + 1, so 514
    embeddings hold 512 tokens. Subtracting 2 is exact for them and costs other models
    two tokens at most, never a crash.
    """
    limits = []
    if tokenizer_limit and tokenizer_limit < _UNSTATED_LIMIT:
        limits.append(int(tokenizer_limit))
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        limits.append(int(positions) - 2)
    return min(limits) if limits else 512


def resolve_device(device: str | None) -> str:
    """The torch device to run on: `device` if given, else CUDA when available, else CPU."""
    import torch

    if device is None:
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    resolved: torch.device = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", 0)
    return str(resolved)
