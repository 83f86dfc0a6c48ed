"""64 concurrent agents (threads with gradio_client) making paid calls against the running Space."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from gradio_client import Client

from tests.support.audit import Ledger
from tests.support.processes import space_process
from tests.support.space import EscrowApi

pytestmark = [pytest.mark.load, pytest.mark.slow]

AGENTS = 64
CALLS_EACH = 4
PRICE = "0.001"


def test_64_agents_shared_and_separate_escrows(tmp_path, tiny_model_dir, books):
    space = space_process(tmp_path, MODEL_ID=str(tiny_model_dir)).start()
    data_dir = tmp_path / "space-data"
    try:
        api = EscrowApi(space.base_url + "/sandbox/api")
        seller_id = Client(space.base_url + "/", verbose=False).predict(api_name="/pricing")["seller_id"]
        buyer = api.register("load-buyer")
        api.fund(buyer, "5")
        # 32 agents on their own escrows (enough for all their calls); 32 on 8 shared escrows,
        # each covering only 10 of its 16 calls: 6 of them must be refused, not charged.
        own = [api.open_escrow(buyer, seller_id, "0.010") for _ in range(32)]
        shared = [api.open_escrow(buyer, seller_id, "0.010") for _ in range(8)]
        escrow_of = own + [shared[i % 8] for i in range(32)]
        audit = books.open(Ledger(data_dir / "sandbox-escrow.db"), seller_id=seller_id, buyer_ids=[buyer.agent_id],
                           per_call=False)
        barrier = threading.Barrier(AGENTS)

        def agent(i: int) -> None:
            client = Client(space.base_url + "/", verbose=False)
            barrier.wait()
            for n in range(CALLS_EACH):
                try:
                    result, receipt = client.predict(f"call {i}/{n}: I love it", escrow_of[i], api_name="/classify")
                except Exception as refusal:  # gradio_client raises AppError with the gate's message
                    message = str(refusal)
                    assert "not charged" in message.lower(), message
                    audit.refused(message)
                else:
                    assert result["label"] in ("negative", "neutral", "positive"), result
                    assert receipt["escrow_id"] == escrow_of[i]
                    audit.paid(result, receipt)

        started = time.monotonic()
        with ThreadPoolExecutor(AGENTS) as pool:
            list(pool.map(agent, range(AGENTS)))
        elapsed = time.monotonic() - started
    finally:
        space.stop()  # SIGTERM: the gate captures what its leases owe and voids the rest
    out = audit.outcomes
    total = AGENTS * CALLS_EACH
    print(f"\nload: {total} calls by {AGENTS} agents in {elapsed:.1f} s = {total / elapsed:.1f} calls/s; "
          f"paid {len(out.receipts)}, refused {len(out.refusals)}: {dict(out.error_mix())}")
    assert len(out.receipts) + len(out.refusals) == total
    assert len(out.receipts) == 32 * CALLS_EACH + 8 * 10  # every call an escrow could pay was paid
    per_escrow = Counter(r["escrow_id"] for r in out.receipts)
    assert all(per_escrow[e] <= 10 for e in set(escrow_of))  # zero overspend
    summary = audit.reconcile()
    assert summary["spent_micro"] == len(out.receipts) * 1000
