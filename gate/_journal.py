"""The lease settlement's durable journal: an outbox of local charges and capture intents.

SQLite in WAL mode, one connection guarded by a lock, every write its own small
transaction. Three tables (amounts in integer micro-USDC, times in the gate's
clock, epoch seconds)::

    holds    (hold_id PK, escrow_id, amount_micro, expires_at, status 'open'|'closed', opened_at)
    charges  (charge_id PK, hold_id, escrow_id, amount_micro, created_at, capture_key NULL|key)
    captures (seq PK autoinc, key UNIQUE, hold_id, escrow_id, amount_micro, final 0|1,
              status 'pending'|'done'|'lost', created_at)

A charge is written (and committed) before the paid call's result is returned.
A capture is first an intent: one transaction inserts it and assigns it every
charge of its hold not yet assigned (``capture_key``), so the intent's amount is
exactly the sum of its charges; it is then sent with its own Idempotency-Key and
marked ``done`` (or ``lost`` when the hold had closed). A pending intent is
re-sent with the SAME key after a crash: the escrow service replays its stored
answer instead of applying it twice.

``synchronous``: ``NORMAL`` (the default) makes a commit durable across a crash
of the process (the WAL is written before ``COMMIT`` returns) but not across a
power loss or kernel crash; ``FULL`` also fsyncs every commit (several times
slower per charge). A path of ``None`` keeps the journal in memory: the same
logic, nothing survives the process.

One process per journal file: a journal with a path takes an exclusive OS lock
(``flock``) on ``<path>.lock`` before it opens the database and keeps it until
``close()``. A second ``Journal`` on the same path, in another process or in this
one, is refused with :class:`JournalInUse` instead of replaying the first one's
live leases (its start-up replay would final-capture them while the first keeps
charging on them, and those charges would never be paid). The OS drops the lock
when its holder dies, however it dies, so a restart after a crash replays as
before. Where the platform has neither ``fcntl`` nor ``msvcrt`` the journal opens
without a lock and logs a warning.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None
try:
    import msvcrt
except ImportError:  # not Windows
    msvcrt = None

__all__ = ["CaptureIntent", "Journal", "JournalInUse"]

log = logging.getLogger("gate")

#: Windows locks a byte range and nobody else may read it: lock a byte far past the pid text.
_WINDOWS_LOCK_OFFSET = 1 << 20
#: flock's answers where the file system cannot lock at all (some network file systems).
_NO_LOCKS_HERE = {
    getattr(errno, name) for name in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS") if hasattr(errno, name)
}


class JournalInUse(RuntimeError):
    """Another live Journal (another process, or another gate in this one) holds this journal file."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS holds (
    hold_id TEXT PRIMARY KEY,
    escrow_id TEXT NOT NULL,
    amount_micro INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    opened_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    charge_id TEXT PRIMARY KEY,
    hold_id TEXT NOT NULL,
    escrow_id TEXT NOT NULL,
    amount_micro INTEGER NOT NULL CHECK (amount_micro > 0),
    created_at REAL NOT NULL,
    capture_key TEXT
);
CREATE INDEX IF NOT EXISTS charges_uncaptured ON charges (hold_id) WHERE capture_key IS NULL;
CREATE TABLE IF NOT EXISTS captures (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    hold_id TEXT NOT NULL,
    escrow_id TEXT NOT NULL,
    amount_micro INTEGER NOT NULL CHECK (amount_micro >= 0),
    final INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS captures_pending ON captures (status) WHERE status = 'pending';
"""


@dataclass(frozen=True)
class CaptureIntent:
    seq: int
    key: str
    hold_id: str
    escrow_id: str
    amount_micro: int
    final: bool


@dataclass(frozen=True)
class JournalHold:
    hold_id: str
    escrow_id: str
    amount_micro: int
    expires_at: float
    uncaptured_micro: int


class Journal:
    """Thread-safe; every method is one short transaction.

    With a path, the journal file is this object's alone until ``close()`` (see the module
    docstring): opening it again while it is open raises :class:`JournalInUse`.
    """

    def __init__(self, path: str | Path | None, *, synchronous: str = "NORMAL"):
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be 'NORMAL' or 'FULL'")
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._closed = False
        self._lock_fd: int | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock_journal(self.path)  # before the database is opened, let alone replayed
        try:
            self._db = sqlite3.connect(
                ":memory:" if self.path is None else str(self.path), isolation_level=None, check_same_thread=False
            )
            try:
                with self._lock:
                    if self.path is not None:
                        self._db.execute("PRAGMA journal_mode=WAL")
                    self._db.execute(f"PRAGMA synchronous={synchronous}")
                    self._db.execute("PRAGMA busy_timeout=5000")
                    self._db.executescript(_SCHEMA)
            except BaseException:
                self._db.close()
                raise
        except BaseException:
            _unlock_journal(self._lock_fd)
            self._lock_fd = None
            raise

    @property
    def durable(self) -> bool:
        return self.path is not None

    # -- writes -------------------------------------------------------------------------

    def add_hold(self, hold_id: str, escrow_id: str, amount_micro: int, expires_at: float, now: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO holds (hold_id, escrow_id, amount_micro, expires_at, opened_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (hold_id, escrow_id, amount_micro, expires_at, now),
            )

    def add_charge(self, charge_id: str, hold_id: str, escrow_id: str, amount_micro: int, now: float) -> None:
        """The hot path's one insert (autocommit: one transaction)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO charges (charge_id, hold_id, escrow_id, amount_micro, created_at) VALUES (?, ?, ?, ?, ?)",
                (charge_id, hold_id, escrow_id, amount_micro, now),
            )

    def add_intent(self, key: str, hold_id: str, escrow_id: str, final: bool, now: float) -> CaptureIntent:
        """Assign every unassigned charge of the hold to a new capture intent; its amount is their sum."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "UPDATE charges SET capture_key = ? WHERE hold_id = ? AND capture_key IS NULL", (key, hold_id)
                )
                (amount,) = db.execute(
                    "SELECT COALESCE(SUM(amount_micro), 0) FROM charges WHERE capture_key = ?", (key,)
                ).fetchone()
                cursor = db.execute(
                    "INSERT INTO captures (key, hold_id, escrow_id, amount_micro, final, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (key, hold_id, escrow_id, amount, int(final), now),
                )
                if final:
                    db.execute("UPDATE holds SET status = 'closed' WHERE hold_id = ?", (hold_id,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return CaptureIntent(cursor.lastrowid, key, hold_id, escrow_id, amount, final)

    def finish_intent(self, key: str, status: str) -> None:
        """``done`` (the service applied it) or ``lost`` (the hold had closed: its charges are not paid)."""
        if status not in ("done", "lost"):
            raise ValueError(status)
        with self._lock:
            self._db.execute("UPDATE captures SET status = ? WHERE key = ? AND status = 'pending'", (status, key))

    def close_hold(self, hold_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE holds SET status = 'closed' WHERE hold_id = ?", (hold_id,))

    def prune(self, before: float) -> None:
        """Forget settled history older than ``before`` (closed holds with nothing pending)."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                old = (
                    "SELECT hold_id FROM holds WHERE status = 'closed' AND opened_at < ? AND hold_id NOT IN"
                    " (SELECT hold_id FROM captures WHERE status = 'pending') AND hold_id NOT IN"
                    " (SELECT hold_id FROM charges WHERE capture_key IS NULL)"
                )
                for table in ("charges", "captures"):
                    db.execute(f"DELETE FROM {table} WHERE hold_id IN ({old})", (before,))
                db.execute(f"DELETE FROM holds WHERE hold_id IN ({old})", (before,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # -- reads --------------------------------------------------------------------------

    def pending_intents(self) -> list[CaptureIntent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, key, hold_id, escrow_id, amount_micro, final FROM captures"
                " WHERE status = 'pending' ORDER BY seq"
            ).fetchall()
        return [CaptureIntent(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    def open_holds(self) -> list[JournalHold]:
        """Holds not yet closed by a final intent, with what is charged on them but not yet in an intent."""
        with self._lock:
            rows = self._db.execute(
                "SELECT h.hold_id, h.escrow_id, h.amount_micro, h.expires_at,"
                " (SELECT COALESCE(SUM(c.amount_micro), 0) FROM charges c"
                "   WHERE c.hold_id = h.hold_id AND c.capture_key IS NULL)"
                " FROM holds h WHERE h.status = 'open' ORDER BY h.opened_at"
            ).fetchall()
        return [JournalHold(*row) for row in rows]

    def totals(self) -> dict[str, int]:
        """Micro-USDC by state, for logs and tests: charged, captured (done), pending, lost, unassigned."""
        with self._lock:
            db = self._db
            charged = db.execute("SELECT COALESCE(SUM(amount_micro), 0) FROM charges").fetchone()[0]
            by_status = dict(
                db.execute("SELECT status, COALESCE(SUM(amount_micro), 0) FROM captures GROUP BY status").fetchall()
            )
            unassigned = db.execute(
                "SELECT COALESCE(SUM(amount_micro), 0) FROM charges WHERE capture_key IS NULL"
            ).fetchone()[0]
        return {
            "charged": charged,
            "captured": by_status.get("done", 0),
            "pending": by_status.get("pending", 0),
            "lost": by_status.get("lost", 0),
            "unassigned": unassigned,
        }

    def close(self) -> None:
        """Close the database, then release the journal file to the next process (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.close()
            finally:
                _unlock_journal(self._lock_fd)
                self._lock_fd = None


# -- one process per journal file ----------------------------------------------------------


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _lock_journal(path: Path) -> int | None:
    """Take the journal's lock file: its open descriptor, None where this platform cannot lock.

    Raises JournalInUse when another open Journal holds it.
    """
    lock_path = _lock_path(path)
    if fcntl is None and msvcrt is None:
        log.warning(
            "this platform has no file locks: nothing stops a second process from opening the lease journal %s",
            path,
        )
        return None
    # Not inherited by programs this process starts (PEP 446); a fork() without exec shares it.
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600)
    try:
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            if exc.errno in _NO_LOCKS_HERE:
                log.warning(
                    "the file system of %s has no file locks (%s): nothing stops a second process from opening "
                    "this lease journal", path, exc.strerror,
                )
                os.close(fd)
                return None
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
                raise
            raise JournalInUse(_in_use_message(path, _holder_pid(lock_path))) from None
        # Ours: say who holds it, for the message a second process shows (best-effort).
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            if fcntl is not None:
                os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".ljust(24).encode())  # padded: covers a longer pid left there
        except OSError:
            pass
        return fd
    except BaseException:
        os.close(fd)
        raise


def _unlock_journal(fd: int | None) -> None:
    """Release the lock taken by _lock_journal (closing the descriptor releases it too)."""
    if fd is None:
        return
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        elif msvcrt is not None:
            os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    except OSError:
        pass
    finally:
        os.close(fd)


def _holder_pid(lock_path: Path) -> int | None:
    """The pid the lock's holder wrote into the lock file, if it can be read (it may not be written yet)."""
    try:
        with open(lock_path, "rb") as file:
            text = file.read(32).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _in_use_message(path: Path, pid: int | None) -> str:
    if pid is not None and pid == os.getpid():
        return (
            f"The lease journal {path} is already open in this process (pid {pid}): close the gate "
            "that uses it first, or give this one its own journal file."
        )
    holder = "another process" if pid is None else f"another process (pid {pid})"
    return (
        f"The lease journal {path} is in use by {holder}: run one Space process per journal file, "
        "or give this one its own DATA_DIR."
    )

