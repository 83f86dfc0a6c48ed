"""A tiny RoBERTa sentiment classifier built offline, for tests that must never download.

It is random (its answers mean nothing) but has the real model's shape of files: a byte-level
BPE tokenizer with RoBERTa's special tokens and a RobertaForSequenceClassification checkpoint,
so it loads through exactly the same code path as the Hub model.
"""

from __future__ import annotations

from pathlib import Path

# Small, varied, and deterministic: BPE training on the same text gives the same vocabulary.
TRAINING_SENTENCES = [
    "I love this, it is wonderful.",
    "This is terrible and I hate it.",
    "The weather is fine today.",
    "What a fantastic game last night!",
    "The service was slow and the food was cold.",
    "I am not sure how I feel about the new update.",
    "Best purchase I have made all year.",
    "Worst customer support ever, never again.",
    "The train arrives at nine in the morning.",
    "Absolutely brilliant performance by the whole team.",
    "I'm disappointed, the package arrived broken.",
    "It works as described, nothing more, nothing less.",
    "Thanks so much for the quick reply!",
    "Why does this keep crashing every single time?",
    "The meeting has been moved to Thursday.",
    "Such a lovely surprise, thank you all.",
    "Awful movie, a complete waste of two hours.",
    "The report is attached, see page three.",
    "Happy birthday! Hope you have a great day.",
    "I can't believe they cancelled the show, so sad.",
    "The price went up by ten percent this month.",
    "Great coffee, friendly staff, will come back.",
    "The app is okay but the battery drain is bad.",
    "Our flight was delayed for four hours.",
    "This library makes everything so much easier.",
    "Nobody answered the phone all afternoon.",
    "Paid calls settle from an escrow in USDC.",
    "Agents call the Space through the HTTP API.",
    "Numbers like 42, 3.14 and 1000 appear too.",
    "Emoji and symbols :) :( #tags @users https://example.com",
]

# RoBERTa's own special tokens, in RoBERTa's order, so pad_token_id is 1 as in roberta-base.
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]

# Truncation must be exercised: RoBERTa positions start after the padding index, so 130
# position embeddings leave room for 128 tokens.
MAX_POSITION_EMBEDDINGS = 130

DEFAULT_ID2LABEL = {0: "negative", 1: "neutral", 2: "positive"}


def build_tiny_model(folder: Path, *, id2label: dict[int, str] | None = None) -> Path:
    """Build and save a tiny random RoBERTa sentiment classifier in `folder`; return the folder."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    id2label = dict(DEFAULT_ID2LABEL if id2label is None else id2label)

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        TRAINING_SENTENCES, vocab_size=400, min_frequency=1, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    vocab = bpe.get_vocab()
    merges = _trained_merges(bpe)
    # No model_max_length on purpose: like the Cardiff checkpoints, the tokenizer does not say its
    # limit, so the loader must work it out from the model's position embeddings.
    tokenizer = RobertaTokenizer(vocab=vocab, merges=merges)
    tokenizer.save_pretrained(folder)

    config = RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        type_vocab_size=1,
        # Wider than the default 0.02 so that different texts get clearly different answers.
        initializer_range=0.5,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={label: index for index, label in id2label.items()},
    )
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(config)
    model.save_pretrained(folder)
    return folder


def _trained_merges(bpe) -> list[tuple[str, str]]:
    """The merge rules of a trained `tokenizers` BPE model, in priority order."""
    import json

    merges = json.loads(bpe._tokenizer.to_str())["model"]["merges"]
    # tokenizers writes merges either as "a b" strings or as [a, b] pairs depending on version.
    return [tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge) for merge in merges]
