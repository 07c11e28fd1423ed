"""The shared index (`index.sqlite`): its schema (every owner's tables, device/storage/db.py), its
upgrades, and its repair.

Opening: a database another process holds locked is busy (StoreBusy), never damaged. Only an index
proven unreadable (missing or empty beside clip files, SQLITE_CORRUPT/NOTADB, a failed integrity
check) is set aside (`index.sqlite.corrupt-<t>`) and rebuilt from the clip files, whose
authenticated headers carry their rows, and only by a process that has the state directory alone.
The rebuild is written beside it (`index.sqlite.rebuilding`) and renamed into place when complete:
a crash partway leaves no index, so the next start rebuilds again, never a partial one whose sweep
would take the clips it lacks for leftovers.
Sweeping (at a start with the directory alone): what a crash interrupted is finished; pieces without
a row are removed, rows without their file are dropped, and a clip whose key is gone is quarantined,
never erased (a set-aside key store may still open it).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from device.core.errors import StoreBusy, StoreError
from device.core.files import fsync_dir
from device.storage import crypto, db, erasing, preferences, requests, stats, upload_queue
from device.storage.clip_rows import META_FIELDS, Clip, ClipRows
from device.storage.clip_rows import SCHEMA as CLIPS_SCHEMA
from device.storage.db import Database, connect, integrity_problem, is_busy, is_damaged
from device.storage.erasing import CLIP_SUFFIX, Eraser
from device.storage.keystore import KeyStore
from device.storage.quarantine import INDEX_SET_ASIDE, Quarantine
from device.storage.upload_queue import UploadQueue

log = logging.getLogger(__name__)

INDEX_FILE = "index.sqlite"
REBUILDING = ".rebuilding"
"""A rebuild is written to `index.sqlite.rebuilding` (and its journal) until it is complete."""
SCHEMA_VERSION = 6
SCHEMA = (CLIPS_SCHEMA + requests.SCHEMA + preferences.SCHEMA + upload_queue.SCHEMA
          + stats.SCHEMA + erasing.SCHEMA)
READ_ONLY_CAN_WAIT = {6}
"""Upgrades a read-only disk can go without until it is writable again (`erasing`: nothing can be
deleted there anyway), so that an older index can still be read there."""
MIGRATIONS = {
    2: requests.MIGRATION_2,
    3: stats.SCHEMA + upload_queue.MIGRATION_3,
    4: upload_queue.MIGRATION_4,
    5: upload_queue.MIGRATION_5,
    6: erasing.MIGRATION_6,
}
"""From version N-1 to N: run by the first process that opens an older index."""


class Unreadable(Exception):
    """The index is proven unreadable: missing beside clip files, or it fails its integrity check."""


class Repair:
    """What opening and sweeping the index needs from the state directory."""

    def __init__(self, clips_dir: Path, keys: KeyStore, quarantine: Quarantine, alone: bool) -> None:
        self.clips_dir, self.keys, self.quarantine, self.alone = clips_dir, keys, quarantine, alone

    def set_aside(self, clip_file: Path) -> None:
        """A clip file that cannot be read goes to the quarantine; its key (if any) is destroyed."""
        self.quarantine.put(clip_file)
        self.keys.destroy([clip_file.stem])

    # -- opening ----------------------------------------------------------------------------------
    def open(self, path: Path) -> Database:
        if self.alone:  # what a crash during a rebuild left: never used, built again if needed
            for partial in _partial(path):
                if partial.exists():  # (a read-only file system refuses even a no-op unlink)
                    partial.unlink()
        try:
            return Database(self._open_at(path))
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
            return self._rebuild(path, exc)

    def _open_at(self, path: Path) -> sqlite3.Connection:
        if self._lost(path):
            raise Unreadable("it is missing or empty, but clip files are present")
        conn = connect(path)
        try:
            if problem := integrity_problem(conn):
                raise Unreadable(problem)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            steps = [(SCHEMA_VERSION, SCHEMA)] if version == 0 else \
                [(v, MIGRATIONS[v]) for v in range(version + 1, SCHEMA_VERSION + 1)]
            for target, script in steps:
                try:
                    conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={target};\nCOMMIT;")
                except sqlite3.OperationalError as exc:
                    if target not in READ_ONLY_CAN_WAIT or "readonly" not in str(exc):
                        raise
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    break  # done at the next open that can write
        except BaseException:
            conn.close()
            raise
        return conn

    def _lost(self, path: Path) -> bool:
        """No index (or a zero-length one) beside clip files: rebuild it, never erase the clips."""
        empty = not path.exists() or path.stat().st_size == 0
        return empty and any(self.clips_dir.glob(f"*{CLIP_SUFFIX}"))

    def _rebuild(self, path: Path, exc: Exception) -> Database:
        aside = path.with_name(f"{INDEX_SET_ASIDE}{int(time.time())}")
        if path.exists() and path.stat().st_size:
            os.replace(path, aside)
        else:  # missing or zero-length: nothing in it to keep or to carry over
            path.unlink(missing_ok=True)
        Path(f"{path}-journal").unlink(missing_ok=True)
        log.error("the index %s is unusable (%s): rebuilt it from the clip files%s", path, exc,
                  f" (the old one is {aside.name})" if aside.exists() else "")
        built, _ = _partial(path)
        conn = connect(built)
        try:
            self._fill(Database(conn), aside)
        finally:
            conn.close()
        os.replace(built, path)
        fsync_dir(path.parent)
        return Database(connect(path))  # opened anew: a connection names its journal by its path

    def _fill(self, rebuilt: Database, aside: Path) -> None:
        """The schema, a row per clip file that opens, and the remote deletes and unfinished erases
        still readable in the set-aside index; a clip file that does not open goes to the
        quarantine."""
        rebuilt.conn.executescript(f"BEGIN;\n{SCHEMA}\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")
        rows = ClipRows(rebuilt)
        deleted = erasing.carry_over(rebuilt, aside) if aside.exists() else set()
        for f in sorted(self.clips_dir.glob(f"*{CLIP_SUFFIX}")):
            if f.stem in deleted:  # erased at this open, after the rebuild
                continue
            key = self.keys.get(f.stem)
            try:
                if key is None:  # a set-aside key store may still hold it: never erase it here
                    raise crypto.TamperedError(f"clip {f.stem} has no key")
                meta, _ = crypto.unseal(key, f.stem, f.read_bytes())
            except crypto.TamperedError:
                self.set_aside(f)
                continue
            rows.insert(Clip(**{k: meta[k] for k in META_FIELDS}, audio_file=f.name), key)
        if aside.exists():
            UploadQueue(rebuilt).salvage_remote_deletes(aside)

    # -- sweeping ---------------------------------------------------------------------------------
    def sweep(self, index: Database, uploads: UploadQueue, eraser: Eraser) -> None:
        """Finish what a crash interrupted. Writes nothing when all is well."""
        rows = ClipRows(index)
        uploads.recover()
        files = rows.files()
        known = {f for f in files.values() if f}
        strays = [self.clips_dir / n for n in {p.name for p in self.clips_dir.iterdir()} - known]
        self.keys.destroy(list(self.keys.ids() - set(files)))  # first: a stray is unreadable
        if strays:  # a write or a delete was interrupted before its row, or after it; or the removal
            # of an uploaded clip's local copy after its row (whose key stays: the row still counts)
            log.warning("removing %d clip file(s) left by an interrupted write or delete", len(strays))
            eraser.remove_files(strays)
        keys = self.keys.ids()
        lost = [cid for cid, f in files.items()
                if cid not in keys or (f and not (self.clips_dir / f).exists())]
        if not lost:
            return
        keyless = [self.clips_dir / files[i] for i in lost if i not in keys and files[i]]
        log.warning("dropping %d index row(s) whose audio or key is missing; %d clip file(s) "
                    "without their key are quarantined", len(lost), len(keyless))
        with index.transaction():
            uploads.forget(lost, None, remote=False)
            rows.delete(lost)
        self.keys.destroy(lost)
        for f in keyless:  # never erased here: a set-aside key store may still open it
            self.quarantine.put(f)


def _partial(path: Path) -> tuple[Path, Path]:
    """An index being rebuilt, and its journal."""
    built = path.with_name(f"{path.name}{REBUILDING}")
    return built, Path(f"{built}-journal")
