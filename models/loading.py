"""load_model: the one place that turns MODEL_ID into a loaded SentimentModel, once per process."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from models.base import SentimentModel
from models.labels import UnmappableLabelsError
from models.prediction import ModelLoadError
from models.vader import VADER_NAME, VaderSentimentModel

logger = logging.getLogger(__name__)

# The newer Cardiff NLP checkpoint (TweetEval, 2022 tweets): its config names its labels
# negative/neutral/positive. The older cardiffnlp/twitter-roberta-base-sentiment answers
# LABEL_0/1/2 (mapped too, see models/labels.py) and was trained on older tweets.
DEFAULT_MODEL_ID = "cardiffnlp/twitter-roberta-base-sentiment-latest"

_loaded: dict[tuple[str, str], SentimentModel] = {}
_loading_lock = threading.Lock()


def load_model(
    model_id: str | None = None, *, allow_fallback: bool = False, device: str | None = None
) -> SentimentModel:
    """Load a sentiment model once per process: a hub id or local folder, "vader", or None for the default.

    allow_fallback=True (sandbox mode): a model that cannot be loaded is replaced by VADER, with a
    warning in the log and the reason in `fallback_reason`. allow_fallback=False (production):
    raise ModelLoadError, whose message is one sentence saying how to fix it.
    """
    model_id = (model_id or "").strip() or DEFAULT_MODEL_ID
    # Serialised so that two threads asking for the same model load it once.
    with _loading_lock:
        if model_id.lower() == VADER_NAME:
            return _cached((VADER_NAME, "cpu"), VaderSentimentModel)
        try:
            return _load_transformers_model(model_id, device)
        except ModelLoadError as error:
            if not allow_fallback:
                raise
            reason = f"the model {model_id!r} could not be loaded: {error.cause}"
            logger.warning("%s; using the offline VADER sentiment model instead (sandbox mode).", reason)
            return VaderSentimentModel(fallback_reason=reason)


def _cached(key: tuple[str, str], build) -> SentimentModel:
    if key not in _loaded:
        _loaded[key] = build()
    return _loaded[key]


def _load_transformers_model(model_id: str, device: str | None) -> SentimentModel:
    from models.transformers_model import TransformersSentimentModel, resolve_device

    folder = _local_folder(model_id)
    source = str(folder) if folder else model_id
    try:
        resolved_device = resolve_device(device)
    except (RuntimeError, ValueError) as error:
        raise ModelLoadError.for_model(model_id, f"the device {device!r} is not usable ({error})") from error
    try:
        return _cached(
            (source, resolved_device),
            lambda: TransformersSentimentModel(
                source, name=folder.name if folder else model_id, device=resolved_device
            ),
        )
    except UnmappableLabelsError as error:
        raise ModelLoadError.for_model(
            model_id,
            f"its labels cannot be read as negative/neutral/positive ({error})",
            fix="set MODEL_ID to a sentiment model with negative/neutral/positive labels",
        ) from error
    except Exception as error:  # noqa: BLE001 - every failure becomes one clear sentence
        raise ModelLoadError.for_model(model_id, _describe_failure(model_id, folder, error)) from error


def _local_folder(model_id: str) -> Path | None:
    """The folder `model_id` names, if it names one rather than a hub repo ("owner/name")."""
    path = Path(model_id).expanduser()
    looks_like_path = model_id.startswith((".", "/", "~")) or "\\" in model_id or model_id.count("/") > 1
    if path.is_dir() or looks_like_path:
        return path.resolve()
    return None


def _describe_failure(model_id: str, folder: Path | None, error: Exception) -> str:
    """A short clause saying why loading failed, without traceback text."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if folder is not None:
        if not folder.is_dir():
            return "there is no such folder"
        return "the folder does not hold a transformers sequence-classification model (config, tokenizer and weights)"
    causes = _causes(error)
    if any(isinstance(cause, GatedRepoError) for cause in causes):
        return "the repository is gated and this Space has no access token for it"
    if any(isinstance(cause, RepositoryNotFoundError) for cause in causes):
        return "no such repository on the Hugging Face Hub (or it is private)"
    if constants.HF_HUB_OFFLINE:
        return "it is not in the local cache and Hugging Face Hub access is switched off (HF_HUB_OFFLINE)"
    if any(isinstance(cause, (ConnectionError, TimeoutError)) for cause in causes) or "connect" in str(error):
        return "it is not in the local cache and the Hugging Face Hub could not be reached"
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
