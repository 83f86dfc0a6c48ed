"""ChatModel: a tiny offline Llama with SmolLM2's ChatML template, loaded exactly like MODEL_ID (no mocks)."""

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from models import DEFAULT_CHAT_MODEL_ID, ChatModel, ModelLoadError, load_chat_model
from models.chat import Reply, reply_texts
from tests.support.tiny_model import CHAT_MAX_POSITION_EMBEDDINGS, GENERATION_PROMPT, TRAINING_SENTENCES

# A stream gone wrong tends to hang rather than fail: bound every test.
pytestmark = pytest.mark.timeout(60)

HISTORY = [
    {"role": "user", "content": "What a fantastic game last night!"},
    {"role": "assistant", "content": "Thanks so much for the quick reply!"},
]


def public_tokenizer(folder):
    """The tokenizer a buyer would download: loaded on its own, not the model's instance."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def assert_one_clear_sentence(message: str, model_id: str) -> None:
    assert message.startswith(f"Could not load the chat model {model_id!r}: ")
    assert "MODEL_ID" in message and "chat template" in message  # how to fix it
    assert message.endswith(".") and "\n" not in message and "Traceback" not in message


# ---------------------------------------------------------------- loading


def test_loads_through_load_chat_model_once(tiny_chat_model, tiny_chat_model_dir):
    import torch

    assert isinstance(tiny_chat_model, ChatModel)
    assert tiny_chat_model.name == tiny_chat_model_dir.name  # a folder is named by its name, not its full path
    assert tiny_chat_model.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert tiny_chat_model.max_context_tokens == CHAT_MAX_POSITION_EMBEDDINGS  # no "- 2": Llama counts from 0
    assert tiny_chat_model.fallback_reason is None and tiny_chat_model.fallback_from is None
    assert load_chat_model(str(tiny_chat_model_dir)) is tiny_chat_model  # loaded once per process


def test_default_chat_model_is_smollm2_instruct():
    assert DEFAULT_CHAT_MODEL_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_missing_folder_is_one_sentence(tmp_path):
    missing = str(tmp_path / "no-model-here")
    with pytest.raises(ModelLoadError) as caught:
        load_chat_model(missing)
    assert_one_clear_sentence(str(caught.value), missing)
    assert "no such folder" in str(caught.value)
    assert caught.value.model_id == missing


def test_folder_without_a_model_is_one_sentence(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError) as caught:
        load_chat_model(str(tmp_path))
    assert_one_clear_sentence(str(caught.value), str(tmp_path))
    assert "does not hold a transformers causal language model" in str(caught.value)


def test_a_model_without_a_chat_template_is_refused(tmp_path, tiny_chat_model_dir):
    folder = shutil.copytree(tiny_chat_model_dir, tmp_path / "no-template")
    # transformers 5 saves the template beside the tokenizer config; 4.x saved it inside.
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(ModelLoadError) as caught:
        load_chat_model(str(folder))
    assert_one_clear_sentence(str(caught.value), str(folder))
    assert caught.value.cause == "its tokenizer has no chat template"


def test_an_uncached_hub_model_with_the_hub_off_is_one_sentence():
    # tests/conftest.py sets HF_HUB_OFFLINE=1: the answer comes at once, before any download is tried.
    with pytest.raises(ModelLoadError) as caught:
        load_chat_model("nobody-at-all/no-such-chat-model")
    assert_one_clear_sentence(str(caught.value), "nobody-at-all/no-such-chat-model")
    assert "HF_HUB_OFFLINE" in str(caught.value)


def test_a_blank_model_id_means_the_default(monkeypatch):
    # As if the Hub's cache did not hold it (the Hub is off in tests): refused at once, naming the default.
    monkeypatch.setattr("models.loading._in_hub_cache", lambda model_id: False)
    for blank in (None, "", "  "):
        with pytest.raises(ModelLoadError) as caught:
            load_chat_model(blank)
        assert caught.value.model_id == DEFAULT_CHAT_MODEL_ID


# ---------------------------------------------------------------- messages


def test_messages_end_with_the_users_message(tiny_chat_model):
    assert tiny_chat_model.messages("Hello there", []) == [{"role": "user", "content": "Hello there"}]
    assert tiny_chat_model.messages("Hello there", None) == [{"role": "user", "content": "Hello there"}]
    assert tiny_chat_model.messages("And now?", HISTORY) == [*HISTORY, {"role": "user", "content": "And now?"}]


def test_messages_read_gradio_6_content_parts_and_ignore_the_rest(tiny_chat_model):
    history = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look at this:"},
                {"type": "file", "file": {"path": "/tmp/cat.png", "mime_type": "image/png"}},
                {"text": "what is it?"},
            ],
            "metadata": None,
            "options": [],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}], "metadata": {"title": "thinking"}},
        {"role": "user", "content": [{"type": "file", "file": {"path": "/tmp/dog.png"}}]},  # no text: left out
        {"role": "assistant", "content": ""},  # an answer stopped before its first word: left out
    ]
    assert tiny_chat_model.messages("Thanks", history) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Look at this:\nwhat is it?"},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Thanks"},
    ]


@pytest.mark.parametrize(
    ("message", "history", "says"),
    [
        ("", [], "empty"),
        ("   \n", [], "empty"),
        (None, [], "must be text"),
        (42, [], "must be text"),
        ("bad \ud800 text", [], "not valid Unicode"),
        ("hi", "What a fantastic game", "must be a list"),
        ("hi", {"role": "user", "content": "hi"}, "must be a list"),
        ("hi", ["just a string"], "Message 1 of the chat history must be an object"),
        ("hi", [HISTORY[0], {"role": "tool", "content": "{}"}], "Message 2 of the chat history has role 'tool'"),
        ("hi", [{"content": "no role"}], "has role None"),
        ("hi", [{"role": "user", "content": 42}], "content of type int"),
        ("hi", [{"role": "user", "content": None}], "content of type NoneType"),
        ("hi", [{"role": "user", "content": {"text": "a dict, not a list"}}], "content of type dict"),
        ("hi", [{"role": "user", "content": [42]}], "content part of type int"),
        ("hi", [{"role": "user", "content": [{"type": "text", "text": None}]}], "text part without text"),
        ("hi", [{"role": "user", "content": "bad \udfff"}], "Message 1 of the chat history is not valid Unicode"),
    ],
)
def test_messages_refuse_what_is_not_a_conversation(tiny_chat_model, message, history, says):
    with pytest.raises(ValueError, match=says) as caught:
        tiny_chat_model.messages(message, history)
    text = str(caught.value)
    assert text.endswith(".") and "\n" not in text  # one sentence a buyer can act on


# ---------------------------------------------------------------- prompt ids and counting


def test_prompt_ids_are_the_chat_template_with_the_generation_prompt(tiny_chat_model, tiny_chat_model_dir):
    tokenizer = public_tokenizer(tiny_chat_model_dir)
    conversation = [*HISTORY, {"role": "user", "content": "And now?"}]
    expected = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected

    ids = tiny_chat_model.prompt_ids("And now?", HISTORY)
    assert type(ids) is list and all(type(token) is int for token in ids)
    assert ids == list(expected)
    generation_prompt = tokenizer.encode(GENERATION_PROMPT, add_special_tokens=False)
    assert ids[-len(generation_prompt):] == generation_prompt
    assert tokenizer.decode(ids).endswith("<|im_start|>user\nAnd now?<|im_end|>\n" + GENERATION_PROMPT)


def test_prompt_ids_refuse_a_conversation_longer_than_the_context(tiny_chat_model):
    long_message = " ".join(TRAINING_SENTENCES)  # several hundred tokens; the tiny model reads 256
    with pytest.raises(ValueError, match=r"too long: [\d,]+ tokens, and this model reads at most 255"):
        tiny_chat_model.prompt_ids(long_message, [])


def test_prompt_ids_check_the_conversation(tiny_chat_model):
    with pytest.raises(ValueError, match="empty"):
        tiny_chat_model.prompt_ids(" ", HISTORY)


def test_count_tokens_is_the_public_tokenizers_count(tiny_chat_model, tiny_chat_model_dir):
    tokenizer = public_tokenizer(tiny_chat_model_dir)
    for text in ["", "I love this, it is wonderful.", "price: 10 € 😀", "<|im_end|> is just text here"]:
        assert tiny_chat_model.count_tokens(text) == len(tokenizer.encode(text, add_special_tokens=False))
    assert tiny_chat_model.count_tokens("") == 0


# ---------------------------------------------------------------- streaming


@pytest.mark.parametrize("message", [TRAINING_SENTENCES[0], TRAINING_SENTENCES[7], "ok"])
def test_a_stream_yields_the_growing_reply_up_to_max_new_tokens(tiny_chat_model, message):
    texts = list(tiny_chat_model.stream(tiny_chat_model.prompt_ids(message, HISTORY), 40))
    assert texts and all(isinstance(text, str) and text for text in texts)
    # Each item is the whole reply so far, as gr.ChatInterface expects: longer, and starting with the one before.
    assert all(later.startswith(earlier) and later != earlier for earlier, later in zip(texts, texts[1:]))
    assert not any(text.endswith("\ufffd") for text in texts)
    # The tiny model never says EOS, so the stream runs to max_new_tokens; its words re-encode one token each.
    assert tiny_chat_model.count_tokens(texts[-1]) == 40


def test_a_stream_is_the_same_every_time(tiny_chat_model):
    prompt = tiny_chat_model.prompt_ids("What a fantastic game!", [])
    assert list(tiny_chat_model.stream(prompt, 12)) == list(tiny_chat_model.stream(prompt, 12))


def test_max_new_tokens_is_clamped_to_the_context(tiny_chat_model):
    prompt = tiny_chat_model.prompt_ids(" ".join(TRAINING_SENTENCES[:8]), [])
    room = tiny_chat_model.max_context_tokens - len(prompt)
    assert 0 < room < 200
    texts = list(tiny_chat_model.stream(prompt, 1000))
    assert tiny_chat_model.count_tokens(texts[-1]) == room


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", None, True])
def test_max_new_tokens_must_be_a_positive_whole_number(tiny_chat_model, bad):
    prompt = tiny_chat_model.prompt_ids("hi", [])
    with pytest.raises(ValueError, match="max_new_tokens must be a positive whole number"):
        tiny_chat_model.stream(prompt, bad)  # refused on the call itself, before any model work


def test_an_empty_or_full_prompt_is_refused(tiny_chat_model):
    with pytest.raises(ValueError, match="empty"):
        tiny_chat_model.stream([], 10)
    with pytest.raises(ValueError, match="no room for a reply"):
        tiny_chat_model.stream([5] * tiny_chat_model.max_context_tokens, 10)


def test_closing_a_stream_stops_generation_at_once(tiny_chat_model):
    forwards = []
    hook = tiny_chat_model._model.register_forward_hook(lambda *_: forwards.append(1))
    threads_before = set(threading.enumerate())
    try:
        stream = tiny_chat_model.stream(tiny_chat_model.prompt_ids("hi", []), 200)
        for _ in range(3):
            next(stream)
        assert threads_before == set(threading.enumerate())  # no thread generates in the background
        stream.close()  # what Gradio does when a client abandons the stream
        assert len(forwards) == 3  # one forward pass per token received, none after
        with pytest.raises(StopIteration):
            next(stream)
        assert stream.gi_frame is None  # the generator is finished
        assert len(forwards) == 3
        assert threads_before == set(threading.enumerate())
    finally:
        hook.remove()


def test_a_stream_stops_at_an_eos_id_from_the_generation_config(tmp_path, tiny_chat_model, tiny_chat_model_dir):
    prompt = tiny_chat_model.prompt_ids("hi", [])
    full = list(tiny_chat_model.stream(prompt, 20))[-1]
    ids = tiny_chat_model._tokenizer.encode(full, add_special_tokens=False)
    # A word the model says, for the first time after a few others: made an EOS, the reply ends just before it.
    first = next(index for index in range(3, len(ids)) if ids[index] not in ids[:index])
    stop_id = ids[first]

    folder = shutil.copytree(tiny_chat_model_dir, tmp_path / "tiny-chat-stops")
    config = json.loads((folder / "generation_config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], stop_id]  # a list, as many chat models have
    (folder / "generation_config.json").write_text(json.dumps(config))
    stopping = load_chat_model(str(folder))

    texts = list(stopping.stream(prompt, 20))
    assert texts[-1] == tiny_chat_model._tokenizer.decode(ids[:first])
    assert stopping.count_tokens(texts[-1]) == first < 20


def test_concurrent_streams_do_not_mix(tiny_chat_model):
    prompts = [tiny_chat_model.prompt_ids(message, []) for message in TRAINING_SENTENCES[:4]]
    alone = [list(tiny_chat_model.stream(prompt, 24)) for prompt in prompts]
    start = threading.Barrier(len(prompts))

    def run(prompt):
        start.wait(10)
        return list(tiny_chat_model.stream(prompt, 24))

    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(run, prompts))
    assert together == alone


def test_reply_texts_wait_for_a_whole_character(tiny_chat_model):
    tokenizer = tiny_chat_model._tokenizer
    text = "price: 10 € 😀 ok"  # "€" and "😀" are several byte tokens each to this tokenizer
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split())
    texts = list(reply_texts(tokenizer, iter(ids)))
    assert texts[-1] == text
    assert not any(item.endswith("\ufffd") for item in texts)
    assert all(later.startswith(earlier) and later != earlier for earlier, later in zip(texts, texts[1:]))
    # Cut off inside "😀" (max_new_tokens reached): the reply ends before it, without a replacement character.
    cut = tokenizer.encode("price: 10 € 😀", add_special_tokens=False)[:-1]
    assert list(reply_texts(tokenizer, iter(cut)))[-1] == "price: 10 € "
    assert list(reply_texts(tokenizer, iter([]))) == []


def test_a_streamed_reply_counts_the_tokens_generated_for_it_not_a_retokenisation(tiny_chat_model):
    tokenizer = tiny_chat_model._tokenizer
    # Split "hello" into single-byte tokens: a model may generate such a non-canonical split.
    ids = [tokenizer.convert_tokens_to_ids(ch) for ch in "hello"]
    texts = list(reply_texts(tokenizer, iter(ids)))
    assert texts[-1] == "hello" and isinstance(texts[-1], Reply)
    assert [tiny_chat_model.count_tokens(text) for text in texts] == [1, 2, 3, 4, 5]  # what was generated
    assert tiny_chat_model.count_tokens(str(texts[-1])) < 5  # the same text re-tokenised counts fewer
    # A cut-off character's bytes are not in the text, nor in its count.
    cut = tokenizer.encode("ok €", add_special_tokens=False)[:-1]
    last = list(reply_texts(tokenizer, iter(cut)))[-1]
    assert last == "ok " and tiny_chat_model.count_tokens(last) == len(tokenizer.encode("ok ", add_special_tokens=False))
