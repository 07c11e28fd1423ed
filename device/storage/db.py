"""One SQLite database file shared by the modules that own its tables: clip_rows (clips),
upload_queue (uploads, remote deletes), requests (request records, nonces), preferences
(settings) and stats (per-day counts). device/storage/index.py opens it.

Each owner runs its own SQL through `transaction()` and `read()`; no raw SQL crosses a module's
public API. Transactions are re-entrant on one thread, so one owner's changes can join another's
(a delete drops the clip rows, queues its remote deletes and records its request in one commit).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from device.core.files import PRIVATE_FILE

BUSY_TIMEOUT_S = 30.0
"""How long a statement waits for another process's lock before SQLite gives up (SQLITE_BUSY)."""
BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
DAMAGE_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
"""What proves a database file unreadable: a bad header or a malformed page. Anything else (a lock,
an I/O error, a permission) says nothing about the file itself."""


def is_busy(exc: BaseException) -> bool:
    """Another connection holds the lock this one needed (after the busy timeout)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    text = str(exc)
    return (code is not None and code & 0xFF in BUSY_CODES) or "locked" in text or "busy" in text


def is_damaged(exc: BaseException) -> bool:
    """SQLite found the file itself broken (SQLITE_CORRUPT, SQLITE_NOTADB)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and code & 0xFF in DAMAGE_CODES


def integrity_problem(db: sqlite3.Connection) -> str | None:
    """PRAGMA quick_check's first complaint, or None when the file is sound."""
    answer = str(db.execute("PRAGMA quick_check").fetchone()[0])
    if answer == "ok":
        return None
    lines = [ln for ln in answer.splitlines() if ln.strip() and not ln.startswith("***")]
    return f"failed its integrity check ({lines[0] if lines else answer})"


def connect(path: Path) -> sqlite3.Connection:
    """Owner-only, synchronous=FULL (a commit is on disk when it returns), secure_delete."""
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE))
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                         timeout=BUSY_TIMEOUT_S)
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA secure_delete=ON")
    return db


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A database that is only read (one set aside): nothing is created or written. The path as a
    proper file URI: a `#` or `?` in a state directory's path would otherwise cut it short, and
    SQLite would open (and create) another file."""
    return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)


class Database:
    """A connection with one lock for every thread of this process."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.conn = db
        self.lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (durable: synchronous=FULL), or ROLLBACK on error. Inside an
        open transaction of the same thread, it joins that one."""
        with self.lock:
            if self.conn.in_transaction:
                yield self.conn
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
                    with contextlib.suppress(sqlite3.Error):  # never mask the error that got here
                        self.conn.execute("ROLLBACK")
                raise

    def read(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        """A read under the lock, without taking SQLite's write lock."""
        with self.lock:
            return self.conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> tuple[Any, ...] | None:
        rows = self.read(sql, params)
        return rows[0] if rows else None

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone()
    return row is not None


def iso(when: datetime) -> str:
    """The one text form of a time in the index: UTC, milliseconds (so text order = time order)."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds")
