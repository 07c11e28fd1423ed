"""The upload queue: the one owner of the `uploads` and `remote_deletes` tables.

A clip joins the queue in the same transaction that stores it (only if consent covered it then);
deletes and consent revokes leave it in the same transaction that removes the clip or the consent.
Uploads, deletes and revokes meet here: a clip whose upload is on the wire (`sending`) when it is
deleted or consent is revoked may already be on the server, so a remote delete is queued for it as
for an uploaded clip; if the upload then completes, nothing is lost, and if it fails, the server
answers the DELETE with 404, which also confirms it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device.storage.db import Database, connect_read_only, has_table

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE uploads (
    clip_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,            -- queued | sending | uploaded | failed
    scope TEXT NOT NULL,            -- what consent covered when the clip was recorded
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    recorded_at REAL NOT NULL DEFAULT 0, -- unix time: the hold window counts from here
    maybe_sent INTEGER NOT NULL DEFAULT 0 -- 1 once a request with it went out: the server may hold it
);
CREATE TABLE remote_deletes (
    clip_id TEXT PRIMARY KEY,
    request_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0
);
"""
MIGRATION_3 = "ALTER TABLE uploads ADD COLUMN recorded_at REAL NOT NULL DEFAULT 0;\n"
MIGRATION_4 = ("ALTER TABLE uploads ADD COLUMN maybe_sent INTEGER NOT NULL DEFAULT 0;\n"
               "UPDATE uploads SET maybe_sent = 1 WHERE attempts > 0 OR state <> 'queued';")
"""Uploads tried before this column existed may be on the server: counted as sent."""
SENT_SCHEMA = """CREATE TABLE sent (
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,               -- unix time the request went out
    kind TEXT NOT NULL,             -- upload | remote_delete
    clip_id TEXT NOT NULL,
    host TEXT NOT NULL,             -- where to: the host (and port) of upload.url
    metadata TEXT,                  -- an upload's metadata JSON as sent (a transcript: its length)
    answer TEXT NOT NULL            -- the server's answer (HTTP 201 ...) or why there was none
);"""
"""What left the device: one row per request that went out, kept after its clip is deleted (it
holds no audio and no transcript), so the owner can see where each recording went."""
SCHEMA += SENT_SCHEMA
MIGRATION_5 = SENT_SCHEMA.replace("CREATE TABLE sent", "CREATE TABLE IF NOT EXISTS sent")
"""Idempotent: an index rolled back by hand to an older version may already hold the table."""
MAX_SENT_ROWS = 10_000
"""The log keeps the newest this many requests."""
UPLOAD, REMOTE_DELETE = "upload", "remote_delete"
TABLES = {UPLOAD: "uploads", REMOTE_DELETE: "remote_deletes"}
MAYBE_ON_SERVER = "state IN ('uploaded', 'sending') OR maybe_sent = 1"
"""A copy is, or may be, on the server: uploaded; on the wire; or sent before and then timed out
(retried later, or failed for good) after the server may have stored it."""


class UploadQueue:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._changed = threading.Event()
        """Set when work was queued, so a waiting uploader starts at once."""

    # -- joined to the caller's transaction -------------------------------------------------------
    def enqueue(self, clip_id: str, scope: str, recorded_at: float = 0.0) -> None:
        """Queue an upload; it is held until `recorded_at` + the uploader's hold window (P6)."""
        with self._db.transaction() as tx:
            tx.execute("INSERT INTO uploads (clip_id, state, scope, recorded_at) "
                       "VALUES (?, 'queued', ?, ?)", (clip_id, scope, recorded_at))
        self._changed.set()

    def forget(self, clip_ids: list[str], request_id: str | None, remote: bool = True) -> list[str]:
        """The clips are being deleted: drop their uploads and (with `remote`) queue a remote
        delete for each copy that is, or may be, on the server. Returns the remote deletes queued."""
        with self._db.transaction() as tx:
            remote_ids = [cid for cid in clip_ids if remote and tx.execute(
                f"SELECT 1 FROM uploads WHERE clip_id = ? AND ({MAYBE_ON_SERVER})", (cid,)
            ).fetchone()]
            tx.executemany("INSERT OR IGNORE INTO remote_deletes (clip_id, request_id) VALUES (?, ?)",
                           [(cid, request_id) for cid in remote_ids])
            tx.executemany("DELETE FROM uploads WHERE clip_id = ?", [(c,) for c in clip_ids])
        if remote_ids:
            self._changed.set()
        return remote_ids

    def withdraw(self) -> tuple[list[str], list[str]]:
        """Consent was revoked: every waiting upload is purged, and one that is, or may be, on the
        server (on the wire now, or tried before and waiting to be retried) gets a remote delete.
        Returns (purged, remote deletes queued)."""
        waiting = "state IN ('queued', 'sending')"
        with self._db.transaction() as tx:
            maybe = [r[0] for r in tx.execute(
                f"SELECT clip_id FROM uploads WHERE {waiting} AND ({MAYBE_ON_SERVER})")]
            never = [r[0] for r in tx.execute(
                f"SELECT clip_id FROM uploads WHERE {waiting} AND NOT ({MAYBE_ON_SERVER})")]
            tx.executemany("INSERT OR IGNORE INTO remote_deletes (clip_id) VALUES (?)",
                           [(cid,) for cid in maybe])
            tx.execute(f"DELETE FROM uploads WHERE {waiting}")
        if maybe:
            self._changed.set()
        return never, maybe

    def clear(self) -> None:
        """Everything is being wiped: uploads and the log of what was sent go; remote deletes the
        owner was told are pending stay (they hold no audio)."""
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM uploads")
            tx.execute("DELETE FROM sent")

    def salvage_remote_deletes(self, old_index: Path) -> int:
        """After a rebuild: carry over the remote deletes the owner was told are pending, from
        the old index if it can still be read (they hold no audio). Returns how many."""
        if not old_index.exists():
            return 0
        try:
            old = connect_read_only(old_index)
            try:
                rows = old.execute("SELECT clip_id, request_id FROM remote_deletes").fetchall() \
                    if has_table(old, "remote_deletes") else []
            finally:
                old.close()
        except sqlite3.DatabaseError as exc:
            log.error("pending remote deletes could not be carried over from the old index (%s)",
                      exc)
            return 0
        with self._db.transaction() as tx:
            tx.executemany("INSERT OR IGNORE INTO remote_deletes (clip_id, request_id) VALUES (?, ?)",
                           rows)
        return len(rows)

    # -- the uploader's side ------------------------------------------------------------------------
    def recover(self) -> None:
        """At start (of the store alone, or of the uploader): an upload that was on the wire when
        the process died is sent again (the server drops the repeat by its Idempotency-Key)."""
        if self._db.one("SELECT 1 FROM uploads WHERE state = 'sending'"):  # else: write nothing
            with self._db.transaction() as tx:
                tx.execute("UPDATE uploads SET state = 'queued' WHERE state = 'sending'")

    def claim(self, busy: set[str], hold_s: float = 0.0) -> tuple[str, str] | None:
        """The next due job not in `busy`: a remote delete first, then an upload recorded at least
        `hold_s` ago, which is marked `sending`. Looking takes no write lock."""
        now = time.time()
        with self._db.lock:
            for kind, where, params in (
                (REMOTE_DELETE, "", (now,)),
                (UPLOAD, "state = 'queued' AND recorded_at <= ? AND ", (now - hold_s, now)),
            ):
                for (cid,) in self._db.read(
                    f"SELECT clip_id FROM {TABLES[kind]} WHERE {where}next_at <= ? ORDER BY next_at",
                    params,
                ):
                    if cid in busy or (kind == UPLOAD and not self._mark_sending(cid)):
                        continue
                    return kind, cid
        return None

    def _mark_sending(self, clip_id: str) -> bool:
        with self._db.transaction() as tx:
            return bool(tx.execute("UPDATE uploads SET state = 'sending', maybe_sent = 1 "
                                   "WHERE clip_id = ? AND state = 'queued'", (clip_id,)).rowcount)

    def wait(self, timeout_s: float) -> None:
        self._changed.wait(timeout_s)
        self._changed.clear()

    def wake(self) -> None:
        self._changed.set()

    def scope(self, clip_id: str) -> set[str] | None:
        """The scope recorded with a clip still waiting or on the wire, or None."""
        row = self._db.one("SELECT scope FROM uploads WHERE clip_id = ? AND state IN ('queued', "
                           "'sending')", (clip_id,))
        return set(row[0].split(",")) if row else None

    def retry_later(self, kind: str, clip_id: str, delay_for: Callable[[int], float]) -> int:
        """Count a failed attempt and schedule the next after `delay_for(attempts)` seconds."""
        table = TABLES[kind]
        with self._db.transaction() as tx:
            tx.execute(f"UPDATE {table} SET attempts = attempts + 1 WHERE clip_id = ?", (clip_id,))
            row = tx.execute(f"SELECT attempts FROM {table} WHERE clip_id = ?", (clip_id,)).fetchone()
            attempts = int(row[0]) if row else 0
            tx.execute(f"UPDATE {table} SET next_at = ? WHERE clip_id = ?",
                       (time.time() + delay_for(attempts), clip_id))
            if kind == UPLOAD:
                tx.execute("UPDATE uploads SET state = 'queued' WHERE clip_id = ? AND state = 'sending'",
                           (clip_id,))
        return attempts

    def uploaded(self, clip_id: str) -> bool:
        """The server accepted the clip. False if the clip was deleted (or consent revoked) while
        it was on the wire: its remote delete is then pending."""
        with self._db.transaction() as tx:
            done = tx.execute("UPDATE uploads SET state = 'uploaded', last_error = NULL "
                              "WHERE clip_id = ? AND state = 'sending'", (clip_id,)).rowcount
            if not done:
                tx.execute("INSERT OR IGNORE INTO remote_deletes (clip_id) VALUES (?)", (clip_id,))
        return bool(done)

    def withhold(self, clip_id: str) -> None:
        """Consent no longer covers the clip: it leaves the queue."""
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM uploads WHERE clip_id = ? AND state IN ('queued', 'sending')",
                       (clip_id,))

    def failed(self, clip_id: str, reason: str) -> None:
        with self._db.transaction() as tx:
            tx.execute("UPDATE uploads SET state = 'failed', last_error = ? WHERE clip_id = ?",
                       (reason, clip_id))

    def remote_deleted(self, clip_id: str) -> str | None:
        """The server confirmed a remote delete. Returns the request id that asked for it."""
        with self._db.transaction() as tx:
            row = tx.execute("SELECT request_id FROM remote_deletes WHERE clip_id = ?",
                             (clip_id,)).fetchone()
            tx.execute("DELETE FROM remote_deletes WHERE clip_id = ?", (clip_id,))
        return row[0] if row else None

    def requeue(self, clip_ids: list[str] | None = None) -> list[str]:
        """Failed uploads (all, or those named) are tried again from the start."""
        with self._db.transaction() as tx:
            failed = [r[0] for r in tx.execute("SELECT clip_id FROM uploads WHERE state = 'failed'")
                      if clip_ids is None or r[0] in clip_ids]
            tx.executemany("UPDATE uploads SET state = 'queued', attempts = 0, next_at = 0, "
                           "last_error = NULL WHERE clip_id = ?", [(c,) for c in failed])
        if failed:
            self._changed.set()
        return failed

    def summary(self) -> list[dict[str, object]]:
        """Every upload and remote delete, for `edge-recorder uploads list`."""
        rows = self._db.read("SELECT clip_id, state, attempts, next_at, last_error FROM uploads "
                             "ORDER BY clip_id")
        remote = self._db.read("SELECT clip_id, attempts, next_at FROM remote_deletes ORDER BY clip_id")
        return ([{"id": c, "state": st, "attempts": a, "next_at": n, "last_error": e}
                 for c, st, a, n, e in rows]
                + [{"id": c, "state": "remote_delete_pending", "attempts": a, "next_at": n,
                    "last_error": None} for c, a, n in remote])

    def record_sent(self, kind: str, clip_id: str, host: str, answer: str,
                    metadata: dict[str, Any] | None = None) -> None:
        """A request went out (or was attempted): log it for "what left this device". A transcript
        in the metadata is logged as its length only: the log outlives the clip and its key."""
        meta = None
        if metadata is not None:
            shown = dict(metadata)
            if isinstance(shown.get("transcript"), str):
                shown["transcript"] = f"[{len(shown['transcript'])} characters]"
            meta = json.dumps(shown, ensure_ascii=False)
        with self._db.transaction() as tx:
            tx.execute("INSERT INTO sent (at, kind, clip_id, host, metadata, answer) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (time.time(), kind, clip_id, host, meta, answer))
            tx.execute("DELETE FROM sent WHERE seq <= (SELECT MAX(seq) FROM sent) - ?",
                       (MAX_SENT_ROWS,))

    def sent_log(self, limit: int = 1000) -> list[dict[str, Any]]:
        """What left the device, newest first: {"at", "kind", "clip_id", "host", "metadata",
        "answer"}; plus, as "pending", the remote deletes not confirmed yet."""
        rows = self._db.read("SELECT at, kind, clip_id, host, metadata, answer FROM sent "
                             "ORDER BY seq DESC LIMIT ?", (limit,))
        return [{"at": at, "kind": kind, "clip_id": cid, "host": host,
                 "metadata": json.loads(meta) if meta else None, "answer": answer}
                for at, kind, cid, host, meta, answer in rows]

    def clip_states(self, hold_s: float) -> dict[str, str]:
        """Each clip id the queue knows, with where its copy stands: held (inside the hold
        window), queued, sending, uploaded, failed, remote_delete_pending or remote_deleted (the
        server confirmed). A clip not named here never left the device."""
        now = time.time()
        states = {cid: "remote_deleted" for (cid,) in self._db.read(
            "SELECT DISTINCT clip_id FROM sent WHERE kind = ? AND (answer LIKE 'HTTP 2%' OR "
            "answer LIKE 'HTTP 404%')", (REMOTE_DELETE,))}
        for cid, state, recorded_at in self._db.read(
                "SELECT clip_id, state, recorded_at FROM uploads"):
            states[cid] = "held" if state == "queued" and recorded_at > now - hold_s else state
        states.update({cid: "remote_delete_pending" for cid in self.pending_remote()})
        return states

    # -- status -------------------------------------------------------------------------------------
    def held(self, hold_s: float) -> int:
        """Uploads still inside their hold window."""
        row = self._db.one("SELECT COUNT(*) FROM uploads WHERE state = 'queued' AND recorded_at > ?",
                           (time.time() - hold_s,))
        return int(row[0]) if row else 0

    def waiting(self) -> int:
        row = self._db.one("SELECT COUNT(*) FROM uploads WHERE state IN ('queued', 'sending')")
        return int(row[0]) if row else 0

    def pending_remote(self) -> list[str]:
        return [r[0] for r in self._db.read("SELECT clip_id FROM remote_deletes ORDER BY clip_id")]
