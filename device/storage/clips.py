"""The clips: each one an encrypted file (clips/<id>.clip, AES-256-GCM under a key of its own), its
key (device/storage/keystore.py) and its row in the index (device/storage/clip_rows.py).

Adding: encrypted file (temp, fsync, rename, fsync dir), then its key, then its row, each committed
with synchronous=FULL. Deleting: the rows, the remote deletes to queue, the request record, its
nonce and its count commit together first; then the keys are destroyed (crypto-erase: from here no
copy of the file can be read), then the files (device/storage/erasing.py). A crash between steps
leaves only pieces without a row, which the next open removes (device/storage/index.py). Nothing is
touched while the device only listens (P4). One lock serialises the listener's writer, the control
plane and the uploader.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import sqlite3
import time
import uuid
import wave
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from device import SAMPLE_RATE_HZ
from device.core.errors import StoreError, describe
from device.core.files import atomic_write, size_of
from device.storage import crypto
from device.storage.clip_rows import META_FIELDS, Clip
from device.storage.db import is_busy, iso
from device.storage.erasing import CLIP_SUFFIX
from device.storage.state import StateDir

log = logging.getLogger(__name__)

__all__ = ["Clip", "ClipStore", "retry_busy", "wav_bytes"]

TEMP_SUFFIX = ".tmp"
WAKE_FEATURES = "wake_features"
BUSY_RETRY_S = 60.0
"""How long storing a clip keeps trying while another process holds a lock (the audio waits in RAM)."""


@dataclass(frozen=True)
class Selection:
    """Which clips a delete means: ids, a recorded_at range [since, until), or everything."""

    ids: list[str] | None = None
    since: datetime | None = None
    until: datetime | None = None
    everything: bool = False


@dataclass(frozen=True)
class Request:
    """Who asked for a delete, and how it is to be recorded."""

    request_id: str | None = None
    body_hash: str = ""
    nonce: str | None = None
    reason: str = "command"
    remote: bool = True


class ClipStore:
    """The one owner of clips. Opening it opens its state directory (`self.state`, see
    device/storage/state.py), whose other owners a clip's life joins in one commit: the upload
    queue (`uploads`), the keys (`keys`), the quarantine (`quarantine`), and, through `state`,
    request records, preferences and stats."""

    def __init__(self, state_dir: Path) -> None:
        self.state = StateDir(state_dir)
        self.state_dir, self.clips_dir, self.alone = state_dir, self.state.clips_dir, self.state.alone
        self.keys, self.uploads = self.state.keys, self.state.uploads
        self.quarantine = self.state.quarantine
        self._rows, self._eraser, self._lock = self.state.rows, self.state.eraser, self.state.index.lock

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
        clip = Clip(id=cid, recorded_at=iso(recorded_at or datetime.now(UTC)), start_s=start_s,
                    end_s=end_s, wake_word=wake_word, wake_score=round(wake_score, 4),
                    transcript=transcript, sample_rate=SAMPLE_RATE_HZ, audio_file=cid + CLIP_SUFFIX)
        key = crypto.new_key()
        audio = wav_bytes(samples) if samples is not None else b""
        sealed = crypto.seal(key, cid, _header(clip, wake_features), audio)
        try:
            with self._lock:
                atomic_write(self.clips_dir / clip.audio_file, sealed, suffix=TEMP_SUFFIX)
                retry_busy(lambda: self.keys.put(cid, key))
                retry_busy(lambda: self._insert(clip, key, eligible if samples is not None else None))
        except (OSError, sqlite3.Error) as exc:
            (self.clips_dir / clip.audio_file).unlink(missing_ok=True)
            with contextlib.suppress(sqlite3.Error):  # best effort: the next sweep also removes it
                self.keys.destroy([cid])
            raise StoreError(f"could not store clip in '{self.state_dir}': {describe(exc)}") from None
        return clip

    def _insert(self, clip: Clip, key: bytes, eligible: Callable[[], str | None] | None) -> None:
        with self.state.atomically():
            self._rows.insert(clip, key)
            if eligible is not None and (scope := eligible()):
                self.uploads.enqueue(clip.id, scope, recorded_at=time.time())

    # -- reading ----------------------------------------------------------------------------------
    def all(self) -> list[Clip]:
        return [self._opened(row) for row in self._rows.all()]

    def get(self, clip_id: str) -> Clip:
        row = self._rows.get(clip_id)
        if row is None:
            raise StoreError(f"no clip with id {clip_id!r}; `edge-recorder clips list` shows them")
        return self._opened(row)

    def _opened(self, row: Clip) -> Clip:
        """A row with its transcript decrypted (None if its key is gone or it fails)."""
        key = self.keys.get(row.id)
        sealed: Any = row.transcript  # as stored: bytes (see ClipRows)
        try:
            text = crypto.unseal_text(key, row.id, sealed) if key else None
        except crypto.TamperedError:
            text = None
        return replace(row, transcript=text)

    def read_audio(self, clip: Clip) -> bytes:
        """The clip's WAV, decrypted and authenticated. A clip that fails is quarantined."""
        if not clip.audio_file:
            raise StoreError(f"clip {clip.id} was uploaded and its local copy removed "
                             "(upload.keep_local = false): there is no audio here to read")
        with self._lock:
            try:
                _, audio = self._unseal(clip)
            except (crypto.TamperedError, FileNotFoundError) as exc:
                self._quarantine(clip)
                raise StoreError(f"clip {clip.id} cannot be read and was quarantined: {exc}") from None
        if not audio:
            raise StoreError(f"clip {clip.id} was saved as a transcript only "
                             "(recorder.save = \"transcript\"): there is no audio to read")
        return audio

    def _unseal(self, clip: Clip) -> tuple[dict[str, Any], bytes]:
        key = self.keys.get(clip.id)
        if key is None or not clip.audio_file:
            raise crypto.TamperedError(f"clip {clip.id} has no key or no local audio")
        return crypto.unseal(key, clip.id, (self.clips_dir / clip.audio_file).read_bytes())

    def wake_features(self, clip: Clip) -> np.ndarray | None:
        """The owner verifier's view of the clip's wake, if it was kept (see add)."""
        with self._lock:
            try:
                meta, _ = self._unseal(clip)
            except (crypto.TamperedError, FileNotFoundError):
                return None  # a delete follows: reading the audio is where quarantine happens
        kept = meta.get(WAKE_FEATURES)
        if not kept:
            return None
        return np.frombuffer(base64.b64decode(kept["float32"]), "<f4").reshape(kept["shape"])

    def _quarantine(self, clip: Clip) -> None:
        """Keep the bad file aside for inspection; its key and row are destroyed."""
        if clip.audio_file:
            self.quarantine.put(self.clips_dir / clip.audio_file)
        self.keys.destroy([clip.id])
        with self.state.atomically():
            self.uploads.forget([clip.id], None, remote=False)
            self._rows.delete([clip.id])
        log.error("clip %s failed authentication and was quarantined", clip.id)

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
        return self._rows.newest_since(since)

    def latest_ids(self, n: int) -> list[str]:
        """The ids of the n clips stored last, newest first."""
        return self._rows.latest_ids(n)

    def count(self) -> int:
        return self._rows.count()

    def bytes_used(self) -> list[tuple[str, str, int]]:
        """(id, recorded_at, size of its file) for every clip, oldest first."""
        return [(cid, at, size_of(self.clips_dir / f) if f else 0) for cid, at, f in self._rows.by_age()]

    # -- deleting -------------------------------------------------------------------------------
    def delete(
        self, ids: list[str] | None = None, since: datetime | None = None,
        until: datetime | None = None, everything: bool = False, request_id: str | None = None,
        remote: bool = True, body_hash: str = "", nonce: str | None = None, reason: str = "command",
    ) -> dict[str, Any]:
        """Delete the clips selected by ids, a recorded_at range [since, until), or everything
        (and then everything quarantined too).

        Durable and complete when it returns: the rows, the remote deletes to queue, the request
        record (state `erasing`), a signed command's `nonce` and a reject's count commit together;
        then the keys are destroyed (crypto-erase) and the files removed; then the record says
        `done`. If the erase fails (a lock held too long, a full disk), StoreError is raised and the
        same request, run again, finishes the erase before it answers. A request id seen before
        with the same `body_hash` returns its result marked replayed; with another body it is
        refused. Returns {"ids", "not_found", "remote_pending", "replayed"}.
        """
        which = Selection(ids, since, until, everything)
        asked = Request(request_id, body_hash, nonce, reason, remote)
        self._eraser.finish_pending()
        outcome: dict[str, Any] = {}
        try:
            self._eraser.with_reserve(lambda: outcome.update(self._delete_rows(which, asked)),
                                      doomed=lambda: [c.id for c in self._select(which)])
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"could not delete in '{self.state_dir}' ({describe(exc)}); "
                             "nothing was deleted, try again") from None
        result = outcome["result"]
        if outcome["state"] == "erasing":
            self._eraser.erase(result["ids"], then=lambda: self._done(request_id))
        if everything and not outcome["replayed"]:
            self._destroy_quarantine()
        return {**result, "replayed": outcome["replayed"]}

    def _delete_rows(self, which: Selection, asked: Request) -> dict[str, Any]:
        requests = self.state.requests
        with self.state.atomically():
            if asked.request_id and (done := requests.result(asked.request_id, asked.body_hash)):
                # a request whose erase was interrupted is answered for the first time now
                return {"result": done[0], "state": done[1], "replayed": done[1] == "done"}
            if asked.nonce is not None:
                requests.use_nonce(asked.nonce)
            found = [c.id for c in self._select(which)]
            pending = self.uploads.forget(found, asked.request_id, remote=asked.remote)
            self._rows.delete(found)
            self._eraser.doom(found)
            result = {"ids": found, "not_found": [i for i in which.ids or [] if i not in set(found)],
                      "remote_pending": pending}
            if asked.request_id:
                requests.record(asked.request_id, "delete", result, asked.body_hash)
            if asked.reason == "reject" and found:
                self.state.stats.add({"rejected": len(found)})
        return {"result": result, "state": "erasing", "replayed": False}

    def _select(self, which: Selection) -> list[Clip]:
        return self._rows.select(which.ids, which.since, which.until, which.everything)

    def _done(self, request_id: str | None) -> None:
        if request_id:
            self.state.requests.done(request_id)

    def _destroy_quarantine(self) -> None:
        try:
            self.quarantine.destroy()
        except OSError as exc:
            raise StoreError(f"the clips are deleted, but what was quarantined could not be "
                             f"destroyed yet ({describe(exc)}); run the delete again") from None

    def forget_local_copy(self, clip_id: str) -> None:
        """After a confirmed upload with keep_local off: drop the audio and transcript here, keep
        the row (marked uploaded) so that a later delete can still reach the remote copy."""
        with self._lock:
            clip = self.get(clip_id)
            self._rows.drop_local_copy(clip_id)
            self._eraser.remove_files([self.clips_dir / clip.audio_file])

    def wipe(self) -> int:
        """Destroy every key and every set-aside key store (crypto-erase), then every clip file,
        everything quarantined and every record. Remote deletes the owner was told are pending
        are kept: they hold no audio. Returns the number of clips wiped."""
        try:
            with self._lock:
                n = self.count()
                self._eraser.with_reserve(lambda: self.keys.destroy(list(self.keys.ids())),
                                          doomed=lambda: list(self._rows.files()))
                self.quarantine.destroy()
                self._eraser.with_reserve(self.state.clear)
                self._eraser.remove_files(list(self.clips_dir.iterdir()))
                self.state.compact()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"could not wipe '{self.state_dir}': {describe(exc)}") from None
        return n

    def close(self) -> None:
        with self._lock:
            self.state.close()


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


def _header(clip: Clip, wake_features: np.ndarray | None) -> dict[str, Any]:
    """What a clip file's authenticated header carries: its row, and the wake's features."""
    meta: dict[str, Any] = {f: getattr(clip, f) for f in META_FIELDS}
    if wake_features is not None:
        meta[WAKE_FEATURES] = {
            "shape": list(wake_features.shape),
            "float32": base64.b64encode(wake_features.astype("<f4").tobytes()).decode()}
    return meta


def wav_bytes(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE_HZ)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()
