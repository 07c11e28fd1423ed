"""A state directory (0700, every file in it 0600), opened once per process, and the owners of
what it keeps:
- clips/<id>.clip: each clip's audio and metadata, AES-256-GCM encrypted with a key of its own
  (the clips: device/storage/clips.py);
- keys.sqlite and keys.kek: the per-clip keys, wrapped by a rotating key-encryption key (`keys`);
- index.sqlite: one SQLite index shared by the owners of its tables: clip rows, the upload queue
  (`uploads`), request records and nonces (`requests`), settings kept across restarts
  (`preferences`) and per-day counts (`stats`); a change to several commits at once
  (`atomically`);
- quarantine/ and the set-aside databases (`quarantine`).

Every process that opens the directory holds a shared lock on `.lock`; one that gets it alone (no
daemon running) may repair: set aside what is proven unreadable, rebuild the index, sweep what a
crash left. Otherwise a clip being written by another process would look like a crash leftover,
and a database it has open would be moved away.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from device.core.errors import StoreBusy, StoreError, describe
from device.core.files import PRIVATE_FILE, ensure_private_dir
from device.storage.clip_rows import ClipRows
from device.storage.db import is_busy
from device.storage.erasing import RESERVE_FILE, Eraser
from device.storage.index import INDEX_FILE, Repair
from device.storage.keystore import KeyStore
from device.storage.preferences import Preferences
from device.storage.quarantine import Quarantine
from device.storage.requests import Requests
from device.storage.stats import Stats
from device.storage.upload_queue import UploadQueue

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
STORE_NAMES = {"clips", "quarantine", INDEX_FILE, "keys.sqlite", "keys.kek", LOCK_FILE,
               RESERVE_FILE, "device_id", "models", "index.sqlite-journal", "keys.sqlite-journal",
               "verifier"}
"""What a state directory holds; `models` may come first (`models fetch` before any clip), and
`verifier` (device/wake/verifier.py) is the owner's."""


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.clips_dir = path / "clips"
        self.quarantine = Quarantine(path)
        self._lockfile = -1
        try:
            self._open()
        except BaseException as exc:
            self.close()
            if isinstance(exc, StoreError) or not isinstance(exc, (OSError, sqlite3.Error)):
                raise
            if is_busy(exc):
                raise StoreBusy(f"the store in '{path}' is in use by another process; nothing "
                                "was changed (try again)") from None
            raise StoreError(f"state directory '{path}' is not usable: {describe(exc)}; pass "
                             "--state-dir or set EDGE_RECORDER_STATE_DIR to a writable directory"
                             ) from None

    def _open(self) -> None:
        refuse_foreign_dir(self.path)
        ensure_private_dir(self.path)
        ensure_private_dir(self.clips_dir)
        self._lockfile = _open_lock(self.path / LOCK_FILE)
        self.alone = _try_flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.keys = KeyStore(self.path, may_repair=self.alone)
        repair = Repair(self.clips_dir, self.keys, self.quarantine, self.alone)
        self.index = repair.open(self.path / INDEX_FILE)
        self.rows = ClipRows(self.index)
        self.uploads = UploadQueue(self.index)
        self.requests = Requests(self.index)
        self.preferences = Preferences(self.index)
        self.stats = Stats(self.index)
        self.eraser = Eraser(self.path, self.clips_dir, self.keys, self.index)
        if self.alone:
            repair.sweep(self.index, self.uploads, self.eraser)
            self.eraser.keep_reserve()
        self._finish_erasing()
        fcntl.flock(self._lockfile, fcntl.LOCK_SH)

    def _finish_erasing(self) -> None:
        """Deletes a crash or a failure cut short: finished by any process that opens the store
        (`edge-recorder web` holds it open for good, so a restarted daemon is never alone)."""
        try:
            self.eraser.finish_pending()
        except StoreError as exc:  # the next delete tries again first
            log.warning("%s", exc)

    @contextmanager
    def atomically(self) -> Iterator[None]:
        """Whatever the owners change inside commits together, or not at all."""
        with self.index.transaction():
            yield

    def clear(self) -> None:
        """Every row of every owner, in one commit; remote deletes the owner was told are
        pending stay (they hold no audio; see UploadQueue.clear)."""
        with self.atomically():
            for owner in (self.uploads, self.rows, self.requests, self.preferences, self.stats,
                          self.eraser):
                owner.clear()

    def compact(self) -> None:
        """VACUUM both databases (after a wipe); it needs room: on a full disk it waits."""
        try:
            self.index.conn.execute("VACUUM")
            self.keys.vacuum()
        except sqlite3.OperationalError as exc:
            log.warning("wiped, but could not compact the databases: %s", exc)

    def close(self) -> None:
        """Safe to call twice, and after a failed open (the lock above all is let go)."""
        for part in (getattr(self, "index", None), getattr(self, "keys", None)):
            with contextlib.suppress(sqlite3.Error, OSError):
                if part is not None:
                    part.close()
        if self._lockfile >= 0:
            os.close(self._lockfile)
            self._lockfile = -1


def refuse_foreign_dir(state_dir: Path) -> None:
    """Never take over (and chmod 0700) a directory that holds other things, e.g. a shared one."""
    try:
        names = {p.name for p in state_dir.iterdir()}
    except FileNotFoundError:
        return
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
