"""The clip store: a state directory (0700) with an SQLite index and one WAV file per clip (0600).

A clip is written as: audio to a temp file, fsync, rename, fsync the directory; then its index row
in one transaction with synchronous=FULL. Nothing here is touched while the device only listens (P4).
"""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import uuid
import wave
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
"""
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
        try:
            ensure_private_dir(state_dir)
            ensure_private_dir(self.clips_dir)
            self._db = self._open(state_dir / "index.sqlite")
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
    ) -> Clip:
        clip = Clip(
            id=uuid.uuid4().hex,
            recorded_at=(recorded_at or datetime.now(UTC)).isoformat(timespec="milliseconds"),
            start_s=start_s, end_s=end_s, wake_word=wake_word, wake_score=round(wake_score, 4),
            transcript=transcript, sample_rate=SAMPLE_RATE_HZ, audio_file="",
        )
        clip = Clip(**{**asdict(clip), "audio_file": f"{clip.id}.wav"})
        try:
            atomic_write(self.clips_dir / clip.audio_file, wav_bytes(samples))
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    f"INSERT INTO clips ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                    [getattr(clip, c) for c in COLUMNS],
                )
        except (OSError, sqlite3.Error) as exc:
            (self.clips_dir / clip.audio_file).unlink(missing_ok=True)
            raise StoreError(f"could not store clip in '{self.state_dir}': {_reason(exc)}") from None
        return clip

    def all(self) -> list[Clip]:
        rows = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM clips ORDER BY recorded_at")
        return [Clip(*row) for row in rows]

    def get(self, clip_id: str) -> Clip:
        row = self._db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM clips WHERE id = ?", (clip_id,)
        ).fetchone()
        if row is None:
            raise StoreError(f"no clip with id {clip_id!r}; `edge-recorder clips list` shows them")
        return Clip(*row)

    def audio_path(self, clip: Clip) -> Path:
        return self.clips_dir / clip.audio_file

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM clips").fetchone()[0])

    def delete(self, ids: list[str]) -> tuple[list[str], list[str]]:
        """Delete clips durably: index rows first (committed), then files. Returns (deleted,
        not_found)."""
        known = [c for c in (self._find(i) for i in ids) if c is not None]
        missing = [i for i in ids if i not in {c.id for c in known}]
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM clips WHERE id = ?", [(c.id,) for c in known])
        for clip in known:
            self.audio_path(clip).unlink(missing_ok=True)
        if known:
            fsync_dir(self.clips_dir)
        return [c.id for c in known], missing

    def _find(self, clip_id: str) -> Clip | None:
        try:
            return self.get(clip_id)
        except StoreError:
            return None

    def close(self) -> None:
        self._db.close()


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
