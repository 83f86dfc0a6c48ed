"""A Hugging Face text encoder (hub repo or local folder) as an EmbeddingModel: mean pooling, unit length."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence

from models.loading import token_limit

#: The longest input read, in tokens, whatever the model states; longer texts are truncated there, as
#: sentence-transformers does (a BERT-class encoder holds 512 positions).
MAX_EMBEDDING_TOKENS = 512

# JSON can carry "\ud800" escapes that decode to lone surrogates; tokenizers refuse those.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class EmbeddingModel:
    """AutoTokenizer + AutoModel, as sentence-transformers' Transformer -> Pooling(mean) -> Normalize runs them."""

    def __init__(self, source: str, *, name: str, device: str, local_files_only: bool = False) -> None:
        """Load tokenizer and weights from `source` onto `device`; raises on any failure."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
        # float32 everywhere: the reference checkpoint is stored that way and CPUs run it best.
        model = AutoModel.from_pretrained(source, dtype=torch.float32, local_files_only=local_files_only)
        self._model = model.to(device).eval()
        self._torch = torch
        self.dimensions: int = int(model.config.hidden_size)
        limit = token_limit(self._tokenizer.model_max_length, model.config, cap=MAX_EMBEDDING_TOKENS)
        # A sentence-transformers checkpoint states the length it was trained to read (256 for
        # all-MiniLM-L6-v2): reading more would give vectors that library does not.
        trained = _sentence_transformers_max_length(source, local_files_only)
        self.max_tokens: int = min(limit, trained) if trained else limit
        self.name = name
        self.device = device
        self.fallback_reason: str | None = None
        self.fallback_from: str | None = None
        # One forward pass at a time: the Rust tokenizer can refuse concurrent calls that change its
        # truncation/padding state ("Already borrowed"), and parallel forwards on one CPU only
        # compete for the same cores.
        self._lock = threading.Lock()

    def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit-length vector per text, in order: mean of the last hidden states over real tokens."""
        texts = list(texts)
        if not texts:
            return []
        torch = self._torch
        with self._lock, torch.inference_mode():
            encoded = self._tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
            ).to(self.device)
            hidden = self._model(**encoded).last_hidden_state.float()
            # sentence-transformers' Pooling(mean) and Normalize, step for step, so the vectors match its.
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(summed / counts, p=2, dim=1)
            return vectors.cpu().tolist()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r})"


def check_texts(texts: object, *, max_texts: int, max_chars: int) -> list[str]:
    """Return `texts` as a list if it is something to embed; raise ValueError (one sentence a buyer can act on)."""
    if not isinstance(texts, (list, tuple)):
        raise ValueError(f"The input must be a list of texts (strings), not {type(texts).__name__}.")
    if not texts:
        raise ValueError("The list of texts is empty: send at least one text to embed.")
    if len(texts) > max_texts:
        raise ValueError(f"Too many texts: {len(texts):,}, and at most {max_texts:,} are accepted in one call.")
    for number, text in enumerate(texts, start=1):
        if not isinstance(text, str):
            raise ValueError(f"Text {number} is not a string ({type(text).__name__}): send a list of texts.")
        if not text.strip():
            raise ValueError(f"Text {number} is empty or only whitespace: every text must have something to embed.")
        if len(text) > max_chars:
            raise ValueError(
                f"Text {number} is too long: {len(text):,} characters, and at most {max_chars:,} are accepted."
            )
        if _SURROGATE.search(text):
            raise ValueError(f"Text {number} is not valid Unicode: it contains a lone surrogate (such as \\ud800).")
    return list(texts)


def _sentence_transformers_max_length(source: str, local_files_only: bool) -> int | None:
    """max_seq_length from the checkpoint's sentence_bert_config.json, if it has one."""
    from transformers.utils import cached_file

    try:
        path = cached_file(
            source, "sentence_bert_config.json", local_files_only=local_files_only,
            _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False,
        )
        if not path:
            return None
        with open(path, encoding="utf-8") as file:
            value = json.load(file).get("max_seq_length")
    except (OSError, ValueError, AttributeError):  # not there, unreadable or not an object: no stated length
        return None
    return int(value) if isinstance(value, int) and value > 0 else None
