"""Turning MODEL_ID (a hub id or a local folder) into a loaded model, once per process.

load_model (sentiment, with the VADER fallback), load_chat_model and load_embedding_model share one path,
load_pretrained: one short look at the Hub, the local cache only when it cannot be reached, and any failure as
one sentence saying how to fix it. torch and transformers are imported only when a model is built.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from models.base import SentimentModel
from models.labels import UnmappableLabelsError
from models.prediction import DEFAULT_FIX, ModelLoadError
from models.vader import VADER_NAME, VaderSentimentModel

if TYPE_CHECKING:  # pragma: no cover
    from models.chat import ChatModel
    from models.embedding import EmbeddingModel

logger = logging.getLogger(__name__)

# The newer Cardiff NLP checkpoint (TweetEval, 2022 tweets): its config names its labels
# negative/neutral/positive. The older cardiffnlp/twitter-roberta-base-sentiment answers
# LABEL_0/1/2 (mapped too, see models/labels.py) and was trained on older tweets.
DEFAULT_MODEL_ID = "cardiffnlp/twitter-roberta-base-sentiment-latest"

#: SmolLM2's instruction-tuned 135M model: a ChatML chat template, 8,192 tokens of context, and small enough
#: (about 540 MB in float32) to answer at reading speed on a free CPU Space.
DEFAULT_CHAT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

#: The common sentence-transformers encoder: 384 dimensions, mean pooling, reads 256 tokens, 90 MB.
DEFAULT_EMBEDDING_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

#: How long the one look at the Hugging Face Hub before loading a hub model may take. Past it (or on any
#: network error, 429 or 5xx) the Hub counts as unreachable and the model is read from the local cache only:
#: huggingface_hub would otherwise retry each file five times with backoff (about 26 s per start, offline).
HUB_PROBE_TIMEOUT_S = 3.0

# A tokenizer that does not state its limit reports a huge sentinel number instead.
_UNSTATED_LIMIT = 1_000_000

# Model types that number positions from padding_idx + 1 (= 2): 514 position embeddings hold 512 tokens.
_OFFSET_POSITION_MODELS = frozenset(
    {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer", "data2vec-text", "ibert"}
)

Model = TypeVar("Model")

# (kind, source, device) -> the loaded model.
_loaded: dict[tuple[str, str, str], object] = {}
# Serialises loads, so that two threads asking for one model load it once. Reentrant: load_model holds it
# (the VADER fallback is decided under it too) and calls load_pretrained, which takes it as well.
_loading_lock = threading.RLock()


@dataclass(frozen=True)
class _Kind:
    """What the error sentence says about one kind of model."""

    #: "sentiment", "chat", "embedding": in "Could not load the <name> model ..." and the cache key.
    name: str
    #: What a model folder of this kind holds, for "the folder does not hold ...".
    holds: str
    #: How to fix a failed load: the end of the error sentence.
    fix: str


_KINDS = {
    kind.name: kind
    for kind in (
        _Kind("sentiment", "a transformers sequence-classification model (config, tokenizer and weights)", DEFAULT_FIX),
        _Kind(
            "chat",
            "a transformers causal language model (config, tokenizer with a chat template, and weights)",
            "set MODEL_ID to a causal language model with a chat template (a Hugging Face model repo or a local "
            "model folder), or check the network",
        ),
        _Kind(
            "embedding",
            "a transformers text encoder (config, tokenizer and weights)",
            "set MODEL_ID to a sentence-embedding model such as sentence-transformers/all-MiniLM-L6-v2 (a Hugging "
            "Face model repo or a local model folder), or check the network",
        ),
    )
}


class UnsuitableModelError(ValueError):
    """A checkpoint that loads but cannot serve as the kind asked for; str() is the short clause saying why."""

    def __init__(self, cause: str, *, fix: str | None = None) -> None:
        super().__init__(cause)
        #: How to fix it, when that is more specific than the kind's own advice.
        self.fix = fix


def load_model(
    model_id: str | None = None, *, allow_fallback: bool = False, device: str | None = None
) -> SentimentModel:
    """Load a sentiment model once per process: a hub id or local folder, "vader", or None for the default.

    A hub model is looked up on the Hub once (HUB_PROBE_TIMEOUT_S); if the Hub cannot be reached it is read
    from the local cache, without download retries. allow_fallback=True (sandbox mode): a model that cannot be
    loaded is replaced by VADER, with one warning in the log, the model asked for in `fallback_from` and the
    short reason in `fallback_reason`. allow_fallback=False (production): raise ModelLoadError, whose message
    is one sentence saying how to fix it.
    """
    model_id = (model_id or "").strip() or DEFAULT_MODEL_ID
    # Serialised so that two threads asking for the same model load it once.
    with _loading_lock:
        if model_id.lower() == VADER_NAME:
            return _cached(("sentiment", VADER_NAME, "cpu"), VaderSentimentModel)
        try:
            return _load_transformers_model(model_id, device)
        except ModelLoadError as error:
            if not allow_fallback:
                raise
            logger.warning(
                "Model: %s (offline fallback, sandbox mode): the model %r could not be loaded: %s.",
                VADER_NAME, model_id, error.cause,
            )
            return VaderSentimentModel(fallback_reason=error.cause, fallback_from=model_id)


def load_chat_model(model_id: str | None = None, *, device: str | None = None) -> ChatModel:
    """Load a chat model (a causal LM with a chat template) once per process: a hub id or local folder.

    None or blank means DEFAULT_CHAT_MODEL_ID. There is no fallback: a chat model has no offline stand-in, so a
    failure raises ModelLoadError, one sentence saying how to fix it.
    """
    model_id = (model_id or "").strip() or DEFAULT_CHAT_MODEL_ID
    return load_pretrained(model_id, _build_chat_model, device=device, kind="chat")


def load_embedding_model(model_id: str | None = None, *, device: str | None = None) -> EmbeddingModel:
    """Load a text-embedding model once per process: a hub id or local folder; None or blank means the default.

    No fallback: vectors from another model would not be comparable with the buyer's others, so a failure
    raises ModelLoadError, one sentence saying how to fix it.
    """
    model_id = (model_id or "").strip() or DEFAULT_EMBEDDING_MODEL_ID
    return load_pretrained(model_id, _build_embedding_model, device=device, kind="embedding")


def load_pretrained(model_id: str, build: Callable[..., Model], *, device: str | None, kind: str) -> Model:
    """Load `model_id` (a hub id or a local folder) as a `kind` model, once per (kind, source, device).

    `build(source, name=..., device=..., local_files_only=...)` constructs it and may raise anything: every
    failure becomes one ModelLoadError sentence (UnsuitableModelError's clause and fix as they are). A hub model
    not loaded yet gets one short look at the Hub; unreachable, the local cache is all there is (and with
    nothing there, the answer comes before torch and transformers are even imported). Serialised, so that two
    threads asking for one model load it once.
    """
    with _loading_lock:
        return _load_pretrained(model_id, build, device=device, kind=kind)


def _load_pretrained(model_id: str, build: Callable[..., Model], *, device: str | None, kind: str) -> Model:
    spec = _KINDS[kind]
    folder = _local_folder(model_id)
    source = str(folder) if folder else model_id
    hub_unreachable = (
        folder is None and all(key[:2] != (kind, source) for key in _loaded) and not _hub_reachable(model_id)
    )
    if hub_unreachable and not _in_hub_cache(model_id):
        raise _load_error(spec, model_id, _describe_failure(folder, None, hub_unreachable=True))

    from models.transformers_model import resolve_device

    try:
        resolved_device = resolve_device(device)
    except (RuntimeError, ValueError) as error:
        raise _load_error(spec, model_id, f"the device {device!r} is not usable ({error})") from error
    try:
        return _cached(
            (kind, source, resolved_device),
            lambda: build(
                source, name=folder.name if folder else model_id, device=resolved_device,
                local_files_only=hub_unreachable,
            ),
        )
    except UnsuitableModelError as error:
        raise _load_error(spec, model_id, str(error), fix=error.fix) from error
    except Exception as error:  # noqa: BLE001 - every failure becomes one clear sentence
        raise _load_error(
            spec, model_id, _describe_failure(folder, error, hub_unreachable, holds=spec.holds)
        ) from error


def token_limit(tokenizer_limit: int | None, config, *, cap: int) -> int:
    """How many tokens (special tokens included) one input may have: the least the tokenizer, model and cap allow.

    A tokenizer that does not state its limit leaves it to the model's position embeddings. RoBERTa-family
    models number positions from padding_idx + 1, so 514 embeddings hold 512 tokens; others hold as many as
    they have.
    """
    limits = [int(cap)]
    if tokenizer_limit and tokenizer_limit < _UNSTATED_LIMIT:
        limits.append(int(tokenizer_limit))
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        offset = 2 if getattr(config, "model_type", None) in _OFFSET_POSITION_MODELS else 0
        limits.append(int(positions) - offset)
    return min(limits)


def _cached(key: tuple[str, str, str], build: Callable[[], Model]) -> Model:
    if key not in _loaded:
        _loaded[key] = build()
    return _loaded[key]  # type: ignore[return-value]  # the kind in the key decides the type


def _load_transformers_model(model_id: str, device: str | None) -> SentimentModel:
    return load_pretrained(model_id, _build_sentiment_model, device=device, kind="sentiment")


def _build_sentiment_model(source: str, **options) -> SentimentModel:
    from models.transformers_model import TransformersSentimentModel

    try:
        return TransformersSentimentModel(source, **options)
    except UnmappableLabelsError as error:
        raise UnsuitableModelError(
            f"its labels cannot be read as negative/neutral/positive ({error})",
            fix="set MODEL_ID to a sentiment model with negative/neutral/positive labels",
        ) from error


def _build_chat_model(source: str, **options) -> ChatModel:
    from models.chat import ChatModel

    return ChatModel(source, **options)


def _build_embedding_model(source: str, **options) -> EmbeddingModel:
    from models.embedding import EmbeddingModel

    return EmbeddingModel(source, **options)


def _load_error(kind: _Kind, model_id: str, cause: str, *, fix: str | None = None) -> ModelLoadError:
    """The one-sentence ModelLoadError for a `kind` model: ModelLoadError.for_model's, naming the kind."""
    error = ModelLoadError.for_model(model_id, cause, fix=fix or kind.fix)
    if kind.name == "sentiment":
        return error
    # for_model's sentence names the sentiment model; the other kinds' is the same sentence naming theirs.
    prefix = "Could not load the sentiment model "
    message = str(error)
    if message.startswith(prefix):
        message = f"Could not load the {kind.name} model " + message[len(prefix):]
    return ModelLoadError(message, model_id=model_id, cause=error.cause)


def _hub_reachable(model_id: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face Hub answers about `model_id` within `timeout_s`: one HEAD, no retries.

    Any answer about the repo counts as reachable (a missing or gated repo then fails fast with its own
    reason); a network error, a timeout, HF_HUB_OFFLINE, 408, 429 or 5xx counts as unreachable. The look runs
    in a daemon thread so that a resolver that hangs cannot hold the start-up past `timeout_s` either.
    """
    answer: list[bool] = []

    def look() -> None:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import HfHubHTTPError

        try:
            get_hf_file_metadata(hf_hub_url(model_id, "config.json"), timeout=timeout_s)
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else None
            answer.append(status is not None and status < 500 and status not in (408, 429))
        except Exception:  # noqa: BLE001 - offline mode, no route, refused, timed out, bad endpoint...
            answer.append(False)
        else:
            answer.append(True)

    thread = threading.Thread(target=look, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    return bool(answer and answer[0])


def _local_folder(model_id: str) -> Path | None:
    """The folder `model_id` names, if it names one rather than a hub repo ("owner/name")."""
    path = Path(model_id).expanduser()
    looks_like_path = model_id.startswith((".", "/", "~")) or "\\" in model_id or model_id.count("/") > 1
    if path.is_dir() or looks_like_path:
        return path.resolve()
    return None


def _in_hub_cache(model_id: str) -> bool:
    """Whether the local Hugging Face cache holds `model_id` (its config, at least)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an id the cache cannot even name is not in it
        return False


def _describe_failure(
    folder: Path | None, error: Exception | None, hub_unreachable: bool = False, *, holds: str | None = None
) -> str:
    """A short clause saying why loading failed, without traceback text; `holds`: what a model folder holds."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if hub_unreachable or error is None:
        if constants.HF_HUB_OFFLINE:
            return "it is not in the local cache and Hugging Face Hub access is switched off (HF_HUB_OFFLINE)"
        unreachable = f"the Hugging Face Hub ({constants.ENDPOINT}) could not be reached"
        if error is None:
            return f"it is not in the local cache and {unreachable}"
        return f"{unreachable} and the local cache does not hold all of its files"
    if folder is not None:
        if not folder.is_dir():
            return "there is no such folder"
        return f"the folder does not hold {holds or _KINDS['sentiment'].holds}"
    causes = _causes(error)
    if any(isinstance(cause, GatedRepoError) for cause in causes):
        return "the repository is gated and this Space has no access token for it"
    if any(isinstance(cause, RepositoryNotFoundError) for cause in causes):
        return "no such repository on the Hugging Face Hub (or it is private)"
    if constants.HF_HUB_OFFLINE:
        return "it is not in the local cache and Hugging Face Hub access is switched off (HF_HUB_OFFLINE)"
    if any(isinstance(cause, (ConnectionError, TimeoutError)) for cause in causes) or "connect" in str(error):
        return f"it is not in the local cache and the Hugging Face Hub ({constants.ENDPOINT}) could not be reached"
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line[:200].rstrip('.')}" if first_line else type(error).__name__


def _causes(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _clear_cache() -> None:
    """Forget loaded models (tests only)."""
    with _loading_lock:
        _loaded.clear()
