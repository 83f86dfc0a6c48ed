"""A Hugging Face sequence-classification checkpoint (hub repo or local folder) as a SentimentModel."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from models.base import SentimentModel
from models.labels import map_labels
from models.prediction import Label, Prediction

if TYPE_CHECKING:  # pragma: no cover
    import torch

# A tokenizer that does not state its limit reports a huge sentinel number instead.
_UNSTATED_LIMIT = 1_000_000

#: What one more forward pass costs on a CPU, in padded tokens' worth of work: the fixed part of a
#: pass (reading every weight once, Python and kernel launches) measured about 30 tokens' worth
#: for roberta-base on 2 cores. Length bucketing (see plan_buckets) splits a batch only where the
#: padding it saves outweighs this. See BENCHMARKS.md, "Length bucketing".
CPU_PASS_OVERHEAD_TOKENS = 32


class TransformersSentimentModel(SentimentModel):
    """Tokenizer + AutoModelForSequenceClassification, as the text-classification pipeline runs them.

    The pipeline's own steps (tokenize with truncation, forward, softmax, id2label) are done
    here directly so that a batch is one tokenizer call, padded together, instead of the
    pipeline's per-item preprocessing and DataLoader. On a CPU, where a padded token costs as
    much as a real one, the padded batch is then run as one or a few forward passes over texts of
    similar length (length bucketing, see plan_buckets); elsewhere it is one forward pass.
    """

    #: Padded tokens' worth of one forward pass, for length bucketing; None runs every batch as one pass.
    pass_overhead_tokens: float | None = None

    def __init__(self, source: str, *, name: str, device: str, local_files_only: bool = False) -> None:
        """Load config, tokenizer and weights from `source` onto `device`; raises on any failure.

        `local_files_only`: read a hub model from the local cache only (the Hub is known to be unreachable).
        """
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
        # Labels first: a checkpoint we cannot map is refused before its weights are fetched.
        self._labels: dict[int, Label] = map_labels(config.id2label)
        self._tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
        # float32 everywhere: the reference checkpoint is stored that way and CPUs run it best.
        model = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, dtype=torch.float32, local_files_only=local_files_only
        )
        self._model = model.to(device).eval()
        self._torch = torch
        self.max_tokens = max_input_tokens(self._tokenizer.model_max_length, config)
        self.name = name
        self.device = device
        self.fallback_reason = None
        self.fallback_from = None
        # A GPU's forward pass is dominated by fixed costs at these sizes: padding is nearly free
        # there, and splitting a batch would only add passes (not measured: no GPU was at hand).
        self.pass_overhead_tokens = CPU_PASS_OVERHEAD_TOKENS if torch.device(device).type == "cpu" else None
        # One forward pass at a time: the Rust tokenizer can refuse concurrent calls that change its
        # truncation/padding state ("Already borrowed"), and parallel forwards on one CPU only
        # compete for the same cores.
        self._lock = threading.Lock()

    def _classify(self, texts: list[str]) -> list[Prediction]:
        torch = self._torch
        with self._lock, torch.inference_mode():
            encoded = self._tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
            )
            # Without an attention mask the texts' lengths are unknown: one pass, as padded.
            mask = encoded.get("attention_mask")
            overhead = self.pass_overhead_tokens if mask is not None else None
            lengths = mask.sum(dim=1).tolist() if mask is not None else [0] * len(texts)
            groups = plan_buckets(lengths, overhead)
            if len(groups) == 1:
                logits = self._model(**encoded.to(self.device)).logits.float()
            else:
                left = self._tokenizer.padding_side == "left"
                logits = None
                for group in groups:
                    rows, width = torch.tensor(group), max(lengths[i] for i in group)
                    # Drop the columns that are padding for every text of the group.
                    columns = slice(-width, None) if left else slice(0, width)
                    part = {key: value[rows, columns].to(self.device) for key, value in encoded.items()}
                    part_logits = self._model(**part).logits.float()
                    if logits is None:
                        logits = part_logits.new_empty((len(texts), part_logits.shape[-1]))
                    logits[rows.to(part_logits.device)] = part_logits
            probabilities = torch.softmax(logits, dim=-1).cpu()
        best_scores, best_indices = probabilities.max(dim=-1)
        return [
            Prediction(self._labels[index], score)
            for index, score in zip(best_indices.tolist(), best_scores.tolist(), strict=True)
        ]


def plan_buckets(lengths: Sequence[int], pass_overhead_tokens: float | None) -> list[list[int]]:
    """Split a batch, given each text's token count, into forward passes of texts of similar length.

    Returns lists of indices into `lengths`: every index exactly once. With `pass_overhead_tokens`
    None, or one text, that is one list holding the batch in its order. Otherwise the texts are
    sorted by length and cut into runs so as to minimise the estimated cost
    sum(pass_overhead_tokens + texts_in_run * longest_in_run): a padded token costs as much as a
    real one on a CPU, and every extra pass costs `pass_overhead_tokens`. Attention's share of the
    work, which grows with the length, is left out: for roberta-base it is length / (6 * 768) of
    the rest, about 1 % at tweet lengths and 11 % at the 512-token limit. Exact (dynamic
    programming over the sorted lengths), O(n^2) for n texts; batches here hold at most 16.
    """
    count = len(lengths)
    if pass_overhead_tokens is None or count < 2:
        return [list(range(count))]
    order = sorted(range(count), key=lambda index: lengths[index])
    # best[j]: the least cost of the j shortest texts; start[j]: where the last run of them starts.
    best = [0.0] + [float("inf")] * count
    start = [0] * (count + 1)
    for end in range(1, count + 1):
        longest = lengths[order[end - 1]]
        for begin in range(end):
            cost = best[begin] + pass_overhead_tokens + (end - begin) * longest
            if cost < best[end]:
                best[end], start[end] = cost, begin
    runs, end = [], count
    while end:
        runs.append(order[start[end]:end])
        end = start[end]
    if len(runs) == 1:
        return [list(range(count))]
    return runs[::-1]


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
