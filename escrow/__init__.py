"""The sandbox escrow service: the whole escrow contract (shared/escrow-api.md) on a SQLite ledger."""

from .api import create_api
from .clock import FakeClock, SystemClock
from .server import create_app
from .store import Store
from .sweeper import Sweeper

__all__ = ["FakeClock", "Store", "Sweeper", "SystemClock", "create_api", "create_app"]
