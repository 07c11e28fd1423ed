"""What was set aside because it could not be read, and its one owner: clip files that failed to
authenticate or lost their key (`quarantine/<id>.clip`), key stores proven unreadable
(`keys.sqlite.unreadable-<t>` with its `keys.kek.unreadable-<t>`) and indexes proven corrupt
(`index.sqlite.corrupt-<t>`).

A set-aside key store may still open some of its clips, so the quarantine is kept to the same
promises as the clips: it is listed (`clips list --quarantined`, `doctor`), deleted (`clips delete
--quarantined` and `--all`), expired by retention.max_age and destroyed by `wipe`. A key store is
destroyed first, by overwriting its key-encryption key in place (crypto-erase, as for a delete): no
copy of a key it wrapped, anywhere on the disk, can be read after that. What was set aside together
goes together: a key store is destroyed with the oldest clip it opens, and every clip it opens with it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from device.core.files import ensure_private_dir, fsync_dir, size_of
from device.storage.keystore import KEK_FILE, KEYS_DB, SET_ASIDE, erase_kek_file, keys_set_aside

log = logging.getLogger(__name__)

FOLDER = "quarantine"
INDEX_SET_ASIDE = "index.sqlite.corrupt-"
CLIP, KEY_STORE, INDEX = "clip", "key_store", "index"


@dataclass(frozen=True)
class Item:
    kind: str
    """clip | key_store | index"""
    name: str
    """The clip id, or the set-aside file's name."""
    since: float
    """Unix time: when a clip was written (its file's time), when a key store or index was set aside."""
    bytes: int
    opened_by: str | None = None
    """For a clip: the set-aside key store that still opens it, if any."""
    keys: int | None = None
    """For a key store: how many keys it still opens (None: none can be read)."""

    def summary(self) -> dict[str, Any]:
        when = datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds")
        row: dict[str, Any] = {"quarantined": self.kind, **asdict(self), "since": when}
        del row["kind"]
        if self.kind != CLIP:
            del row["opened_by"]
        if self.kind != KEY_STORE:
            del row["keys"]
        return row


class Quarantine:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.folder = state_dir / FOLDER

    def put(self, clip_file: Path) -> None:
        """Set a clip file aside (its key, if the live key store holds it, is the caller's)."""
        if not clip_file.exists():
            return
        ensure_private_dir(self.folder)
        os.replace(clip_file, self.folder / clip_file.name)
        fsync_dir(clip_file.parent)
        fsync_dir(self.folder)

    # -- what is there ----------------------------------------------------------------------------
    def items(self) -> list[Item]:
        stores = self._key_stores()
        clips = self._clips({s.name: opened for s, opened in stores})
        return clips + [s for s, _ in stores] + self._indexes()

    def count(self) -> int:
        return len(self.items())

    def _key_stores(self) -> list[tuple[Item, set[str]]]:
        found = []
        for db_path in sorted(self.state_dir.glob(f"{KEYS_DB}{SET_ASIDE}*")):
            keys = keys_set_aside(db_path, self._kek_of(db_path))
            item = Item(KEY_STORE, db_path.name, _stamp(db_path.name),
                        sum(size_of(p) for p in self._parts(db_path)),
                        keys=None if keys is None else len(keys))
            found.append((item, set(keys or ())))
        return found

    def _clips(self, opened: dict[str, set[str]]) -> list[Item]:
        if not self.folder.exists():
            return []
        return [Item(CLIP, f.stem, f.stat().st_mtime, size_of(f),
                     opened_by=next((name for name, ids in opened.items() if f.stem in ids), None))
                for f in sorted(self.folder.iterdir())]

    def _indexes(self) -> list[Item]:
        return [Item(INDEX, p.name, _stamp(p.name), size_of(p))
                for p in sorted(self.state_dir.glob(f"{INDEX_SET_ASIDE}*"))]

    def _kek_of(self, db_path: Path) -> Path:
        return self.state_dir / db_path.name.replace(KEYS_DB, KEK_FILE, 1)

    def _parts(self, db_path: Path) -> list[Path]:
        """A set-aside key store's files: its KEK file first, then the database and journal."""
        stamp = db_path.name.removeprefix(KEYS_DB)
        return [self._kek_of(db_path), db_path, self.state_dir / f"{KEYS_DB}-journal{stamp}"]

    # -- destroying ---------------------------------------------------------------------------------
    def destroy(self, items: list[Item] | None = None) -> list[Item]:
        """Destroy the items given (default: everything): key stores first (crypto-erase), then
        clip files and indexes. Returns what was destroyed."""
        items = self.items() if items is None else items
        for item in sorted(items, key=lambda i: i.kind != KEY_STORE):
            if item.kind == KEY_STORE:
                self._erase_key_store(self.state_dir / item.name)
            elif item.kind == CLIP:
                (self.folder / f"{item.name}.clip").unlink(missing_ok=True)
            else:
                (self.state_dir / item.name).unlink(missing_ok=True)
        if items:
            fsync_dir(self.state_dir)
            if self.folder.exists():
                fsync_dir(self.folder)
            log.info("quarantine: destroyed %d item(s)", len(items))
        return items

    def _erase_key_store(self, db_path: Path) -> None:
        kek, *rest = self._parts(db_path)
        if kek.exists():
            erase_kek_file(kek)
        for path in rest:
            path.unlink(missing_ok=True)

    def expire(self, max_age_s: float, now: float | None = None) -> list[Item]:
        """Retention: items older than max_age go; a key store goes with the oldest clip it
        opens (or by its own age), and every clip it opens goes with it."""
        limit = (time.time() if now is None else now) - max_age_s
        items = self.items()
        stores = {i.name for i in items if i.kind == KEY_STORE and i.since < limit}
        stores |= {i.opened_by for i in items if i.kind == CLIP and i.opened_by and i.since < limit}
        doomed = [i for i in items if i.since < limit or i.name in stores or i.opened_by in stores]
        return self.destroy(doomed) if doomed else []


def _stamp(name: str) -> float:
    """The unix time at the end of a set-aside file's name (0 if it has none)."""
    tail = name.rsplit("-", 1)[-1]
    return float(tail) if tail.isdigit() else 0.0
