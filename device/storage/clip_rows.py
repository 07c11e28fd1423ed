"""The `clips` table and its one owner: one row per clip, the transcript encrypted under the clip's
own key. What a row means (its file, its key, its life) is device/storage/clips.py's; this module
only reads and writes the rows, joining whatever transaction is open (see db.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from device.storage import crypto
from device.storage.db import Database, iso

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
"""
COLUMNS = ("id", "recorded_at", "start_s", "end_s", "wake_word", "wake_score", "transcript",
           "sample_rate", "audio_file")
META_FIELDS = COLUMNS[:-1]
"""What a clip file's authenticated header carries: enough to rebuild its row."""
SELECT = f"SELECT {', '.join(COLUMNS)} FROM clips"


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


class ClipRows:
    """Rows as stored: a Clip read here carries its transcript still sealed (bytes or None)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def insert(self, clip: Clip, key: bytes) -> None:
        values = {**asdict(clip), "transcript": crypto.seal_text(key, clip.id, clip.transcript)}
        with self._db.transaction() as tx:
            tx.execute(f"INSERT INTO clips ({', '.join(COLUMNS)}) VALUES "
                       f"({', '.join('?' * len(COLUMNS))})", [values[c] for c in COLUMNS])

    def all(self) -> list[Clip]:
        return [Clip(*r) for r in self._db.read(f"{SELECT} ORDER BY recorded_at")]

    def get(self, clip_id: str) -> Clip | None:
        row = self._db.one(f"{SELECT} WHERE id = ?", (clip_id,))
        return None if row is None else Clip(*row)

    def select(self, ids: list[str] | None, since: datetime | None, until: datetime | None,
               everything: bool) -> list[Clip]:
        """By ids (each once, in the order given), a recorded_at range [since, until), or all."""
        if everything:
            rows = self._db.read(SELECT)
        elif ids is not None:
            rows = [r for i in dict.fromkeys(ids) for r in self._db.read(f"{SELECT} WHERE id = ?", (i,))]
        else:
            rows = self._db.read(f"{SELECT} WHERE recorded_at >= ? AND recorded_at < ?",
                                 (iso(since) if since else "", iso(until) if until else "9999"))
        return [Clip(*r) for r in rows]

    def files(self) -> dict[str, str]:
        """Every clip's id and file name ('' once its local copy is gone)."""
        return {r[0]: r[1] for r in self._db.read("SELECT id, audio_file FROM clips")}

    def by_age(self) -> list[tuple[str, str, str]]:
        """(id, recorded_at, file name) of every clip, oldest first."""
        return [(r[0], r[1], r[2]) for r in
                self._db.read("SELECT id, recorded_at, audio_file FROM clips ORDER BY recorded_at")]

    def newest_since(self, since: datetime) -> list[str]:
        """The id of the clip stored last, if it was recorded at or after `since` (else [])."""
        return [r[0] for r in self._db.read(
            "SELECT id FROM clips WHERE rowid = (SELECT MAX(rowid) FROM clips) AND recorded_at >= ?",
            (iso(since),))]

    def latest_ids(self, n: int) -> list[str]:
        """The n clips stored last, newest first (the order they were stored in, which a clock
        change cannot reorder)."""
        return [r[0] for r in self._db.read("SELECT id FROM clips ORDER BY rowid DESC LIMIT ?", (n,))]

    def count(self) -> int:
        row = self._db.one("SELECT COUNT(*) FROM clips")
        return int(row[0]) if row else 0

    def delete(self, ids: list[str]) -> None:
        with self._db.transaction() as tx:
            tx.executemany("DELETE FROM clips WHERE id = ?", [(i,) for i in ids])

    def drop_local_copy(self, clip_id: str) -> None:
        """The row stays (so a remote delete can still be asked for); audio and transcript go."""
        with self._db.transaction() as tx:
            tx.execute("UPDATE clips SET audio_file = '', transcript = NULL WHERE id = ?", (clip_id,))

    def clear(self) -> None:
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM clips")
