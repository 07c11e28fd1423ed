"""Erasing clips for good, even on a full disk: their keys first (crypto-erase, device/storage/
keystore.py: from here no copy of a file can be read), then their files. Space is held back
(`.reserve`) so that a delete still works when the disk is full: the journals and the key rotation
need a little room. The ids being erased are written in the commit that deletes their rows
(`erasing`) and struck off once keys and files are gone: an erase that fails (a lock held too long,
a full disk) or that a crash cut short is finished before the next delete and at every open, by
whichever process opens the store (they are deleted clips: no other process can still be writing
them). A restart that has the store alone also sweeps what a crash left of a write
(device/storage/index.py)."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from device.core.errors import StoreError, describe
from device.core.files import PRIVATE_FILE, fsync_dir
from device.storage.db import Database, connect_read_only, has_table
from device.storage.keystore import KeyStore

log = logging.getLogger(__name__)

RESERVE_FILE = ".reserve"
RESERVE_BYTES = 512 << 10
"""Space held back so that a delete (SQLite journals, key rotation) still works on a full disk."""
CLIP_SUFFIX = ".clip"
SCHEMA = "CREATE TABLE IF NOT EXISTS erasing (clip_id TEXT PRIMARY KEY);\n"
MIGRATION_6 = SCHEMA
FULL_TRIES = 3


def carry_over(rebuilt: Database, old_index: Path) -> set[str]:
    """After a rebuild: the ids whose delete committed but whose erase had not finished, read from
    the old index if it can still be read. They go into the rebuilt `erasing` (finished at this
    open) and must not be rebuilt as clips: an acknowledged delete never comes back."""
    try:
        old = connect_read_only(old_index)
        try:
            ids = {str(r[0]) for r in old.execute("SELECT clip_id FROM erasing")} \
                if has_table(old, "erasing") else set()
        finally:
            old.close()
    except sqlite3.DatabaseError as exc:
        log.error("unfinished erases could not be carried over from the old index (%s)", exc)
        return set()
    with rebuilt.transaction() as tx:
        tx.executemany("INSERT OR IGNORE INTO erasing (clip_id) VALUES (?)", [(i,) for i in ids])
    return ids


class Eraser:
    """The owner of the `erasing` table: ids whose rows are deleted and whose keys or files may
    not be gone yet."""

    def __init__(self, state_dir: Path, clips_dir: Path, keys: KeyStore, index: Database) -> None:
        self._state_dir, self._clips_dir, self._keys = state_dir, clips_dir, keys
        self._index = index

    def doom(self, ids: list[str]) -> None:
        """Joins the caller's transaction, the one that deletes their rows."""
        with self._index.transaction() as tx:
            tx.executemany("INSERT OR IGNORE INTO erasing (clip_id) VALUES (?)",
                           [(cid,) for cid in ids])

    def file_of(self, clip_id: str) -> Path:
        return self._clips_dir / f"{clip_id}{CLIP_SUFFIX}"

    def erase(self, ids: list[str], then: Callable[[], None] = lambda: None) -> None:
        """Keys, then files, then the ids are struck off and `then` runs (e.g. the request is
        done). On failure they stay doomed and are erased again before the next delete (and at the
        next open); StoreError says so."""
        try:
            self.with_reserve(lambda: self._keys.destroy(ids))
            self.remove_files([self.file_of(cid) for cid in ids])
            with self._index.transaction() as tx:
                tx.executemany("DELETE FROM erasing WHERE clip_id = ?", [(cid,) for cid in ids])
            then()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"the delete is recorded but its keys could not be destroyed yet "
                             f"({describe(exc)}); it is retried") from None

    def finish_pending(self) -> None:
        with self._index.lock:
            if not has_table(self._index.conn, "erasing"):  # an older index on a read-only disk
                return
        if ids := [str(r[0]) for r in self._index.read("SELECT clip_id FROM erasing")]:
            self.erase(ids)

    def clear(self) -> None:
        with self._index.transaction() as tx:
            tx.execute("DELETE FROM erasing")

    def remove_files(self, paths: list[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)
        if paths:
            fsync_dir(self._clips_dir)

    def with_reserve(self, action: Callable[[], None], doomed: Callable[[], list[str]] = list) -> None:
        """Run `action`. On a full disk, release the reserved space and try again; if that is not
        enough, remove the files of the clips being deleted first (`doomed()`: ciphertext whose
        keys go in this very delete) and try once more."""
        for attempt in range(FULL_TRIES):
            try:
                action()
                return
            except (OSError, sqlite3.OperationalError) as exc:
                full = getattr(exc, "errno", None) == errno.ENOSPC or "full" in str(exc)
                if not full or attempt == FULL_TRIES - 1 or not self._make_room(doomed):
                    raise

    def _make_room(self, doomed: Callable[[], list[str]]) -> bool:
        reserve = self._state_dir / RESERVE_FILE
        if reserve.exists():
            log.warning("the disk is full: releasing the reserved %d KiB to delete", RESERVE_BYTES >> 10)
            reserve.unlink()
            return True
        if ids := doomed():
            log.warning("the disk is full: removing the %d clip file(s) being deleted first", len(ids))
            self.remove_files([self.file_of(cid) for cid in ids])
            return True
        return False

    def keep_reserve(self) -> None:
        """Hold RESERVE_BYTES on the state directory's file system (made once; remade at a start
        after a full disk used it, if there is room again)."""
        reserve = self._state_dir / RESERVE_FILE
        if reserve.exists():
            return
        try:
            st = os.statvfs(self._state_dir)
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
