"""The Hub unreachable, HF_HUB_OFFLINE not set (a Space on a machine without network): one short look at the
Hub, no download retries (huggingface_hub's five, about 26 s), and a model in the local cache still loads.

Each test runs load_model in a child process (the Hub settings are read when huggingface_hub is imported), with
the Hub's address a closed local port: the same answer whether or not this machine has internet access.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from models import DEFAULT_MODEL_ID
from tests.support.processes import REPO, child_env, free_port

#: Generous for a loaded CI machine: measured about 2.5 s (mostly imports), against 26 s of retries before.
LIMIT_S = 20

LOAD = """
import json, logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
started = time.monotonic()
from models import load_model
model = load_model(sys.argv[1], allow_fallback=True)
print(json.dumps({"name": model.name, "fallback_from": model.fallback_from, "reason": model.fallback_reason,
                  "seconds": time.monotonic() - started}))
"""


def load_with_the_hub_unreachable(model_id: str, hub_cache) -> tuple[dict, str]:
    env = child_env(HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_HUB_CACHE=str(hub_cache))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "http_proxy", "https_proxy", "all_proxy"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", LOAD, model_id], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_an_uncached_model_falls_back_at_once_with_one_line(tmp_path):
    loaded, log = load_with_the_hub_unreachable(DEFAULT_MODEL_ID, tmp_path / "empty-cache")
    assert loaded["name"] == "vader" and loaded["fallback_from"] == DEFAULT_MODEL_ID
    assert loaded["reason"].startswith("it is not in the local cache and the Hugging Face Hub (http://127.0.0.1:")
    assert loaded["reason"].endswith(") could not be reached")
    assert loaded["seconds"] < LIMIT_S, log
    assert "Retry" not in log and "thrown while requesting" not in log
    (line,) = log.strip().splitlines()  # the one line: which model answers and why
    assert line.startswith("models.loading WARNING Model: vader (offline fallback") and DEFAULT_MODEL_ID in line


def test_a_cached_model_loads_from_the_cache(tmp_path, tiny_model_dir):
    # The layout huggingface_hub gives a downloaded repo: refs/main names a snapshot holding the files.
    repo = tmp_path / "hub" / "models--tests--tiny-sentiment"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(tiny_model_dir, repo / "snapshots" / revision)

    loaded, log = load_with_the_hub_unreachable("tests/tiny-sentiment", tmp_path / "hub")
    assert loaded == {"name": "tests/tiny-sentiment", "fallback_from": None, "reason": None,
                      "seconds": loaded["seconds"]}
    assert loaded["seconds"] < LIMIT_S, log
    assert "Retry" not in log and "thrown while requesting" not in log
