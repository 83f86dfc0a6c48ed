"""What every paid Space reads from its environment, and the one error a bad setting raises."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from gate.money import to_usdc

#: The settlements a Space can run with (SETTLEMENT); the first is the default.
SETTLEMENTS = ("lease", "per_call")


class ConfigError(Exception):
    """A setting the Space cannot start with; its message is one sentence saying how to fix it."""


@dataclass(frozen=True)
class SpaceConfig:
    """What the environment says this Space is: its mode, where it listens, where it keeps data."""

    api_key: str
    escrow_url: str | None
    host: str
    port: int
    data_dir: str | None
    public_url: str
    settlement: str = "lease"

    @property
    def sandbox(self) -> bool:
        """No PF_API_KEY: the sandbox escrow runs inside this process."""
        return not self.api_key

    @property
    def loopback_url(self) -> str:
        """Where this process reaches its own server (the sandbox talks to itself over HTTP)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "localhost") else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SpaceConfig:
        """Read PF_API_KEY, ESCROW_URL, GRADIO_SERVER_NAME/PORT, SPACE_HOST, DATA_DIR and SETTLEMENT."""
        env = os.environ if env is None else env
        host = env.get("GRADIO_SERVER_NAME", "").strip() or "127.0.0.1"
        raw_port = env.get("GRADIO_SERVER_PORT", "").strip() or "7860"
        if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
            raise ConfigError(f"GRADIO_SERVER_PORT must be a port number, not {raw_port!r}.")
        port = int(raw_port)
        settlement = env.get("SETTLEMENT", "").strip().lower() or SETTLEMENTS[0]
        if settlement not in SETTLEMENTS:
            raise ConfigError(f"SETTLEMENT must be one of {', '.join(SETTLEMENTS)}, not {settlement!r}.")
        space_host = env.get("SPACE_HOST", "").strip()
        browse_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        public_url = f"https://{space_host}" if space_host else f"http://{browse_host}:{port}"
        return cls(
            api_key=env.get("PF_API_KEY", "").strip(),
            escrow_url=env.get("ESCROW_URL", "").strip() or None,
            host=host,
            port=port,
            data_dir=env.get("DATA_DIR", "").strip() or None,
            public_url=public_url.rstrip("/"),
            settlement=settlement,
        )


def usdc_from_env(name: str, default: str, env: Mapping[str, str] | None = None) -> Decimal:
    """The positive USDC amount in environment variable `name` (`default` when unset), as it will be charged."""
    env = os.environ if env is None else env
    raw = env.get(name, "").strip() or default
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite() or amount <= 0:
        raise ConfigError(f"{name} must be a positive decimal number such as {default}, not {raw!r}.")
    try:  # what PerCall will charge: whole micro-USDC, at most MAX_USDC
        return to_usdc(raw, name=name)
    except ValueError as exc:
        raise ConfigError(f"{exc}.") from None
