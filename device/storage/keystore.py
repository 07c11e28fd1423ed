"""Per-clip keys that are gone for good when a clip is deleted, even from a raw disk image.

Deleting a row from a SQLite file is not enough: before SQLite changes a page it copies the page
into its rollback journal, and the journal's blocks are freed, not erased, when the transaction
ends. Every page copied that way holds the other clips' keys too. So no key is ever written in
plaintext: each clip key is wrapped (AES-256-GCM, bound to the clip id) by a key-encryption key
(KEK), and every delete rotates the KEK:

1. a new KEK is written, in place, into the spare slot of `keys.kek` (two fixed 512-byte slots);
2. one SQLite transaction drops the deleted keys, re-wraps every remaining key under the new KEK
   and records the new generation;
3. the old KEK's slot is overwritten in place with zeros.

Whatever copies of old pages the journal left in free blocks hold keys wrapped by a KEK that no
longer exists anywhere. Overwriting in place reaches the same disk blocks on file systems that do
not copy on write (ext4 and others, with their default data mode); it cannot reach blocks a flash
controller has remapped by wear levelling (see README). A crash between the steps leaves the slot
that matches the recorded generation in use; the other slot is wiped at the next open.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from device.core.errors import StoreBusy, StoreError, describe
from device.core.files import PRIVATE_FILE, fsync_dir
from device.storage import db
from device.storage.db import (
    Database,
    connect,
    connect_read_only,
    has_table,
    integrity_problem,
    is_busy,
    is_damaged,
)

log = logging.getLogger(__name__)

KEYS_DB = "keys.sqlite"
KEK_FILE = "keys.kek"
SLOT_BYTES = 512
SLOT_MAGIC = b"ERK1"
GEN_BYTES = 8
KEY_BYTES = 32
NONCE_BYTES = 12
KEK_READ_TRIES = 5
SET_ASIDE = ".unreadable-"
"""A key store proven unreadable is renamed `keys.sqlite.unreadable-<unix time>` (and its KEK file
and journal alike); device/storage/quarantine.py lists, expires and destroys it."""
SCHEMA = """
CREATE TABLE wrapped_keys (clip_id TEXT PRIMARY KEY, wrapped BLOB NOT NULL);
CREATE TABLE kek (generation INTEGER NOT NULL);
"""


class KeyStoreError(RuntimeError):
    """The key store cannot be read: the keys it held are lost (and so are their clips)."""


class KekMissing(KeyStoreError):
    """The committed generation's key-encryption key is in neither slot of keys.kek."""

    def __init__(self, generation: int) -> None:
        super().__init__(f"the key-encryption key of generation {generation} is missing from "
                         f"{KEK_FILE}")
        self.generation = generation


def _slot_bytes(generation: int, kek: bytes) -> bytes:
    body = SLOT_MAGIC + generation.to_bytes(GEN_BYTES, "big") + kek
    return (body + hashlib.sha256(body).digest()).ljust(SLOT_BYTES, b"\0")


def _parse_slot(raw: bytes) -> tuple[int, bytes] | None:
    body_len = len(SLOT_MAGIC) + GEN_BYTES + KEY_BYTES
    body, digest = raw[:body_len], raw[body_len:body_len + 32]
    if len(raw) < body_len + 32 or not body.startswith(SLOT_MAGIC):
        return None
    if hashlib.sha256(body).digest() != digest:
        return None
    return int.from_bytes(body[4:4 + GEN_BYTES], "big"), body[4 + GEN_BYTES:]


class KekFile:
    """Two fixed slots, each written in place and fsynced: never renamed, never reallocated."""

    def __init__(self, path: Path) -> None:
        self.path = path
        created = not path.exists()
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        except OSError as exc:
            if exc.errno != errno.EROFS or created:
                raise
            self._fd = os.open(path, os.O_RDONLY)  # a read-only file system: reading still works
        if created or os.fstat(self._fd).st_size < 2 * SLOT_BYTES:
            self._write(0, bytes(2 * SLOT_BYTES))
            fsync_dir(path.parent)

    def slots(self) -> list[tuple[int, bytes] | None]:
        raw = os.pread(self._fd, 2 * SLOT_BYTES, 0)
        return [_parse_slot(raw[i * SLOT_BYTES:(i + 1) * SLOT_BYTES]) for i in (0, 1)]

    def write(self, generation: int, kek: bytes) -> None:
        self._write((generation % 2) * SLOT_BYTES, _slot_bytes(generation, kek))

    def erase_all_but(self, generation: int) -> None:
        """Overwrite (in place) every slot that does not hold `generation`."""
        for i, slot in enumerate(self.slots()):
            stale = slot is None or slot[0] != generation
            if stale and os.pread(self._fd, SLOT_BYTES, i * SLOT_BYTES) != bytes(SLOT_BYTES):
                self._write(i * SLOT_BYTES, bytes(SLOT_BYTES))

    def _write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.pwrite(self._fd, view, offset + len(data) - len(view)):]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class KeyStore:
    """Clip keys, wrapped by a KEK that is rotated on every delete (see the module docstring)."""

    def __init__(self, state_dir: Path, may_repair: bool = True) -> None:
        """`may_repair`: no other edge-recorder process has the state directory open, so a key
        store proven unreadable may be set aside. A lock or an I/O error is never proof."""
        self._dir = state_dir
        try:
            self._open()
        except (sqlite3.DatabaseError, KeyStoreError) as exc:
            self.close()
            self._set_aside(exc, may_repair)
            self._open()

    def _open(self) -> None:
        self.db = Database(connect(self._dir / KEYS_DB))
        self._kek_file = KekFile(self._dir / KEK_FILE)
        conn = self.db.conn
        if problem := integrity_problem(conn):
            raise KeyStoreError(f"{KEYS_DB} {problem}")
        if not has_table(conn, "wrapped_keys"):
            self._create()
        self.generation, self._kek = 0, AESGCM(bytes(KEY_BYTES))
        self._load_kek()
        if any(s is None or s[0] != self.generation for s in self._kek_file.slots()):
            self._erase_stale_slots()

    def _load_kek(self) -> None:
        """The committed generation and its KEK, read in one snapshot: a rotation in another
        process cannot commit in between (it waits for this read lock). Should the slot be gone
        all the same, the generation moved meanwhile: read again."""
        for _ in range(KEK_READ_TRIES):
            try:
                with self._snapshot() as conn:
                    self._current(conn)
                return
            except KekMissing as exc:
                if self._committed_generation() == exc.generation:
                    raise
        raise KeyStoreError(f"the key-encryption key kept moving while {KEK_FILE} was read")

    def _committed_generation(self) -> int | None:
        row = self.db.one("SELECT generation FROM kek")
        return int(row[0]) if row else None

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: what is read inside (the generation, the wrapped keys) is one
        committed state, and no rotation can commit until it ends."""
        with self.db.lock:
            conn = self.db.conn
            if conn.in_transaction:
                yield conn
                return
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _current(self, conn: sqlite3.Connection) -> AESGCM:
        """The KEK of the generation committed now. Another process (the CLI beside the daemon)
        may have rotated it: call inside a transaction, so that it cannot change meanwhile."""
        row = conn.execute("SELECT generation FROM kek").fetchone()
        if row is None:
            raise KeyStoreError(f"{KEYS_DB} records no key-encryption key")
        if int(row[0]) != self.generation:
            found = [s for s in self._kek_file.slots() if s and s[0] == int(row[0])]
            if not found:
                raise KekMissing(int(row[0]))
            self.generation, self._kek = int(row[0]), AESGCM(found[0][1])
        return self._kek

    def _erase_stale_slots(self) -> None:
        """A slot that is not the committed generation is what a crash left of a rotation. Under
        the write lock: a rotation in another process has either committed or not begun."""
        try:
            with self.db.transaction() as tx:
                self._current(tx)
                self._kek_file.erase_all_but(self.generation)
        except (sqlite3.OperationalError, OSError) as exc:  # e.g. a read-only file system
            log.warning("could not erase a stale key-encryption key slot: %s", exc)

    def _create(self) -> None:
        """A new store, or one from version 0.1 (plaintext keys): wrap what is there."""
        generation, kek = 1, AESGCM.generate_key(bit_length=256)
        self._kek_file.write(generation, kek)
        legacy = has_table(self.db.conn, "keys")
        with self.db.transaction() as tx:
            for statement in SCHEMA.strip().split(";\n"):
                tx.execute(statement)
            tx.execute("INSERT INTO kek (generation) VALUES (?)", (generation,))
            if legacy:
                aead = AESGCM(kek)
                for clip_id, key in tx.execute("SELECT clip_id, key FROM keys").fetchall():
                    tx.execute("INSERT INTO wrapped_keys VALUES (?, ?)",
                               (clip_id, _wrap(aead, clip_id, bytes(key))))
                tx.execute("DROP TABLE keys")
        if legacy:
            self.db.conn.execute("VACUUM")
            log.warning("key store upgraded: keys are now wrapped by a rotating key-encryption key")

    def _set_aside(self, exc: Exception, may_repair: bool) -> None:
        """Move a key store proven unreadable aside, so the device can start; report it once.
        Anything else is reported and nothing is changed."""
        path = self._dir / KEYS_DB
        if is_busy(exc):
            raise StoreBusy("the key store is in use by another process; nothing was changed "
                            f"({path} stayed locked for {db.BUSY_TIMEOUT_S:.0f} s; try again)")
        if not (isinstance(exc, KeyStoreError) or is_damaged(exc)):
            raise StoreError(f"the key store {path} cannot be opened ({describe(exc)}); "
                             "nothing was changed")
        if not may_repair:
            raise StoreError(f"the key store {path} cannot be read ({exc}); nothing was changed "
                             "while another edge-recorder process uses it: stop that one and run "
                             "any edge-recorder command to set the key store aside")
        stamp = f"{SET_ASIDE}{int(time.time())}"
        for name in (KEYS_DB, f"{KEYS_DB}-journal", KEK_FILE):
            if (self._dir / name).exists():
                os.replace(self._dir / name, self._dir / f"{name}{stamp}")
        fsync_dir(self._dir)
        log.error("the key store could not be read (%s); it was moved aside as %s%s and a new one "
                  "started: the clips it held are quarantined (`edge-recorder clips list "
                  "--quarantined`)", exc, KEYS_DB, stamp)

    # -- keys ---------------------------------------------------------------------------------------
    def put(self, clip_id: str, key: bytes) -> None:
        with self.db.transaction() as tx:
            tx.execute("INSERT INTO wrapped_keys (clip_id, wrapped) VALUES (?, ?)",
                       (clip_id, _wrap(self._current(tx), clip_id, key)))

    def get(self, clip_id: str) -> bytes | None:
        with self._snapshot() as conn:  # the generation and the wrapped key agree
            kek = self._current(conn)
            row = conn.execute("SELECT wrapped FROM wrapped_keys WHERE clip_id = ?",
                               (clip_id,)).fetchone()
        if row is None:
            return None
        try:
            return _unwrap(kek, clip_id, bytes(row[0]))
        except InvalidTag:
            log.error("the key of clip %s does not authenticate", clip_id)
            return None

    def ids(self) -> set[str]:
        return {r[0] for r in self.db.read("SELECT clip_id FROM wrapped_keys")}

    def destroy(self, ids: list[str]) -> None:
        """Crypto-erase: the keys go, and the KEK every earlier copy of them was wrapped by."""
        if not ids:
            return
        with self.db.transaction() as tx:
            old = self._current(tx)
            generation, kek = self.generation + 1, AESGCM.generate_key(bit_length=256)
            new = AESGCM(kek)
            self._kek_file.write(generation, kek)  # 1. the spare slot, before anything refers to it
            tx.executemany("DELETE FROM wrapped_keys WHERE clip_id = ?", [(i,) for i in ids])
            for cid, wrapped in tx.execute("SELECT clip_id, wrapped FROM wrapped_keys").fetchall():
                try:
                    key = _unwrap(old, cid, bytes(wrapped))
                except InvalidTag:  # damaged: useless under any KEK, so it goes too
                    tx.execute("DELETE FROM wrapped_keys WHERE clip_id = ?", (cid,))
                    continue
                tx.execute("UPDATE wrapped_keys SET wrapped = ? WHERE clip_id = ?",
                           (_wrap(new, cid, key), cid))
            tx.execute("UPDATE kek SET generation = ?", (generation,))
        self.generation, self._kek = generation, new  # 2. committed
        with self.db.transaction() as tx:  # 3. the old KEK, in place; under the write lock, so
            self._current(tx)              # that a rotation another process committed since
            self._kek_file.erase_all_but(self.generation)  # keeps its new slot

    def vacuum(self) -> None:
        self.db.conn.execute("VACUUM")

    def close(self) -> None:
        for part in (getattr(self, "db", None), getattr(self, "_kek_file", None)):
            if part is not None:
                part.close()


def _wrap(aead: AESGCM, clip_id: str, key: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + aead.encrypt(nonce, key, f"key/{clip_id}".encode())


def _unwrap(aead: AESGCM, clip_id: str, wrapped: bytes) -> bytes:
    return aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], f"key/{clip_id}".encode())


def keys_set_aside(db_path: Path, kek_path: Path) -> dict[str, bytes] | None:
    """The clip keys a set-aside key store still opens (read only, nothing written), or None when
    neither its table nor its KEK can be read."""
    try:
        conn = connect_read_only(db_path)
        try:
            generation = conn.execute("SELECT generation FROM kek").fetchone()
            rows = conn.execute("SELECT clip_id, wrapped FROM wrapped_keys").fetchall()
        finally:
            conn.close()
        with kek_path.open("rb") as f:
            raw = f.read(2 * SLOT_BYTES)
    except (sqlite3.Error, OSError):
        return None
    slots = [_parse_slot(raw[i * SLOT_BYTES:(i + 1) * SLOT_BYTES]) for i in (0, 1)]
    kek = next((s[1] for s in slots if s and generation and s[0] == generation[0]), None)
    if kek is None:
        return None
    keys = {}
    for clip_id, wrapped in rows:
        try:
            keys[str(clip_id)] = _unwrap(AESGCM(kek), str(clip_id), bytes(wrapped))
        except (InvalidTag, TypeError, ValueError):
            continue
    return keys


def erase_kek_file(path: Path) -> None:
    """Overwrite a KEK file in place with zeros (the same disk blocks, see the module docstring),
    then remove it: every key it wrapped, anywhere, is unreadable from here on."""
    fd = os.open(path, os.O_WRONLY)
    try:
        size = max(os.fstat(fd).st_size, 2 * SLOT_BYTES)
        zeros = memoryview(bytes(size))
        while zeros:
            zeros = zeros[os.pwrite(fd, zeros, size - len(zeros)):]
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
