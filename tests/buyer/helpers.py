"""Helpers shared by the buyer library's tests."""

from __future__ import annotations

import threading
from typing import Any

from buyer import BudgetExhausted


def call_until_exhausted(space: Any, threads: int, name: str, *args: Any) -> tuple[list, list]:
    """``threads`` threads call ``name`` until each gets BudgetExhausted: (receipts, the BudgetExhausted errors)."""
    receipts: list = []
    exhausted: list = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            try:
                _, receipt = space.call(name, *args)
            except BudgetExhausted as exc:
                with lock:
                    exhausted.append(exc)
                return
            with lock:
                receipts.append(receipt)

    running = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(60)
    return receipts, exhausted
