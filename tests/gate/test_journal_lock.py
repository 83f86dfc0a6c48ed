"""One process per lease journal: a second Journal on the same file is refused (an OS lock), never replays.

Two processes on one journal would each replay the other's live leases at start: the second
one's replay final-captures the first's open hold while the first keeps charging on it, and
those charges are never paid. So a journal with a path holds ``flock`` on ``<path>.lock`` for
its lifetime (gate/_journal.py); the OS drops it when the holder dies, so a crash still replays.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from gate import Lease, PerCall
from gate import _journal
from gate._journal import Journal, JournalInUse

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the subprocess helpers are POSIX")

ROOT = Path(__file__).resolve().parents[2]

# The child loads gate/_journal.py alone (it imports only the standard library): importing the
# `gate` package pulls in Gradio, seconds per child.
CHILD_PRELUDE = r"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("journal", sys.argv[1])
journal = importlib.util.module_from_spec(spec)
sys.modules["journal"] = journal  # dataclasses look their module up
spec.loader.exec_module(journal)
path = sys.argv[2]
"""

OPEN_AND_CLOSE = CHILD_PRELUDE + r"""
try:
    j = journal.Journal(path)
except journal.JournalInUse as exc:
    print(exc)
    sys.exit(3)
j.add_hold("hold_child", "esc_child", 5000, 2e9, 1.0)
j.close()
print("opened")
"""

HOLD_UNTIL_KILLED = CHILD_PRELUDE + r"""
j = journal.Journal(path)
j.add_hold("hold_live", "esc_live", 5000, 2e9, 1.0)
j.add_charge("chg_live", "hold_live", "esc_live", 1000, 2.0)
print("ready", flush=True)
time.sleep(120)
"""


def child_args(code: str, path: Path) -> list[str]:
    return [sys.executable, "-c", code, str(ROOT / "gate" / "_journal.py"), str(path)]


def open_in_child(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(child_args(OPEN_AND_CLOSE, path), capture_output=True, text=True, timeout=60)


def test_a_second_journal_on_the_same_file_in_this_process_is_refused(tmp_path):
    path = tmp_path / "data" / "journal.sqlite"
    first = Journal(path)
    try:
        first.add_hold("hold_a", "esc_a", 5000, 2e9, 1.0)
        with pytest.raises(JournalInUse, match=r"already open in this process \(pid \d+\)") as refused:
            Journal(path)
        assert isinstance(refused.value, RuntimeError)
        assert str(path) in str(refused.value)
        assert str(refused.value).count(". ") == 0 and str(refused.value).endswith(".")  # one sentence
        first.add_charge("chg_a", "hold_a", "esc_a", 1000, 2.0)  # the holder is untouched
        assert [h.uncaptured_micro for h in first.open_holds()] == [1000]
    finally:
        first.close()


def test_close_releases_the_file_and_is_idempotent(tmp_path):
    path = tmp_path / "journal.sqlite"
    first = Journal(path)
    first.add_hold("hold_a", "esc_a", 5000, 2e9, 1.0)
    first.close()
    first.close()  # idempotent
    second = Journal(path)  # released: opens, and sees what the first wrote
    try:
        assert [h.hold_id for h in second.open_holds()] == ["hold_a"]
        with pytest.raises(JournalInUse):
            Journal(path)  # and now holds it in turn
    finally:
        second.close()
    Journal(path).close()


def test_memory_journals_take_no_lock(tmp_path):
    first, second = Journal(None), Journal(None)
    first.close()
    second.close()
    assert list(tmp_path.iterdir()) == []


def test_a_second_process_is_refused_while_the_first_holds_it(tmp_path):
    path = tmp_path / "journal.sqlite"
    first = Journal(path)
    try:
        first.add_hold("hold_a", "esc_a", 5000, 2e9, 1.0)
        refused = open_in_child(path)
        assert refused.returncode == 3, refused.stderr
        assert refused.stdout.strip() == (
            f"The lease journal {path} is in use by another process (pid {os.getpid()}): "
            "run one Space process per journal file, or give this one its own DATA_DIR."
        )
        assert [h.hold_id for h in first.open_holds()] == ["hold_a"]  # the child never touched the database
    finally:
        first.close()
    opened = open_in_child(path)
    assert opened.returncode == 0 and opened.stdout.strip() == "opened", opened.stderr
    again = Journal(path)
    try:
        assert sorted(h.hold_id for h in again.open_holds()) == ["hold_a", "hold_child"]
    finally:
        again.close()


def test_a_killed_holder_does_not_block_the_next_and_its_journal_replays(tmp_path):
    path = tmp_path / "journal.sqlite"
    with subprocess.Popen(child_args(HOLD_UNTIL_KILLED, path), stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline().strip() == "ready"
            with pytest.raises(JournalInUse, match=rf"in use by another process \(pid {holder.pid}\)"):
                Journal(path)
        finally:
            holder.kill()  # SIGKILL: no close()
            holder.wait(10)
    assert holder.returncode == -9
    restarted = Journal(path)
    try:  # what the killed process charged is there for the replay
        [hold] = restarted.open_holds()
        assert (hold.hold_id, hold.uncaptured_micro) == ("hold_live", 1000)
    finally:
        restarted.close()


def test_a_journal_that_fails_to_open_releases_the_lock(tmp_path):
    path = tmp_path / "journal.sqlite"
    path.mkdir()  # SQLite cannot open a folder
    for _ in range(2):  # the second try fails the same way, not with JournalInUse
        with pytest.raises(sqlite3.OperationalError):
            Journal(path)


@pytest.mark.parametrize("why", ["no fcntl nor msvcrt", "a file system without locks"])
def test_without_file_locks_the_journal_opens_and_warns(tmp_path, monkeypatch, caplog, why):
    if why == "no fcntl nor msvcrt":
        monkeypatch.setattr(_journal, "fcntl", None)
        monkeypatch.setattr(_journal, "msvcrt", None)
    else:
        class NoLocks:
            LOCK_EX, LOCK_NB, LOCK_UN = 2, 4, 8

            @staticmethod
            def flock(fd, operation):
                raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

        monkeypatch.setattr(_journal, "fcntl", NoLocks)
    path = tmp_path / "journal.sqlite"
    with caplog.at_level(logging.WARNING, logger="gate"):
        first = Journal(path)
    try:
        assert any("nothing stops a second process" in r.getMessage() for r in caplog.records)
        first.add_hold("hold_a", "esc_a", 5000, 2e9, 1.0)
        assert [h.hold_id for h in first.open_holds()] == ["hold_a"]
    finally:
        first.close()
        first.close()


def test_a_second_gate_on_a_live_journal_is_refused_and_replays_nothing(market, tmp_path):
    """The finding: the second gate's start-up replay must not final-capture the first's live lease."""
    journal = tmp_path / "journal.sqlite"
    first = market.gate(settlement=Lease(journal=journal, capture_interval_s=3600, idle_s=3600))

    @first.paid(PerCall("0.001"), reason="echo")
    def echo(text: str) -> str:
        return text

    escrow_id = market.escrow("1")
    for i in range(3):
        assert echo(str(i), escrow_id) == str(i)
    held = market.balance(escrow_id)["held_usdc"]
    assert held > 0
    with pytest.raises(JournalInUse, match="in use|already open"):
        market.gate(settlement=Lease(journal=journal))
    assert not [p for _, p in market.requests_for(escrow_id) if p.endswith("/capture")]  # no replay
    assert market.balance(escrow_id)["held_usdc"] == held  # the first one's lease is still open
    for i in range(3, 5):
        assert echo(str(i), escrow_id) == str(i)  # and it still charges on it
    first.close()
    balance = market.balance(escrow_id)
    assert balance["spent_usdc"] == Decimal("0.005") and balance["held_usdc"] == 0  # every call paid
