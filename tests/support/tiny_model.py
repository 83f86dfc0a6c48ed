"""Tiny models built offline, for tests that must never download.

A RoBERTa sentiment classifier, a Llama chat model and a BERT text encoder. They are random (their
answers mean nothing) but have the real models' shape of files: a byte-level BPE tokenizer with
RoBERTa's special tokens and a RobertaForSequenceClassification checkpoint; a byte-level BPE
tokenizer with SmolLM2's ChatML tokens and template and a LlamaForCausalLM; a WordPiece
tokenizer and a BertModel, as all-MiniLM-L6-v2 has. So they load through exactly the same code
paths as the Hub models.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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


# ---------------------------------------------------------------- a tiny chat model (causal LM with a chat template)

#: SmolLM2-Instruct's special tokens, in its order: <|endoftext|> is id 0, <|im_start|> 1, <|im_end|> 2.
CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

#: SmolLM2-Instruct's ChatML template, with a shorter default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: The generation prompt the template ends with when add_generation_prompt=True.
GENERATION_PROMPT = "<|im_start|>assistant\n"

#: Room for a few turns and a reply, small enough that a test can fill it.
CHAT_MAX_POSITION_EMBEDDINGS = 256


def build_tiny_chat_model(folder: Path) -> Path:
    """Build and save a tiny random Llama chat model (ChatML template, byte-level BPE) in `folder`; return it.

    Its weights are random, except that it predicts only whole words (" love"), never a special token, so
    streams run to max_new_tokens, which tests rely on: the rows of the output layer for every other token are
    zero, so their logits are 0 while the best of the words' random logits is positive (tests/models/test_chat.py
    checks that streams run to max_new_tokens).
    """
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        TRAINING_SENTENCES, vocab_size=400, min_frequency=1, special_tokens=CHAT_SPECIAL_TOKENS, show_progress=False
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)

    # Only whole words with their leading space (" love") may be predicted: a reply of random bytes and word
    # pieces would decode to "\ufffd" and run-together pieces that re-encode to more tokens than were generated,
    # while a reply of whole words re-encodes to exactly its tokens, so tests can count them.
    silent_ids = [
        token_id for token_id in range(len(tokenizer))
        if token_id in tokenizer.all_special_ids
        or not _whole_word(tokenizer.decode([token_id], clean_up_tokenization_spaces=False))
    ]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=CHAT_MAX_POSITION_EMBEDDINGS,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[silent_ids] = 0.0
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- a tiny text encoder (BERT, WordPiece)

#: BERT's special tokens, in bert-base-uncased's order of use.
ENCODER_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

#: BERT numbers positions from 0: 130 position embeddings hold 130 tokens, so truncation can be exercised.
ENCODER_MAX_POSITION_EMBEDDINGS = 130


def build_tiny_encoder(folder: Path) -> Path:
    """Build and save a tiny random BERT encoder with a WordPiece tokenizer in `folder`; return the folder."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(
        TRAINING_SENTENCES, vocab_size=400, min_frequency=1, special_tokens=ENCODER_SPECIAL_TOKENS,
        show_progress=False,
    )
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, do_lower_case=True)
    tokenizer.save_pretrained(folder)

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=ENCODER_MAX_POSITION_EMBEDDINGS,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    # With its pooler, as sentence-transformers' BERT checkpoints are: AutoModel builds one and reads it.
    BertModel(config).save_pretrained(folder)
    return folder


def _whole_word(text: str) -> bool:
    """Whether `text` is a space and then ASCII letters: one pre-token of a byte-level BPE, and one token."""
    return len(text) > 1 and text[0] == " " and text[1:].isascii() and text[1:].isalpha()


# -- session fixtures: each tiny model is built once per test run (imported by the conftests that use them)

@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama chat model with SmolLM2's ChatML template; it never ends a reply before max_new_tokens."""
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat") / "tiny-chat")


@pytest.fixture(scope="session")
def tiny_chat_model(tiny_chat_model_dir):
    """The tiny chat model loaded through load_chat_model, as the Space loads MODEL_ID."""
    from models import load_chat_model

    return load_chat_model(str(tiny_chat_model_dir))


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A tiny BERT text encoder with a WordPiece tokenizer (130 positions, 32 dimensions)."""
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder") / "tiny-encoder")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_dir):
    """The tiny encoder loaded through load_embedding_model, as the Space loads MODEL_ID."""
    from models import load_embedding_model

    return load_embedding_model(str(tiny_encoder_dir))
