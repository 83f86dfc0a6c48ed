"""Where a Space keeps its files: the sandbox ledger, its seller account and the gate's journal."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

#: The gate's lease journal (what was charged but not yet captured), in the data folder.
JOURNAL_FILE = "gate-journal.sqlite"

_temporary: set[Path] = set()


def pick_data_dir(configured: str | None) -> tuple[Path, str]:
    """The data folder (DATA_DIR, else /data, else a temporary one removed at exit), and why there."""
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path, "DATA_DIR"
    persistent = Path("/data")
    if persistent.is_dir() and os.access(persistent, os.W_OK):
        return persistent, "persistent storage"
    path = Path(tempfile.mkdtemp(prefix="paid-space-"))
    _temporary.add(path)
    atexit.register(_remove_if_temporary, path)
    return path, "a temporary folder: its contents are lost on restart"


def _remove_if_temporary(path: Path) -> None:
    """Delete `path` if pick_data_dir made it as a temporary folder; any other folder is kept."""
    if path in _temporary:
        _temporary.discard(path)
        shutil.rmtree(path, ignore_errors=True)
