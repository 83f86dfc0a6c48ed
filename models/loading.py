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

#: How long the one look at the Hugging Face Hub before loading a hub model may take. Past it (or on any
#: network error, 429 or 5xx) the Hub counts as unreachable and the model is read from the local cache only:
#: huggingface_hub would otherwise retry each file five times with backoff (about 26 s per start, offline).
HUB_PROBE_TIMEOUT_S = 3.0

_loaded: dict[tuple[str, str], SentimentModel] = {}
_loading_lock = threading.Lock()


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
            return _cached((VADER_NAME, "cpu"), VaderSentimentModel)
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


def _cached(key: tuple[str, str], build) -> SentimentModel:
    if key not in _loaded:
        _loaded[key] = build()
    return _loaded[key]


def _load_transformers_model(model_id: str, device: str | None) -> SentimentModel:
    folder = _local_folder(model_id)
    source = str(folder) if folder else model_id
    # A hub model not loaded yet: one short look at the Hub first; unreachable, the local cache is all there
    # is (and with nothing there, the answer comes before torch and transformers are even imported).
    hub_unreachable = folder is None and all(key[0] != source for key in _loaded) and not _hub_reachable(model_id)
    if hub_unreachable and not _in_hub_cache(model_id):
        raise ModelLoadError.for_model(model_id, _describe_failure(folder, None, hub_unreachable=True))

    from models.transformers_model import TransformersSentimentModel, resolve_device

    try:
        resolved_device = resolve_device(device)
    except (RuntimeError, ValueError) as error:
        raise ModelLoadError.for_model(model_id, f"the device {device!r} is not usable ({error})") from error
    try:
        return _cached(
            (source, resolved_device),
            lambda: TransformersSentimentModel(
                source, name=folder.name if folder else model_id, device=resolved_device,
                local_files_only=hub_unreachable,
            ),
        )
    except UnmappableLabelsError as error:
        raise ModelLoadError.for_model(
            model_id,
            f"its labels cannot be read as negative/neutral/positive ({error})",
            fix="set MODEL_ID to a sentiment model with negative/neutral/positive labels",
        ) from error
    except Exception as error:  # noqa: BLE001 - every failure becomes one clear sentence
        raise ModelLoadError.for_model(model_id, _describe_failure(folder, error, hub_unreachable)) from error


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


def _describe_failure(folder: Path | None, error: Exception | None, hub_unreachable: bool = False) -> str:
    """A short clause saying why loading failed, without traceback text."""
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
        return "the folder does not hold a transformers sequence-classification model (config, tokenizer and weights)"
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
