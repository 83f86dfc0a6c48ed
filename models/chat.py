"""A Hugging Face causal language model with a chat template (hub repo or local folder) as a ChatModel."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping, Sequence

from models.loading import UnsuitableModelError, token_limit

#: The longest context used, in tokens, whatever the model states: on a CPU every token of context costs
#: time on each new token and memory in the KV cache, and SmolLM2-class models hold 8,192.
MAX_CONTEXT_TOKENS = 8192

#: CTRL-style repetition penalty on the ids already generated: mild enough to leave a real model's answer
#: alone, strong enough that a tiny greedy model does not repeat one token forever.
REPETITION_PENALTY = 1.1

ROLES = ("user", "assistant", "system")

# JSON can carry "\ud800" escapes that decode to lone surrogates; tokenizers refuse those.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# What a byte-level tokenizer decodes an incomplete UTF-8 character to, while its other bytes are still to come.
_INCOMPLETE = "\ufffd"


class Reply(str):
    """A reply's text so far, knowing how many generated tokens it holds (``tokens``): what a reply costs."""

    tokens: int

    def __new__(cls, text: str, tokens: int) -> Reply:
        reply = super().__new__(cls, text)
        reply.tokens = tokens
        return reply


class ChatModel:
    """AutoTokenizer + AutoModelForCausalLM, answering a conversation token by token (greedy, KV cache)."""

    def __init__(self, source: str, *, name: str, device: str, local_files_only: bool = False) -> None:
        """Load tokenizer and weights from `source` onto `device`; raises on any failure."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
        # Refused before the weights are read: without a template there is no right way to lay out a conversation.
        if not getattr(self._tokenizer, "chat_template", None):
            raise UnsuitableModelError("its tokenizer has no chat template")
        # float32 whatever the checkpoint is stored in: CPUs run bfloat16 slowly, and float16 not at all well.
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, local_files_only=local_files_only)
        self._model = model.to(device).eval()
        self._torch = torch
        # A causal LM numbers positions from 0: the model's position embeddings hold exactly that many tokens.
        self.max_context_tokens = token_limit(
            self._tokenizer.model_max_length, model.config, cap=MAX_CONTEXT_TOKENS
        )
        self._eos_ids = _eos_ids(self._tokenizer, getattr(model, "generation_config", None))
        # The KV cache argument (and output field) is `cache` from transformers 5.2x, `past_key_values` before
        # (still accepted there, with a FutureWarning).
        self._cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.name = name
        self.device = device
        self.fallback_reason: str | None = None
        self.fallback_from: str | None = None

    def messages(self, message: str, history: Sequence[Mapping] | None) -> list[dict[str, str]]:
        """The conversation as [{"role", "content"}, ...] ending with `message`; ValueError says what is wrong."""
        if not isinstance(message, str):
            raise ValueError(f"The message must be text, not {type(message).__name__}.")
        if not message.strip():
            raise ValueError("The message is empty: type something to send.")
        _require_unicode(message, "The message")
        # None is what an empty history may arrive as from a form or a JSON client: the same as [].
        if history is None:
            history = []
        if not isinstance(history, (list, tuple)):
            raise ValueError(f"The chat history must be a list of messages, not {type(history).__name__}.")
        conversation: list[dict[str, str]] = []
        for number, item in enumerate(history, start=1):
            if not isinstance(item, Mapping):
                raise ValueError(
                    f"Message {number} of the chat history must be an object with role and content, "
                    f"not {type(item).__name__}."
                )
            role = item.get("role")
            if role not in ROLES:
                raise ValueError(
                    f"Message {number} of the chat history has role {role!r}: use user, assistant or system."
                )
            content = _text_of(item.get("content"), number)
            # A turn with no text (a file upload, an answer stopped before its first word) tells the model nothing.
            if content.strip():
                conversation.append({"role": role, "content": content})
        conversation.append({"role": "user", "content": message})
        return conversation

    def prompt_ids(self, message: str, history: Sequence[Mapping] | None) -> list[int]:
        """The token ids the model reads for this conversation, generation prompt included; ValueError if too long."""
        encoded = self._tokenizer.apply_chat_template(
            self.messages(message, history), add_generation_prompt=True, tokenize=True
        )
        # transformers 5 answers a BatchEncoding (return_dict=True by default), 4.x a plain list.
        ids = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded
        ids = [int(token) for token in ids]
        # At least one token of room must be left for the reply.
        if len(ids) > self.max_context_tokens - 1:
            raise ValueError(
                f"The conversation is too long: {len(ids):,} tokens, and this model reads at most "
                f"{self.max_context_tokens - 1:,} before its reply; shorten the message or the history."
            )
        return ids

    def count_tokens(self, text: str) -> int:
        """A streamed ``Reply``: the tokens the model generated for it; other text: its tokens to this model's own
        (public) tokenizer, without special tokens."""
        if isinstance(text, Reply):
            # Exact: re-tokenising a reply can count more tokens than were generated (a character split over
            # byte tokens, a non-canonical split), and the buyer pays for what the model generated.
            return text.tokens
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int) -> Iterator[str]:
        """Generate greedily after `prompt_ids`, yielding the whole reply so far each time it grows."""
        # Checked here, not in the generator, so that a bad request fails on the call, before any model work.
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive whole number, not {max_new_tokens!r}.")
        prompt = [int(token) for token in prompt_ids]
        if not prompt:
            raise ValueError("The prompt is empty: there is nothing to answer.")
        room = self.max_context_tokens - len(prompt)
        if room < 1:
            raise ValueError(
                f"The prompt is too long: {len(prompt):,} tokens leave no room for a reply within the "
                f"model's {self.max_context_tokens:,}."
            )
        return reply_texts(self._tokenizer, self._generate(prompt, min(max_new_tokens, room)))

    def _generate(self, prompt: list[int], max_new_tokens: int) -> Iterator[int]:
        """The new token ids, one at a time: a plain loop, so closing the generator stops it between tokens.

        Nothing here outlives the call (cache, penalties, ids are local), so concurrent streams share only the
        read-only model. No model.generate with a streamer thread: that thread would run on to max_new_tokens
        after a client went away.
        """
        torch = self._torch
        input_ids = torch.tensor([prompt], device=self.device)
        cache_name = self._cache_name
        past = None
        generated: list[int] = []
        for _ in range(max_new_tokens):
            # Entered per step, not around the loop: a generator may be resumed on another thread (Gradio runs
            # each step of a sync generator on a worker thread), and inference mode is a thread-local setting.
            with torch.inference_mode():
                output = self._model(input_ids=input_ids, use_cache=True, **{cache_name: past})
                past = getattr(output, cache_name)
                logits = output.logits[0, -1].float()
                if generated:
                    seen = torch.tensor(sorted(set(generated)), device=logits.device)
                    scores = logits[seen]
                    logits[seen] = torch.where(scores > 0, scores / REPETITION_PENALTY, scores * REPETITION_PENALTY)
                next_id = int(torch.argmax(logits))
            if next_id in self._eos_ids:
                return
            generated.append(next_id)
            yield next_id
            input_ids = torch.tensor([[next_id]], device=self.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r})"


def reply_texts(tokenizer, token_ids: Iterator[int]) -> Iterator[Reply]:
    """The growing reply text for a stream of token ids: yielded when it changed and ends in a whole character.

    The whole reply is decoded each time (not token by token): a character split over byte tokens decodes to
    "\\ufffd" until its last byte arrives, and spaces depend on neighbouring tokens. Each text yielded starts
    with the one before and is a ``Reply`` holding the number of ids decoded into it. A reply cut off
    mid-character ends without that character (and without its tokens).
    """
    ids: list[int] = []
    shown = ""
    for token_id in token_ids:
        ids.append(token_id)
        text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if text != shown and not text.endswith(_INCOMPLETE):
            shown = text
            yield Reply(text, len(ids))


def _text_of(content: object, number: int) -> str:
    """The text of one history message's content: a string, or the text parts of a list (Gradio 6)."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, (list, tuple)):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping):
                # {"type": "text", "text": ...} or a bare {"text": ...}; files, images and the like are not read.
                if part.get("type", "text") == "text":
                    if not isinstance(part.get("text"), str):
                        raise ValueError(f"Message {number} of the chat history has a text part without text.")
                    texts.append(part["text"])
            else:
                raise ValueError(
                    f"Message {number} of the chat history has a content part of type {type(part).__name__}: "
                    "parts must be objects such as {\"type\": \"text\", \"text\": ...}."
                )
        text = "\n".join(texts)
    else:
        raise ValueError(
            f"Message {number} of the chat history has content of type {type(content).__name__}: "
            "it must be text or a list of parts."
        )
    _require_unicode(text, f"Message {number} of the chat history")
    return text


def _require_unicode(text: str, what: str) -> None:
    if _SURROGATE.search(text):
        raise ValueError(f"{what} is not valid Unicode: it contains a lone surrogate (such as \\ud800).")


def _eos_ids(tokenizer, generation_config) -> frozenset[int]:
    """Every id that ends a reply: the tokenizer's EOS and the generation config's (an int or a list)."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(item) for item in value)
    return frozenset(ids)
