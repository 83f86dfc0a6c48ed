"""The sandbox escrow inside the Space (no PF_API_KEY): served on the Space's own port under /sandbox/api."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Where the sandbox escrow API is mounted on the Space's own server.
SANDBOX_PREFIX = "/sandbox/api"
_SELLER_FILE = "sandbox-seller.json"
_DB_FILE = "sandbox-escrow.db"


@dataclass
class Sandbox:
    """The in-process sandbox escrow and this Space's seller account in it."""

    store: Any
    api: Any
    sweeper: Any
    seller_id: str
    seller_key: str
    db_path: Path


def start_sandbox(data_dir: Path) -> Sandbox:
    """Open the sandbox ledger and register this Space as a seller in it (once per database)."""
    from escrow import Store, Sweeper, create_api  # only sandbox Spaces load the escrow service

    db_path = data_dir / _DB_FILE
    store = Store(db_path)
    seller_file = data_dir / _SELLER_FILE
    seller = None
    if seller_file.exists():
        seller = json.loads(seller_file.read_text())
        if not store.agent_exists(seller["agent_id"]):
            seller = None
    if seller is None:
        seller = store.register_agent(name="this-space")
        seller_file.write_text(json.dumps(seller))
        seller_file.chmod(0o600)
    return Sandbox(
        store=store,
        api=create_api(store),
        sweeper=Sweeper(store),
        seller_id=seller["agent_id"],
        seller_key=seller["api_key"],
        db_path=db_path,
    )
