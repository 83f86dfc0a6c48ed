"""Two Space processes on one DATA_DIR: the second refuses to start, in one sentence, and replays nothing.

Its start-up replay would otherwise final-capture the first one's live lease while the first keeps
charging on it locally: those charges would never be paid (gate/_journal.py holds an OS lock).
"""

from __future__ import annotations

from decimal import Decimal

from gradio_client import Client

from space.data import JOURNAL_FILE
from escrow import Store
from tests.support.processes import SIGTERM_EXITS, space_process
from tests.support.space import EscrowApi


def test_a_second_space_on_the_same_data_dir_refuses_to_start_and_the_first_is_paid(tmp_path):
    first = space_process(tmp_path, MODEL_ID="vader").start()
    second = None
    receipts = []
    try:
        client = Client(first.base_url + "/", verbose=False)
        seller_id = client.predict(api_name="/pricing")["seller_id"]
        sandbox = EscrowApi(first.base_url + "/sandbox/api")
        buyer = sandbox.register()
        sandbox.fund(buyer, "1")
        escrow_id = sandbox.open_escrow(buyer, seller_id, "0.5")
        receipts += [client.predict(f"call {n} was great", escrow_id, api_name="/classify")[1] for n in range(2)]
        assert sandbox.escrow(buyer, escrow_id)["held_usdc"] > 0  # the first one's lease is live

        second = space_process(tmp_path, MODEL_ID="vader")  # same tmp: the same DATA_DIR, another port
        try:
            second.start(timeout_s=90)
        except RuntimeError:
            pass
        else:
            raise AssertionError(f"a second Space started on the same DATA_DIR:\n{second.log()}")
        code, output = second.process.wait(30), second.log()
        journal = tmp_path / "space-data" / JOURNAL_FILE
        assert code == 1, output
        assert "Traceback" not in output
        assert (
            f"Cannot start the Space: The lease journal {journal} is in use by another process "
            f"(pid {first.process.pid}): run one Space process per journal file, "
            "or give this one its own DATA_DIR.\n"
        ) in output
        assert "lease journal replayed" not in output

        # The first Space goes on charging on its lease, and every one of its charges is paid.
        receipts += [client.predict(f"call {n} was fine", escrow_id, api_name="/classify")[1] for n in range(2, 4)]
        assert {r["settlement"] for r in receipts} == {"lease"}
    finally:
        if second is not None:
            second.kill()
        assert first.stop() in SIGTERM_EXITS, first.log()

    assert "USDC of charges on hold" not in first.log()  # no capture of the first one met a closed hold
    store = Store(tmp_path / "space-data" / "sandbox-escrow.db")
    try:
        store.check_invariants()
        body = store.get_escrow(buyer.api_key, escrow_id).json()
        charged = sum(Decimal(r["charged_usdc"]) for r in receipts)
        assert body["spent_usdc"] == charged == Decimal("0.004")
        assert body["held_usdc"] == 0
    finally:
        store.close()
