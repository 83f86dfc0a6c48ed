"""Start the Space (`python app.py`) and the escrow service (`python -m escrow serve`) as real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
#: How a process stopped by SIGTERM may exit: the Space's server shuts down cleanly and exits 0 (space/server.py);
#: a plain uvicorn re-raises the signal after its shutdown, which the gate's handler (installed before uvicorn's,
#: put back after) turns into a clean exit, 128 + SIGTERM; the default action would be -SIGTERM.
SIGTERM_EXITS = (0, -signal.SIGTERM, 128 + signal.SIGTERM)


def free_port() -> int:
    """A loopback port nobody is listening on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**overrides: str) -> dict[str, str]:
    """The environment of a child process: offline, no analytics, no inherited Space settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("PF_API_KEY", "ESCROW_URL", "MODEL_ID", "SPACE_HOST")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


@dataclass
class ServerProcess:
    """A child process serving HTTP on a loopback port, its output kept in a log file."""

    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    ready_path: str = "/"
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> ServerProcess:
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=log_file, stderr=subprocess.STDOUT)
        log_file.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.argv} exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(self.base_url + self.ready_path, timeout=2).status_code < 500:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"{self.argv} did not answer within {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (a clean shutdown: the gate settles), then SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def space_process(tmp: Path, app: str = "app.py", **env: str) -> ServerProcess:
    """`python <app>` from the repository root (as Hugging Face runs a Space's app_file) on a free port with the
    given environment (sandbox mode unless PF_API_KEY is set)."""
    port = free_port()
    data_dir = tmp / "space-data"
    space_env = child_env(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), DATA_DIR=str(data_dir))
    space_env.update(env)
    return ServerProcess([sys.executable, app], space_env, port, tmp / f"space-{port}.log")


def escrow_process(tmp: Path, *extra_args: str) -> ServerProcess:
    """`python -m escrow serve` on a free port with its own database."""
    port = free_port()
    argv = [sys.executable, "-m", "escrow", "serve", "--port", str(port), "--db", str(tmp / f"escrow-{port}.db")]
    return ServerProcess(argv + list(extra_args), child_env(), port, tmp / f"escrow-{port}.log", ready_path="/api/me")
