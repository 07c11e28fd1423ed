"""The clip store: a state directory (0700) holding, all owner-only (0600):
- clips/<id>.clip: the audio and metadata, AES-256-GCM encrypted with a key of the clip's own;
- keys.sqlite: the per-clip keys (secure_delete: freed pages are zeroed);
- index.sqlite: the index (secure_delete), with transcripts encrypted under the clip's key.

Adding: encrypted file (temp, fsync, rename, fsync dir), then its key, then its index row, each
committed with synchronous=FULL. Deleting: index rows and the request record first, then the keys
(crypto-erase: from here no copy of the file can be read), then the files. A crash between steps
leaves only pieces without an index row, which the next open removes. A corrupt index is moved aside
and rebuilt from the clip files and the key store. Nothing is touched while the device only listens
(P4). One lock serialises the listener's writer, the control plane and the uploader.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import io
import json
import logging
import os
import sqlite3
import time
import uuid
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from device import SAMPLE_RATE_HZ
from device.core.errors import CommandError, StoreBusy, StoreError, describe
from device.core.files import PRIVATE_FILE, atomic_write, ensure_private_dir, fsync_dir
from device.storage import crypto, db, upload_queue
from device.storage.db import Database, connect, integrity_problem, is_busy, is_damaged
from device.storage.keystore import KeyStore
from device.storage.quarantine import INDEX_SET_ASIDE, Quarantine
from device.storage.upload_queue import UploadQueue

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
STATS_SCHEMA = """CREATE TABLE stats (
    day TEXT NOT NULL,               -- local date
    name TEXT NOT NULL,              -- wakes, kept, rejected, discarded_<reason>
    count INTEGER NOT NULL,
    PRIMARY KEY (day, name)
);"""
MIGRATIONS = {
    2: "ALTER TABLE requests ADD COLUMN body_hash TEXT NOT NULL DEFAULT '';\n"
       "ALTER TABLE requests ADD COLUMN state TEXT NOT NULL DEFAULT 'done';",
    3: STATS_SCHEMA + "\nALTER TABLE uploads ADD COLUMN recorded_at REAL NOT NULL DEFAULT 0;",
    4: upload_queue.MIGRATION_4,
}
"""From version N-1 to N: run by the first process that opens an older index."""
MAX_STORED_IDS = 200
"""A request record keeps at most this many ids of its result: it is proof of what was done, bounded."""
MAX_REQUESTS = 2000
REQUEST_MAX_AGE_S = 30 * 86400
"""Request records older than this, or beyond the newest MAX_REQUESTS, are pruned."""
NONCE_KEEP_S = 86400.0
"""Nonces are remembered at least this long (twice the signing window, whichever is longer)."""
RESERVE_FILE = ".reserve"
RESERVE_BYTES = 512 << 10
"""Space held back so that a delete (SQLite journals, key rotation) still works on a full disk."""
SCHEMA = """
CREATE TABLE clips (
    id TEXT PRIMARY KEY,
    recorded_at TEXT NOT NULL,
    start_s REAL NOT NULL,
    end_s REAL NOT NULL,
    wake_word TEXT NOT NULL,
    wake_score REAL NOT NULL,
    transcript BLOB,                -- encrypted with the clip's key
    sample_rate INTEGER NOT NULL,
    audio_file TEXT NOT NULL
);
CREATE INDEX clips_recorded_at ON clips(recorded_at);
CREATE TABLE requests (
    request_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    result TEXT NOT NULL,
    done_at TEXT NOT NULL,
    body_hash TEXT NOT NULL DEFAULT '',   -- the command it names: another body is refused
    state TEXT NOT NULL DEFAULT 'done'    -- erasing (rows gone, keys/files not yet) | done
);
CREATE TABLE nonces (nonce TEXT PRIMARY KEY, seen_at REAL NOT NULL);
CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
SCHEMA += upload_queue.SCHEMA + STATS_SCHEMA
TEMP_SUFFIX = ".tmp"
LOCK_FILE = ".lock"
CLIP_SUFFIX = ".clip"
WAKE_FEATURES = "wake_features"
META_FIELDS = ("id", "recorded_at", "start_s", "end_s", "wake_word", "wake_score", "transcript",
               "sample_rate")
"""What a clip file's authenticated header carries: enough to rebuild its index row."""
COLUMNS = ("id", "recorded_at", "start_s", "end_s", "wake_word", "wake_score", "transcript",
           "sample_rate", "audio_file")


class Unreadable(Exception):
    """The index is proven unreadable: missing beside clip files, or it fails its integrity check."""


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
    """The one owner of clips, their keys, request records, nonces and settings. The upload queue
    (`self.uploads`) owns its tables in the same index, so deletes and uploads meet in one commit."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.clips_dir = state_dir / "clips"
        self.quarantine = Quarantine(state_dir)
        self._lockfile = -1
        try:
            refuse_foreign_dir(state_dir)
            ensure_private_dir(state_dir)
            ensure_private_dir(self.clips_dir)
            # Every process using the store holds a shared lock; only one that has it alone (no
            # daemon running) may repair: otherwise a clip being written by another process
            # would look like a crash leftover, and a database it has open would be moved away.
            self._lockfile = _open_lock(state_dir / LOCK_FILE)
            self.alone = _try_flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.keys = KeyStore(state_dir, may_repair=self.alone)
            self._index = Database(self._open_index(state_dir / "index.sqlite"))
            self.uploads = UploadQueue(self._index)
            self._unerased: set[str] = set()
            """Ids whose rows are deleted but whose keys or files could not be erased yet."""
            if self.alone:
                self._sweep()
                self._keep_reserve()
            fcntl.flock(self._lockfile, fcntl.LOCK_SH)
        except BaseException as exc:
            self._close_opened()
            if is_busy(exc):
                raise StoreBusy(f"the store in '{state_dir}' is in use by another process; "
                                "nothing was changed (try again)") from None
            if isinstance(exc, StoreError) or not isinstance(exc, (OSError, sqlite3.Error)):
                raise
            raise StoreError(
                f"state directory '{state_dir}' is not usable: {describe(exc)}; pass --state-dir "
                "or set EDGE_RECORDER_STATE_DIR to a writable directory"
            ) from None

    def _close_opened(self) -> None:
        """After a failed open: let go of what was opened (the lock above all)."""
        for part in (getattr(self, "_index", None), getattr(self, "keys", None)):
            with contextlib.suppress(sqlite3.Error, OSError):
                if part is not None:
                    part.close()
        if self._lockfile >= 0:
            os.close(self._lockfile)
            self._lockfile = -1

    def _open_index(self, path: Path) -> sqlite3.Connection:
        try:
            return self._index_at(path)
        except (sqlite3.DatabaseError, Unreadable) as exc:
            if is_busy(exc):
                raise StoreBusy("the index is in use by another process; nothing was changed "
                                f"({path} stayed locked for {db.BUSY_TIMEOUT_S:.0f} s; try again)"
                                ) from None
            if not (isinstance(exc, Unreadable) or is_damaged(exc)):
                raise  # an I/O error or a permission: nothing says the file is damaged
            if not self.alone:
                raise StoreError(f"the index {path} is corrupt ({exc}); nothing was changed while "
                                 "another edge-recorder process uses it: stop that one and run "
                                 "any edge-recorder command to rebuild it") from None
            return self._rebuild_index(path, exc)

    def _index_at(self, path: Path) -> sqlite3.Connection:
        if self._index_lost(path):
            raise Unreadable("it is missing or empty, but clip files are present")
        conn = connect(path)
        try:
            if problem := integrity_problem(conn):
                raise Unreadable(problem)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                conn.executescript(f"BEGIN;\n{SCHEMA}\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")
            for target in range(version + 1, SCHEMA_VERSION + 1) if version else ():
                conn.executescript(f"BEGIN;\n{MIGRATIONS[target]}\nPRAGMA user_version={target};\n"
                                   "COMMIT;")
        except BaseException:
            conn.close()
            raise
        return conn

    def _index_lost(self, path: Path) -> bool:
        """No index (or a zero-length one) beside clip files: rebuild it, never erase the clips."""
        empty = not path.exists() or path.stat().st_size == 0
        return empty and any(self.clips_dir.glob(f"*{CLIP_SUFFIX}"))

    def _rebuild_index(self, path: Path, exc: Exception) -> sqlite3.Connection:
        aside = path.with_name(f"{INDEX_SET_ASIDE}{int(time.time())}")
        if _size(path):
            os.replace(path, aside)
        else:  # missing or zero-length: nothing in it to keep or to carry over
            path.unlink(missing_ok=True)
        Path(f"{path}-journal").unlink(missing_ok=True)
        log.error("the index %s is unusable (%s): rebuilt it from the clip files%s", path, exc,
                  f" (the old one is {aside.name})" if aside.exists() else "")
        db = connect(path)
        db.executescript(f"BEGIN;\n{SCHEMA}\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")
        rebuilding = Database(db)
        for f in sorted(self.clips_dir.glob(f"*{CLIP_SUFFIX}")):
            key = self.keys.get(f.stem)
            try:
                if key is None:  # a set-aside key store may still hold it: never erase it here
                    raise crypto.TamperedError(f"clip {f.stem} has no key")
                meta, _ = crypto.unseal(key, f.stem, f.read_bytes())
            except crypto.TamperedError:
                self._quarantine_file(f.stem, f.name)
                continue
            with rebuilding.transaction() as tx:
                _insert_row(tx, Clip(**{k: meta[k] for k in META_FIELDS}, audio_file=f.name), key)
        if aside.exists():
            UploadQueue(rebuilding).salvage_remote_deletes(aside)
        return db

    # -- adding -----------------------------------------------------------------------------------
    def add(
        self, samples: np.ndarray | None, start_s: float, end_s: float, wake_word: str,
        wake_score: float, transcript: str | None, recorded_at: datetime | None = None,
        eligible: Callable[[], str | None] | None = None, wake_features: np.ndarray | None = None,
    ) -> Clip:
        """Store a clip. `eligible` is asked inside the same transaction what consent covers right
        now (e.g. "audio,transcript"); when it answers, the clip joins the upload queue.
        Without samples (recorder.save = "transcript") the clip file holds the sealed metadata and
        transcript and no audio at all; such a clip is never uploaded. `wake_features` (what the
        owner verifier saw of the wake) are sealed in the clip file's header, so they go with the
        clip's key; a reject hands them to the verifier (see wake_features)."""
        cid = uuid.uuid4().hex
        clip = Clip(id=cid, recorded_at=_iso(recorded_at or datetime.now(UTC)), start_s=start_s,
                    end_s=end_s, wake_word=wake_word, wake_score=round(wake_score, 4),
                    transcript=transcript, sample_rate=SAMPLE_RATE_HZ, audio_file=cid + CLIP_SUFFIX)
        key = crypto.new_key()
        meta: dict[str, Any] = {f: getattr(clip, f) for f in META_FIELDS}
        if wake_features is not None:
            meta[WAKE_FEATURES] = {
                "shape": list(wake_features.shape),
                "float32": base64.b64encode(wake_features.astype("<f4").tobytes()).decode()}
        try:
            with self._index.lock:
                audio = wav_bytes(samples) if samples is not None else b""
                atomic_write(self.clips_dir / clip.audio_file, crypto.seal(key, cid, meta, audio),
                             suffix=TEMP_SUFFIX)
                retry_busy(lambda: self.keys.put(cid, key))
                retry_busy(lambda: self._insert(clip, key, eligible if samples is not None else None))
        except (OSError, sqlite3.Error) as exc:
            (self.clips_dir / clip.audio_file).unlink(missing_ok=True)
            with contextlib.suppress(sqlite3.Error):  # best effort: the next sweep also removes it
                self.keys.destroy([cid])
            raise StoreError(f"could not store clip in '{self.state_dir}': {describe(exc)}") from None
        return clip

    def _insert(self, clip: Clip, key: bytes, eligible: Callable[[], str | None] | None) -> None:
        with self._index.transaction() as tx:
            _insert_row(tx, clip, key)
            if eligible is not None and (scope := eligible()):
                self.uploads.enqueue(clip.id, scope, recorded_at=time.time())

    # -- reading ----------------------------------------------------------------------------------
    def all(self) -> list[Clip]:
        rows = self._index.read(f"SELECT {', '.join(COLUMNS)} FROM clips ORDER BY recorded_at")
        return [self._clip(row) for row in rows]

    def get(self, clip_id: str) -> Clip:
        row = self._index.one(f"SELECT {', '.join(COLUMNS)} FROM clips WHERE id = ?", (clip_id,))
        if row is None:
            raise StoreError(f"no clip with id {clip_id!r}; `edge-recorder clips list` shows them")
        return self._clip(row)

    def _clip(self, row: tuple[Any, ...]) -> Clip:
        values = dict(zip(COLUMNS, row, strict=True))
        key = self.keys.get(values["id"])
        try:
            text = crypto.unseal_text(key, values["id"], values["transcript"]) if key else None
        except crypto.TamperedError:
            text = None
        return Clip(**{**values, "transcript": text})

    def read_audio(self, clip: Clip) -> bytes:
        """The clip's WAV, decrypted and authenticated. A clip that fails is quarantined."""
        if not clip.audio_file:
            raise StoreError(f"clip {clip.id} was uploaded and its local copy removed "
                             "(upload.keep_local = false): there is no audio here to read")
        with self._index.lock:
            key = self.keys.get(clip.id)
            path = self.clips_dir / clip.audio_file
            try:
                if key is None:
                    raise crypto.TamperedError(f"clip {clip.id} has no key or no local audio")
                _, audio = crypto.unseal(key, clip.id, path.read_bytes())
            except (crypto.TamperedError, FileNotFoundError) as exc:
                self._quarantine(clip.id, clip.audio_file)
                raise StoreError(f"clip {clip.id} cannot be read and was quarantined: {exc}") from None
        if not audio:
            raise StoreError(f"clip {clip.id} was saved as a transcript only "
                             "(recorder.save = \"transcript\"): there is no audio to read")
        return audio

    def wake_features(self, clip: Clip) -> np.ndarray | None:
        """The owner verifier's view of the clip's wake, if it was kept (see add)."""
        with self._index.lock:
            key = self.keys.get(clip.id)
            try:
                if key is None or not clip.audio_file:
                    return None
                meta, _ = crypto.unseal(key, clip.id, (self.clips_dir / clip.audio_file).read_bytes())
            except (crypto.TamperedError, FileNotFoundError):
                return None  # a delete follows: reading the audio is where quarantine happens
        kept = meta.get(WAKE_FEATURES)
        if not kept:
            return None
        return np.frombuffer(base64.b64decode(kept["float32"]), "<f4").reshape(kept["shape"])

    def _quarantine(self, clip_id: str, filename: str) -> None:
        """Keep the bad file aside for inspection; its key and index row are destroyed."""
        self._quarantine_file(clip_id, filename)  # moves the file and destroys the key
        with self._index.transaction() as tx:
            self.uploads.forget([clip_id], None, remote=False)
            tx.execute("DELETE FROM clips WHERE id = ?", (clip_id,))
        log.error("clip %s failed authentication and was quarantined", clip_id)

    def _quarantine_file(self, clip_id: str, filename: str) -> None:
        if filename:
            self.quarantine.put(self.clips_dir / filename)
        self.keys.destroy([clip_id])

    def export(self, clip: Clip, dest: Path) -> Path:
        atomic_write(dest, self.read_audio(clip))
        return dest

    def space_problem(self, min_free_bytes: int) -> str | None:
        """Why a new clip could not be written now (read-only or nearly full), or None."""
        st = os.statvfs(self.clips_dir)
        if st.f_flag & os.ST_RDONLY:
            return f"the state directory '{self.state_dir}' is on a read-only file system"
        free = st.f_bavail * st.f_frsize
        if free < min_free_bytes:
            return (f"the state directory '{self.state_dir}' has {free // 1024} KiB free, "
                    f"less than retention.min_free_bytes ({min_free_bytes // 1024} KiB)")
        return None

    def newest_since(self, since: datetime) -> list[str]:
        """The id of the clip stored last, if it was recorded at or after `since` (else [])."""
        return [r[0] for r in self._index.read(
            "SELECT id FROM clips WHERE rowid = (SELECT MAX(rowid) FROM clips) AND recorded_at >= ?",
            (_iso(since),))]

    def latest_ids(self, n: int) -> list[str]:
        """The ids of the n clips stored last, newest first (the order they were stored in, which a
        clock change cannot reorder)."""
        return [r[0] for r in self._index.read(
            "SELECT id FROM clips ORDER BY rowid DESC LIMIT ?", (n,))]

    # -- stats ----------------------------------------------------------------------------------
    def add_stats(self, counts: dict[str, int]) -> None:
        """Add to today's counters (what the owner sees with `edge-recorder stats`)."""
        if counts:
            with self._index.transaction() as tx:
                for name, n in counts.items():
                    self._add_stat(tx, name, n)

    @staticmethod
    def _add_stat(tx: sqlite3.Connection, name: str, n: int) -> None:
        tx.execute("INSERT INTO stats (day, name, count) VALUES (?, ?, ?) ON CONFLICT(day, name) "
                   "DO UPDATE SET count = count + excluded.count",
                   (datetime.now().astimezone().date().isoformat(), name, n))

    def stats(self, days: int = 7) -> list[dict[str, Any]]:
        """Per local day, newest first: {"day", "wakes", "kept", "rejected", "discarded": {...}}."""
        since = (datetime.now().astimezone().date() - timedelta(days=days - 1)).isoformat()
        out: dict[str, dict[str, Any]] = {}
        for day, name, n in self._index.read(
                "SELECT day, name, count FROM stats WHERE day >= ? ORDER BY day DESC", (since,)):
            row = out.setdefault(day, {"day": day, "wakes": 0, "kept": 0, "rejected": 0,
                                       "discarded": {}})
            if name.startswith("discarded_"):
                row["discarded"][name.removeprefix("discarded_")] = n
            else:
                row[name] = n
        return list(out.values())

    def count(self) -> int:
        row = self._index.one("SELECT COUNT(*) FROM clips")
        return int(row[0]) if row else 0

    def bytes_used(self) -> list[tuple[str, str, int]]:
        """(id, recorded_at, size of its file) for every clip, oldest first."""
        rows = self._index.read("SELECT id, recorded_at, audio_file FROM clips ORDER BY recorded_at")
        return [(cid, at, _size(self.clips_dir / f) if f else 0) for cid, at, f in rows]

    # -- deleting -------------------------------------------------------------------------------
    def delete(
        self, ids: list[str] | None = None, since: datetime | None = None,
        until: datetime | None = None, everything: bool = False, request_id: str | None = None,
        remote: bool = True, body_hash: str = "", nonce: str | None = None, reason: str = "command",
    ) -> dict[str, Any]:
        """Delete the clips selected by ids, a recorded_at range [since, until), or everything.

        Durable and complete when it returns: the rows, the remote deletes to queue and the
        request record (state `erasing`) commit together; then the keys are destroyed
        (crypto-erase) and the files removed; then the record says `done`. If the erase fails
        (a lock held too long, a full disk), StoreError is raised and the same request, run
        again, finishes the erase before it answers. A request id seen before with the same
        `body_hash` returns its result marked replayed; with another body it is refused. A
        signed command's `nonce` is recorded in the same commit as its effect.
        Returns {"ids", "not_found", "remote_pending", "replayed"}.
        """
        self._finish_erasures()
        outcome: dict[str, Any] = {}
        try:
            self._with_reserve(lambda: outcome.update(self._delete_rows(
                ids, since, until, everything, request_id, remote, body_hash, nonce, reason)),
                doomed=lambda: [c.id for c in self._select(self._index.conn, ids, since, until,
                                                           everything)])
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"could not delete in '{self.state_dir}' ({describe(exc)}); "
                             "nothing was deleted, try again") from None
        result, state = outcome["result"], outcome["state"]
        if state == "erasing":
            self._erase(result["ids"], request_id)
        if everything and not outcome["replayed"]:
            self._destroy_quarantine()
        return {**result, "replayed": outcome["replayed"]}

    def _destroy_quarantine(self) -> None:
        """Everything set aside goes with "everything" (see quarantine.py)."""
        try:
            self.quarantine.destroy()
        except OSError as exc:
            raise StoreError(f"the clips are deleted, but what was quarantined could not be "
                             f"destroyed yet ({describe(exc)}); run the delete again") from None

    def _delete_rows(self, ids: list[str] | None, since: datetime | None, until: datetime | None,
                     everything: bool, request_id: str | None, remote: bool, body_hash: str,
                     nonce: str | None, reason: str) -> dict[str, Any]:
        with self._index.transaction() as tx:
            if request_id and (done := self._request_result(tx, request_id, body_hash)):
                # a request whose erase was interrupted is answered for the first time now
                return {"result": done[0], "state": done[1], "replayed": done[1] == "done"}
            if nonce is not None:
                self._use_nonce(tx, nonce)
            found = [c.id for c in self._select(tx, ids, since, until, everything)]
            pending = self.uploads.forget(found, request_id, remote=remote)
            tx.executemany("DELETE FROM clips WHERE id = ?", [(c,) for c in found])
            result = {"ids": found, "not_found": [i for i in ids or [] if i not in set(found)],
                      "remote_pending": pending}
            if request_id:
                self._record_request(tx, request_id, "delete", result, body_hash)
            if reason == "reject" and found:
                self._add_stat(tx, "rejected", len(found))
        return {"result": result, "state": "erasing", "replayed": False}

    def _erase(self, ids: list[str], request_id: str | None) -> None:
        """Keys, then files; then the request is done. On failure the ids are remembered and
        retried before the next delete (and a restart sweeps whatever a crash left)."""
        try:
            self._with_reserve(lambda: self.keys.destroy(ids))
            self._remove_files([self.clips_dir / f"{cid}{CLIP_SUFFIX}" for cid in ids])
            if request_id:
                with self._index.transaction() as tx:
                    tx.execute("UPDATE requests SET state = 'done' WHERE request_id = ?",
                               (request_id,))
        except (OSError, sqlite3.Error) as exc:
            self._unerased.update(ids)
            raise StoreError(f"the delete is recorded but its keys could not be destroyed yet "
                             f"({describe(exc)}); it is retried") from None
        self._unerased.difference_update(ids)

    def _finish_erasures(self) -> None:
        if self._unerased:
            self._erase(sorted(self._unerased), None)

    def _keep_reserve(self) -> None:
        """Hold RESERVE_BYTES on the state directory's file system (made once; remade at a start
        after a full disk used it, if there is room again)."""
        reserve = self.state_dir / RESERVE_FILE
        if reserve.exists():
            return
        try:
            st = os.statvfs(self.state_dir)
            if st.f_bavail * st.f_frsize < 2 * RESERVE_BYTES:
                return
            fd = os.open(reserve, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:  # a read-only or full file system: nothing to hold back
            reserve.unlink(missing_ok=True)
            log.debug("no space reserve: %s", exc)

    def _with_reserve(self, action: Callable[[], None],
                      doomed: Callable[[], list[str]] = list) -> None:
        """Run `action`. On a full disk, release the reserved space and try again; if that is not
        enough, remove the files of the clips being deleted first (`doomed()`: ciphertext whose
        keys go in this very delete) and try once more."""
        for attempt in range(3):
            try:
                action()
                return
            except (OSError, sqlite3.OperationalError) as exc:
                full = getattr(exc, "errno", None) == errno.ENOSPC or "full" in str(exc)
                reserve = self.state_dir / RESERVE_FILE
                if not full or attempt == 2:
                    raise
                if reserve.exists():
                    log.warning("the disk is full: releasing the reserved %d KiB to delete",
                                RESERVE_BYTES >> 10)
                    reserve.unlink()
                elif ids := doomed():
                    log.warning("the disk is full: removing the %d clip file(s) being deleted first",
                                len(ids))
                    self._remove_files([self.clips_dir / f"{cid}{CLIP_SUFFIX}" for cid in ids])
                else:
                    raise

    def forget_local_copy(self, clip_id: str) -> None:
        """After a confirmed upload with keep_local off: drop the audio and transcript here, keep
        the row (marked uploaded) so that a later delete can still reach the remote copy."""
        with self._index.lock:
            clip = self.get(clip_id)
            with self._index.transaction() as tx:
                tx.execute("UPDATE clips SET audio_file = '', transcript = NULL WHERE id = ?",
                           (clip_id,))
            self._remove_files([self.clips_dir / clip.audio_file])

    @staticmethod
    def _select(tx: sqlite3.Connection, ids: list[str] | None, since: datetime | None,
                until: datetime | None, everything: bool) -> list[Clip]:
        cols = ", ".join(COLUMNS)
        if everything:
            rows = tx.execute(f"SELECT {cols} FROM clips").fetchall()
        elif ids is not None:
            rows = [r for i in dict.fromkeys(ids) for r in
                    tx.execute(f"SELECT {cols} FROM clips WHERE id = ?", (i,))]
        else:
            lo = _iso(since) if since else ""
            hi = _iso(until) if until else "9999"
            rows = tx.execute(
                f"SELECT {cols} FROM clips WHERE recorded_at >= ? AND recorded_at < ?", (lo, hi)
            ).fetchall()
        return [Clip(*r) for r in rows]

    def _remove_files(self, paths: list[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)
        if paths:
            fsync_dir(self.clips_dir)

    def wipe(self) -> int:
        """Destroy every key, then every clip, the index and the quarantine. Remote deletes the
        owner was told are pending are kept: they hold no audio. Returns clips wiped."""
        try:
            with self._index.lock:
                n = self.count()
                self._with_reserve(lambda: self.keys.destroy(list(self.keys.ids())),
                                   doomed=lambda: [c.id for c in self.all()])
                self.quarantine.destroy()  # set-aside key stores: crypto-erased first
                self._with_reserve(self._clear_index)
                self._remove_files(list(self.clips_dir.iterdir()))
                try:  # compacting needs room: on a full disk it waits for another day
                    self._index.conn.execute("VACUUM")
                    self.keys.vacuum()
                except sqlite3.OperationalError as exc:
                    log.warning("wiped, but could not compact the databases: %s", exc)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"could not wipe '{self.state_dir}': {describe(exc)}") from None
        return n

    def _clear_index(self) -> None:
        with self._index.transaction() as tx:
            self.uploads.clear()
            for table in ("clips", "requests", "nonces", "settings", "stats"):
                tx.execute(f"DELETE FROM {table}")

    # -- requests, nonces, settings ---------------------------------------------------------------
    def _request_result(self, tx: sqlite3.Connection, request_id: str,
                        body_hash: str) -> tuple[dict[str, Any], str] | None:
        row = tx.execute("SELECT result, body_hash, state FROM requests WHERE request_id = ?",
                         (request_id,)).fetchone()
        if row is None:
            return None
        if row[1] and body_hash and row[1] != body_hash:
            raise CommandError("request_id_reused", f"request id {request_id!r} was used for "
                               "another command; use a new request id for each command", request_id)
        return dict(json.loads(row[0])), str(row[2])

    @staticmethod
    def _record_request(tx: sqlite3.Connection, request_id: str, kind: str,
                        result: dict[str, Any], body_hash: str) -> None:
        now = datetime.now(UTC)
        tx.execute("DELETE FROM requests WHERE done_at < ? OR request_id NOT IN (SELECT "
                   "request_id FROM requests ORDER BY done_at DESC LIMIT ?)",
                   (_iso(now - timedelta(seconds=REQUEST_MAX_AGE_S)), MAX_REQUESTS - 1))
        bounded = {k: v[:MAX_STORED_IDS] if isinstance(v, list) else v for k, v in result.items()}
        tx.execute(
            "INSERT INTO requests (request_id, kind, result, done_at, body_hash, state) "
            "VALUES (?, ?, ?, ?, ?, 'erasing')",
            (request_id, kind, json.dumps(bounded), _iso(now), body_hash),
        )

    def record_nonce(self, nonce: str) -> None:
        """Record a signed command's nonce (joining the caller's transaction, if any); a nonce
        recorded before raises CommandError("replayed")."""
        with self._index.transaction() as tx:
            self._use_nonce(tx, nonce)

    def request_known(self, request_id: str, body_hash: str) -> bool:
        """Whether this exact command (id and body) was already carried out."""
        row = self._index.one("SELECT body_hash FROM requests WHERE request_id = ?", (request_id,))
        return row is not None and row[0] in (body_hash, "")

    def nonce_used(self, nonce: str) -> bool:
        return self._index.one("SELECT 1 FROM nonces WHERE nonce = ?", (nonce,)) is not None

    def _use_nonce(self, tx: sqlite3.Connection, nonce: str) -> None:
        now = time.time()
        tx.execute("DELETE FROM nonces WHERE seen_at < ?", (now - 2 * NONCE_KEEP_S,))
        try:
            tx.execute("INSERT INTO nonces (nonce, seen_at) VALUES (?, ?)", (nonce, now))
        except sqlite3.IntegrityError:
            raise CommandError("replayed", "this nonce was already used") from None

    def setting(self, name: str, default: str) -> str:
        row = self._index.one("SELECT value FROM settings WHERE name = ?", (name,))
        return default if row is None else str(row[0])

    def set_setting(self, name: str, value: str) -> None:
        with self._index.transaction() as tx:
            tx.execute("INSERT INTO settings (name, value) VALUES (?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))

    @contextmanager
    def atomically(self) -> Iterator[None]:
        """Everything the store and the upload queue change inside commits together, or not at all."""
        with self._index.transaction():
            yield

    # -- housekeeping ---------------------------------------------------------------------------
    def _sweep(self) -> None:
        """Finish what a crash interrupted: pieces without an index row (files, keys, temp files)
        are removed; rows without their file or key are dropped. Writes nothing when all is well."""
        self.uploads.recover()
        rows = {r[0]: r[1] for r in self._index.read("SELECT id, audio_file FROM clips")}
        known_files = {f for f in rows.values() if f}
        strays = [self.clips_dir / n for n in {p.name for p in self.clips_dir.iterdir()} - known_files]
        if strays:
            log.warning("removing %d clip file(s) left by an interrupted write or delete", len(strays))
            self.keys.destroy([p.stem for p in strays if p.suffix == CLIP_SUFFIX])
            self._remove_files(strays)
        self.keys.destroy(list(self.keys.ids() - set(rows)))
        keys = self.keys.ids()
        lost = [cid for cid, f in rows.items()
                if cid not in keys or (f and not (self.clips_dir / f).exists())]
        if lost:
            keyless = [self.clips_dir / rows[i] for i in lost if i not in keys and rows[i]]
            log.warning("dropping %d index row(s) whose audio or key is missing; %d clip file(s) "
                        "without their key are quarantined", len(lost), len(keyless))
            with self._index.transaction() as tx:
                self.uploads.forget(lost, None, remote=False)
                tx.executemany("DELETE FROM clips WHERE id = ?", [(i,) for i in lost])
            self.keys.destroy(lost)
            for f in keyless:  # never erased here: a set-aside key store may still open it
                self.quarantine.put(f)

    def close(self) -> None:
        with self._index.lock:
            self._close_opened()


BUSY_RETRY_S = 60.0
"""How long storing a clip keeps trying while another process holds a lock (the audio waits in RAM)."""


def retry_busy(action: Callable[[], None], within_s: float = BUSY_RETRY_S) -> None:
    """Run `action`, trying again with backoff while SQLite says the database is locked or busy."""
    deadline, delay, reported = time.monotonic() + within_s, 0.05, False
    while True:
        try:
            action()
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() + delay > deadline:
                raise
            if not reported:
                log.warning("the store is locked by another process; waiting (%s)", exc)
                reported = True
            time.sleep(delay)
            delay = min(2.0, delay * 2)


def _insert_row(tx: sqlite3.Connection, clip: Clip, key: bytes) -> None:
    values = {**asdict(clip), "transcript": crypto.seal_text(key, clip.id, clip.transcript)}
    tx.execute(f"INSERT INTO clips ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
               [values[c] for c in COLUMNS])


STORE_NAMES = {"clips", "quarantine", "index.sqlite", "keys.sqlite", "keys.kek", LOCK_FILE,
               RESERVE_FILE, "device_id", "models", "index.sqlite-journal", "keys.sqlite-journal",
               "verifier"}
"""What a state directory holds; `models` may come first (`models fetch` before any clip), and
`verifier` (device/wake/verifier.py) is the owner's."""


def refuse_foreign_dir(state_dir: Path) -> None:
    """Never take over (and chmod 0700) a directory that holds other things, e.g. a shared one."""
    try:
        names = {p.name for p in state_dir.iterdir()}
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise
    strangers = sorted(n for n in names if n not in STORE_NAMES and not n.startswith(
        ("index.sqlite.", "keys.sqlite.", "keys.kek.", ".")))
    if strangers:
        raise StoreError(
            f"'{state_dir}' is not an edge-recorder state directory (it holds "
            f"{', '.join(strangers[:3])}{', ...' if len(strangers) > 3 else ''}); pass --state-dir "
            "with a new or empty directory")


def _open_lock(path: Path) -> int:
    """The lock file, created on first use; read-only on a read-only file system (flock works)."""
    try:
        return os.open(path, os.O_CREAT | os.O_RDWR, PRIVATE_FILE)
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        return os.open(path, os.O_RDONLY)


def _try_flock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation)
        return True
    except BlockingIOError:
        return False


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


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

