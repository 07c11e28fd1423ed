"""Request records and nonces, and their one owner: the control plane's memory of what it did.

A request record names one command by its request id and the hash of its body: the same id with
the same body is answered with the stored result (`replayed`), with another body it is refused. A
delete's record is written in the same commit as its effect (state `erasing`) and marked `done`
once keys and files are gone, so a rerun of an interrupted delete finishes it before answering. A
signed command's nonce is recorded in the same commit as its effect, so a replay is refused while a
redelivery of a command that never took effect still runs. Both tables are bounded.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from device.core.errors import CommandError
from device.storage.db import Database, iso

SCHEMA = """
CREATE TABLE requests (
    request_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    result TEXT NOT NULL,
    done_at TEXT NOT NULL,
    body_hash TEXT NOT NULL DEFAULT '',   -- the command it names: another body is refused
    state TEXT NOT NULL DEFAULT 'done'    -- erasing (rows gone, keys/files not yet) | done
);
CREATE TABLE nonces (nonce TEXT PRIMARY KEY, seen_at REAL NOT NULL);
"""
MIGRATION_2 = ("ALTER TABLE requests ADD COLUMN body_hash TEXT NOT NULL DEFAULT '';\n"
               "ALTER TABLE requests ADD COLUMN state TEXT NOT NULL DEFAULT 'done';")
MAX_STORED_IDS = 200
"""A request record keeps at most this many ids of its result: it is proof of what was done, bounded."""
MAX_REQUESTS = 2000
REQUEST_MAX_AGE_S = 30 * 86400
"""Request records older than this, or beyond the newest MAX_REQUESTS, are pruned."""
NONCE_KEEP_S = 86400.0
"""Nonces are remembered at least this long (twice the signing window, whichever is longer)."""


class Requests:
    def __init__(self, db: Database) -> None:
        self._db = db

    def result(self, request_id: str, body_hash: str) -> tuple[dict[str, Any], str] | None:
        """The stored result and state (`erasing` | `done`) of this request, or None if it is new.
        The same id with another body raises CommandError("request_id_reused")."""
        row = self._db.one("SELECT result, body_hash, state FROM requests WHERE request_id = ?",
                           (request_id,))
        if row is None:
            return None
        if row[1] and body_hash and row[1] != body_hash:
            raise CommandError("request_id_reused", f"request id {request_id!r} was used for "
                               "another command; use a new request id for each command", request_id)
        return dict(json.loads(row[0])), str(row[2])

    def record(self, request_id: str, kind: str, result: dict[str, Any], body_hash: str) -> None:
        """Remember a request (state `erasing`), joining the caller's transaction; prune old ones."""
        now = datetime.now(UTC)
        bounded = {k: v[:MAX_STORED_IDS] if isinstance(v, list) else v for k, v in result.items()}
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM requests WHERE done_at < ? OR request_id NOT IN (SELECT "
                       "request_id FROM requests ORDER BY done_at DESC LIMIT ?)",
                       (iso(now - timedelta(seconds=REQUEST_MAX_AGE_S)), MAX_REQUESTS - 1))
            tx.execute("INSERT INTO requests (request_id, kind, result, done_at, body_hash, state) "
                       "VALUES (?, ?, ?, ?, ?, 'erasing')",
                       (request_id, kind, json.dumps(bounded), iso(now), body_hash))

    def done(self, request_id: str) -> None:
        with self._db.transaction() as tx:
            tx.execute("UPDATE requests SET state = 'done' WHERE request_id = ?", (request_id,))

    def known(self, request_id: str, body_hash: str) -> bool:
        """Whether this exact command (id and body) was already carried out."""
        row = self._db.one("SELECT body_hash FROM requests WHERE request_id = ?", (request_id,))
        return row is not None and row[0] in (body_hash, "")

    def use_nonce(self, nonce: str) -> None:
        """Record a signed command's nonce, joining the caller's transaction (if any); a nonce
        recorded before raises CommandError("replayed")."""
        now = time.time()
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM nonces WHERE seen_at < ?", (now - 2 * NONCE_KEEP_S,))
            try:
                tx.execute("INSERT INTO nonces (nonce, seen_at) VALUES (?, ?)", (nonce, now))
            except sqlite3.IntegrityError:
                raise CommandError("replayed", "this nonce was already used") from None

    def nonce_used(self, nonce: str) -> bool:
        return self._db.one("SELECT 1 FROM nonces WHERE nonce = ?", (nonce,)) is not None

    def clear(self) -> None:
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM requests")
            tx.execute("DELETE FROM nonces")
