"""The clip store: a state directory (0700) with an SQLite index and one WAV file per clip (0600).

A clip is written as: audio to a temp file, fsync, rename, fsync the directory; then its index row
in one transaction with synchronous=FULL. A delete commits the removal of the rows (and the record of
the request that asked for it) first, then removes the files and fsyncs the directory; a crash in
between leaves only files without rows, which are removed at the next open. Nothing here is touched
while the device only listens (P4). One lock serialises the listener's writer and the control plane.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from device import SAMPLE_RATE_HZ
from device.errors import StoreError
from device.files import PRIVATE_FILE, atomic_write, ensure_private_dir, fsync_dir

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE clips (
    id TEXT PRIMARY KEY,
    recorded_at TEXT NOT NULL,
    start_s REAL NOT NULL,
    end_s REAL NOT NULL,
    wake_word TEXT NOT NULL,
    wake_score REAL NOT NULL,
    transcript TEXT,
    sample_rate INTEGER NOT NULL,
    audio_file TEXT NOT NULL
);
CREATE INDEX clips_recorded_at ON clips(recorded_at);
CREATE TABLE requests (
    request_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    result TEXT NOT NULL,
    done_at TEXT NOT NULL
);
CREATE TABLE nonces (nonce TEXT PRIMARY KEY, seen_at REAL NOT NULL);
CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE uploads (
    clip_id TEXT PRIMARY KEY REFERENCES clips(id),
    state TEXT NOT NULL,            -- queued | uploaded | failed
    scope TEXT NOT NULL,            -- what consent covered when the clip was recorded
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE remote_deletes (
    clip_id TEXT PRIMARY KEY,
    request_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0
);
"""
TEMP_SUFFIX = ".tmp"
COLUMNS = ("id", "recorded_at", "start_s", "end_s", "wake_word", "wake_score", "transcript",
           "sample_rate", "audio_file")


@dataclass(frozen=True)
class Clip:
    id: str
    recorded_at: str
    """ISO 8601 UTC wall time at which the clip started."""
    start_s: float
    """Audio seconds since the stream started (the event stream's `t`)."""
    end_s: float
    wake_word: str
    wake_score: float
    transcript: str | None
    sample_rate: int
    audio_file: str

    @property
    def duration_s(self) -> float:
        return round(self.end_s - self.start_s, 4)

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "duration_s": self.duration_s}


class ClipStore:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.clips_dir = state_dir / "clips"
        self._lock = threading.RLock()
        try:
            ensure_private_dir(state_dir)
            ensure_private_dir(self.clips_dir)
            self._db = self._open(state_dir / "index.sqlite")
            self._sweep()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"state directory '{state_dir}' is not usable: {_reason(exc)}; pass --state-dir "
                "or set EDGE_RECORDER_STATE_DIR to a writable directory"
            ) from None

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE))
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        if db.execute("PRAGMA user_version").fetchone()[0] == 0:
            db.executescript(f"BEGIN;\n{SCHEMA}\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")
        return db

    def add(
        self, samples: np.ndarray, start_s: float, end_s: float, wake_word: str,
        wake_score: float, transcript: str | None, recorded_at: datetime | None = None,
        eligible: Callable[[], str | None] | None = None,
    ) -> Clip:
        """Store a clip. `eligible` is asked inside the same transaction what consent covers right
        now (e.g. "audio,transcript"); when it answers, the clip joins the upload queue."""
        clip = Clip(
            id=uuid.uuid4().hex,
            recorded_at=_iso(recorded_at or datetime.now(UTC)),
            start_s=start_s, end_s=end_s, wake_word=wake_word, wake_score=round(wake_score, 4),
            transcript=transcript, sample_rate=SAMPLE_RATE_HZ, audio_file="",
        )
        clip = Clip(**{**asdict(clip), "audio_file": f"{clip.id}.wav"})
        try:
            with self._lock, self._transaction():
                atomic_write(self.clips_dir / clip.audio_file, wav_bytes(samples), suffix=TEMP_SUFFIX)
                self._db.execute(
                    f"INSERT INTO clips ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                    [getattr(clip, c) for c in COLUMNS],
                )
                if eligible is not None and (scope := eligible()):
                    self._db.execute("INSERT INTO uploads (clip_id, state, scope) VALUES (?, 'queued', ?)",
                                     (clip.id, scope))
        except (OSError, sqlite3.Error) as exc:
            (self.clips_dir / clip.audio_file).unlink(missing_ok=True)
            raise StoreError(f"could not store clip in '{self.state_dir}': {_reason(exc)}") from None
        return clip

    def all(self) -> list[Clip]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM clips ORDER BY recorded_at")
            return [Clip(*row) for row in rows]

    def get(self, clip_id: str) -> Clip:
        with self._lock:
            row = self._db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM clips WHERE id = ?", (clip_id,)
            ).fetchone()
        if row is None:
            raise StoreError(f"no clip with id {clip_id!r}; `edge-recorder clips list` shows them")
        return Clip(*row)

    def audio_path(self, clip: Clip) -> Path:
        return self.clips_dir / clip.audio_file

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM clips").fetchone()[0])

    # -- deleting -------------------------------------------------------------------------------
    def delete(
        self, ids: list[str] | None = None, since: datetime | None = None,
        until: datetime | None = None, everything: bool = False, request_id: str | None = None,
    ) -> dict[str, Any]:
        """Delete the clips selected by ids, a recorded_at range [since, until), or everything.

        Durable when it returns: rows and the request record are committed (fsynced), files are
        removed and the directory fsynced. A request_id seen before returns its first result and
        deletes nothing new. Returns {"ids": deleted, "not_found": [...], "replayed": bool}.
        """
        with self._lock:
            with self._transaction():
                if request_id and (done := self._request_result(request_id)) is not None:
                    return {**done, "replayed": True}
                found = self._select(ids, since, until, everything)
                uploaded = self._uploaded_among([c.id for c in found])
                self._db.executemany(
                    "INSERT OR IGNORE INTO remote_deletes (clip_id, request_id) VALUES (?, ?)",
                    [(cid, request_id) for cid in uploaded])
                self._db.executemany("DELETE FROM uploads WHERE clip_id = ?", [(c.id,) for c in found])
                self._db.executemany("DELETE FROM clips WHERE id = ?", [(c.id,) for c in found])
                result = {"ids": [c.id for c in found],
                          "not_found": [i for i in ids or [] if i not in {c.id for c in found}],
                          "remote_pending": uploaded}
                if request_id:
                    self._record_request(request_id, "delete", result)
            self._remove_files([self.clips_dir / c.audio_file for c in found if c.audio_file])
        return {**result, "replayed": False}

    def forget_local_copy(self, clip_id: str) -> None:
        """After a confirmed upload with keep_local off: drop the audio and transcript here, keep
        the row (marked uploaded) so that a later delete can still reach the remote copy."""
        with self._lock:
            clip = self.get(clip_id)
            with self._transaction():
                self._db.execute("UPDATE clips SET audio_file = '', transcript = NULL WHERE id = ?",
                                 (clip_id,))
            self._remove_files([self.clips_dir / clip.audio_file])

    def _uploaded_among(self, ids: list[str]) -> list[str]:
        return [i for i in ids if self._db.execute(
            "SELECT 1 FROM uploads WHERE clip_id = ? AND state = 'uploaded'", (i,)).fetchone()]

    def _select(self, ids: list[str] | None, since: datetime | None, until: datetime | None,
                everything: bool) -> list[Clip]:
        cols = ", ".join(COLUMNS)
        if everything:
            rows = self._db.execute(f"SELECT {cols} FROM clips").fetchall()
        elif ids is not None:
            rows = [r for i in dict.fromkeys(ids) for r in
                    self._db.execute(f"SELECT {cols} FROM clips WHERE id = ?", (i,))]
        else:
            lo = _iso(since) if since else ""
            hi = _iso(until) if until else "9999"
            rows = self._db.execute(
                f"SELECT {cols} FROM clips WHERE recorded_at >= ? AND recorded_at < ?", (lo, hi)
            ).fetchall()
        return [Clip(*r) for r in rows]

    def _remove_files(self, paths: list[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)
        if paths:
            fsync_dir(self.clips_dir)

    # -- requests, nonces, settings ---------------------------------------------------------------
    def _request_result(self, request_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT result FROM requests WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def _record_request(self, request_id: str, kind: str, result: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO requests (request_id, kind, result, done_at) VALUES (?, ?, ?, ?)",
            (request_id, kind, json.dumps(result), _iso(datetime.now(UTC))),
        )

    def request_result(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._request_result(request_id)

    def remember_request(self, request_id: str, kind: str, result: dict[str, Any]) -> None:
        with self._lock, self._transaction():
            self._record_request(request_id, kind, result)

    def use_nonce(self, nonce: str, window_s: float) -> bool:
        """Record a nonce; False if it was already used within the window (a replay)."""
        now = time.time()
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM nonces WHERE seen_at < ?", (now - 2 * window_s,))
            try:
                self._db.execute("INSERT INTO nonces (nonce, seen_at) VALUES (?, ?)", (nonce, now))
            except sqlite3.IntegrityError:
                return False
        return True

    def setting(self, name: str, default: str) -> str:
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return default if row is None else str(row[0])

    def set_setting(self, name: str, value: str) -> None:
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT INTO settings (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))

    # -- housekeeping ---------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """For the upload queue: the lock and one durable transaction on the index."""
        with self._lock, self._transaction():
            yield self._db

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT (fsynced: synchronous=FULL), or ROLLBACK on error."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _sweep(self) -> None:
        """Finish what a crash interrupted: files without rows (and temp files) are removed,
        rows without files are dropped. Writes nothing when there is nothing to repair."""
        known = {r[0] for r in self._db.execute("SELECT audio_file FROM clips WHERE audio_file != ''")}
        on_disk = {p.name for p in self.clips_dir.iterdir()}
        strays = [self.clips_dir / n for n in on_disk - known]
        if strays:
            log.warning("removing %d clip file(s) left by an interrupted write or delete", len(strays))
            self._remove_files(strays)
        lost = known - on_disk
        if lost:
            log.warning("dropping %d index row(s) whose audio file is missing", len(lost))
            with self._transaction():
                self._db.executemany("DELETE FROM clips WHERE audio_file = ?", [(n,) for n in lost])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _iso(when: datetime) -> str:
    """The one text form of a time in the index: UTC, milliseconds (so text order = time order)."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds")


def wav_bytes(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE_HZ)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return str(exc)
