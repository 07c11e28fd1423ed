"""Consent-gated uploads to the owner's HTTPS endpoint, and remote deletes, off the capture path.

A durable queue in the index (table `uploads`, rows made with the clip only if consent covered it);
workers take due jobs, re-check consent, and POST multipart `metadata` + `audio` with
`Idempotency-Key: <clip id>`. Retries use exponential backoff with jitter (429 honours Retry-After),
bounded by max_attempts, then `failed` with a reason. Consent is re-checked while the body is sent,
so a revoke stops even a request in flight. Remote deletes (`DELETE <url>/<id>`) retry until the
server confirms with 2xx or 404.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from urllib3.filepost import encode_multipart_formdata

from device import __version__, consent
from device.config import UploadSettings
from device.errors import StoreError
from device.events import EventSink, event
from device.files import read_secret
from device.store import Clip, ClipStore

log = logging.getLogger(__name__)

POLL_S = 0.5
CHUNK = 16 * 1024
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
DIGIT_RUN = re.compile(r"\d{4,}")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")


def redact(text: str) -> str:
    """Digit runs of four or more (card, phone, PIN numbers) and e-mail addresses."""
    return DIGIT_RUN.sub("[number]", EMAIL.sub("[email]", text))


def metadata(clip: Clip, scope: set[str], redacting: bool) -> dict[str, Any]:
    """The allow-list: nothing here identifies the owner or the device (P2)."""
    hour = datetime.fromisoformat(clip.recorded_at).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    meta: dict[str, Any] = {
        "clip_id": clip.id,
        "recorded_hour": hour.isoformat().replace("+00:00", "Z"),
        "duration_s": clip.duration_s,
        "sample_rate": clip.sample_rate,
        "wake_word": clip.wake_word,
        "software_version": __version__,
    }
    if "transcript" in scope and clip.transcript is not None:
        meta["transcript"] = redact(clip.transcript) if redacting else clip.transcript
    return meta


class Withdrawn(Exception):
    """Consent was revoked while the request body was being sent."""


class GatedBody:
    """A request body read in chunks: paced to a bandwidth limit, stopped if consent goes."""

    def __init__(self, data: bytes, max_bytes_per_s: int, allowed: Callable[[], bool]) -> None:
        self._data, self._rate, self._allowed = data, max_bytes_per_s, allowed
        self._sent, self._started = 0, time.monotonic()
        self.withdrawn = False

    def __len__(self) -> int:
        return len(self._data)

    def read(self, size: int = -1) -> bytes:
        if self._rate:
            wait = self._started + self._sent / self._rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        if not self._allowed():  # checked after any wait, right before the bytes go out
            self.withdrawn = True
            raise Withdrawn("consent was revoked during the upload")
        n = CHUNK if size is None or size < 0 else min(size, CHUNK)
        chunk = self._data[self._sent : self._sent + n]
        self._sent += len(chunk)
        return chunk


@dataclass(frozen=True)
class Outcome:
    done: bool
    reason: str = ""
    retry_after_s: float | None = None


def classify(resp: requests.Response) -> Outcome:
    if 200 <= resp.status_code < 300:
        return Outcome(True)
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    permanent = resp.status_code not in RETRYABLE_STATUS
    return Outcome(False, f"{'permanent: ' if permanent else ''}HTTP {resp.status_code}", retry_after)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Uploader:
    def __init__(self, settings: UploadSettings, store: ClipStore, events: EventSink) -> None:
        assert settings.url, "Uploader needs upload.url"
        self.settings = settings
        self.url = settings.url.rstrip("/")
        self._store = store
        self._events = events
        self._token = settings.token or read_secret(settings.token_file, "upload.token")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._inflight: set[str] = set()
        self._session = requests.Session()
        # Passed on every request: requests lets REQUESTS_CA_BUNDLE override Session.verify, which
        # would silently ignore the owner's upload.ca_file.
        self._verify: bool | str = (settings.ca_file or True) if settings.verify else False
        self._threads = [
            threading.Thread(target=self._work, name=f"uploader-{i}", daemon=True)
            for i in range(settings.concurrency)
        ]

    def start(self) -> None:
        log.info("uploads: to %s (consent is checked before every request)", self.url)
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            if t.is_alive():
                t.join()
        self._session.close()

    # -- scheduling -------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            job = self._claim()
            if job is None:
                self._wake.wait(POLL_S)
                self._wake.clear()
                continue
            kind, clip_id = job
            try:
                if kind == "upload":
                    self._upload(clip_id)
                else:
                    self._remote_delete(clip_id)
            except Exception:  # a worker must outlive any one job
                log.exception("uploads: %s of %s failed unexpectedly", kind, clip_id)
                self._reschedule("uploads" if kind == "upload" else "remote_deletes", clip_id, None)
            finally:
                with self._lock:
                    self._inflight.discard(clip_id)

    def _claim(self) -> tuple[str, str] | None:
        now = time.time()
        with self._lock:  # the in-flight set and the pick are one step; the index is only read
            busy = list(self._inflight) or [""]
            marks = ",".join("?" * len(busy))
            for kind, sql in (
                (
                    "delete",
                    f"SELECT clip_id FROM remote_deletes WHERE next_at <= ? "
                    f"AND clip_id NOT IN ({marks}) ORDER BY next_at LIMIT 1",
                ),
                (
                    "upload",
                    f"SELECT clip_id FROM uploads WHERE state = 'queued' AND next_at <= ? "
                    f"AND clip_id NOT IN ({marks}) ORDER BY next_at LIMIT 1",
                ),
            ):
                rows = self._store.read(sql, (now, *busy))
                if rows:
                    self._inflight.add(rows[0][0])
                    return kind, rows[0][0]
        return None

    def _backoff_s(self, attempts: int) -> float:
        s = self.settings
        return min(s.backoff_max_s, s.backoff_initial_s * 2 ** max(0, attempts - 1)) * random.uniform(
            0.5, 1.0
        )

    def _reschedule(self, table: str, clip_id: str, retry_after_s: float | None) -> int:
        with self._store.transaction() as db:
            db.execute(f"UPDATE {table} SET attempts = attempts + 1 WHERE clip_id = ?", (clip_id,))
            row = db.execute(f"SELECT attempts FROM {table} WHERE clip_id = ?", (clip_id,)).fetchone()
            attempts = row[0] if row else 0
            delay = retry_after_s if retry_after_s is not None else self._backoff_s(attempts)
            db.execute(f"UPDATE {table} SET next_at = ? WHERE clip_id = ?", (time.time() + delay, clip_id))
        return int(attempts)

    # -- uploads ----------------------------------------------------------------------------------
    def _upload(self, clip_id: str) -> None:
        scope = self._effective_scope(clip_id)
        if scope is None:
            self._finish(clip_id, "withheld", "consent does not cover this clip now")
            return
        clip = self._store.get(clip_id)
        try:
            audio = self._store.read_audio(clip)  # authenticated; a tampered clip is never sent
        except StoreError as exc:
            self._finish(clip_id, "failed", str(exc))
            return
        body, content_type = encode_multipart_formdata(
            {
                "metadata": (
                    "metadata.json",
                    json.dumps(metadata(clip, scope, self.settings.redact)),
                    "application/json",
                ),
                "audio": (f"{clip.id}.wav", audio, "audio/wav"),
            }
        )
        gated = GatedBody(
            body, self.settings.max_bytes_per_s, lambda: self._effective_scope(clip_id) is not None
        )
        headers = {"Content-Type": content_type, "Idempotency-Key": clip.id, **self._auth()}
        try:
            resp = self._session.post(
                self.url, data=gated, headers=headers, timeout=self.settings.timeout_s, verify=self._verify
            )
            outcome = classify(resp)
        except (requests.RequestException, Withdrawn) as exc:
            if gated.withdrawn:
                self._finish(clip_id, "withheld", "consent was revoked during the upload")
                return
            outcome = Outcome(False, _short(exc))
        if outcome.done:
            self._uploaded(clip)
        elif (
            outcome.reason.startswith("permanent")
            or self._reschedule("uploads", clip_id, outcome.retry_after_s) >= self.settings.max_attempts
        ):
            self._finish(clip_id, "failed", outcome.reason)
        else:
            log.info("uploads: %s will be retried (%s)", clip_id, outcome.reason)

    def _effective_scope(self, clip_id: str) -> set[str] | None:
        """What may be sent now: the clip's recorded scope, narrowed by consent as it is now."""
        now = consent.read(self._store).covers
        rows = self._store.read(
            "SELECT scope FROM uploads WHERE clip_id = ? AND state = 'queued'", (clip_id,)
        )
        if not rows or now is None:
            return None
        return set(rows[0][0].split(",")) & set(now.split(","))

    def _uploaded(self, clip: Clip) -> None:
        with self._store.transaction() as db:
            db.execute(
                "UPDATE uploads SET state = 'uploaded', last_error = NULL WHERE clip_id = ?", (clip.id,)
            )
        if not self.settings.keep_local:
            self._store.forget_local_copy(clip.id)
        log.info("uploads: %s uploaded", clip.id)
        self._events.emit(event("upload", id=clip.id, status="uploaded"))

    def _finish(self, clip_id: str, status: str, reason: str) -> None:
        with self._store.transaction() as db:
            if status == "withheld":
                db.execute("DELETE FROM uploads WHERE clip_id = ?", (clip_id,))
            else:
                db.execute(
                    "UPDATE uploads SET state = ?, last_error = ? WHERE clip_id = ?",
                    (status, reason, clip_id),
                )
        log.warning("uploads: %s %s: %s", clip_id, status, reason)
        self._events.emit(event("upload", id=clip_id, status=status, reason=reason))

    # -- remote deletes ---------------------------------------------------------------------------
    def _remote_delete(self, clip_id: str) -> None:
        try:
            resp = self._session.delete(
                f"{self.url}/{clip_id}",
                headers=self._auth(),
                timeout=self.settings.timeout_s,
                verify=self._verify,
            )
            confirmed = 200 <= resp.status_code < 300 or resp.status_code == 404
            reason = f"HTTP {resp.status_code}"
        except requests.RequestException as exc:
            confirmed, reason = False, _short(exc)
        if not confirmed:
            log.info("uploads: remote delete of %s will be retried (%s)", clip_id, reason)
            self._reschedule("remote_deletes", clip_id, None)
            return
        with self._store.transaction() as db:
            row = db.execute("SELECT request_id FROM remote_deletes WHERE clip_id = ?", (clip_id,)).fetchone()
            db.execute("DELETE FROM remote_deletes WHERE clip_id = ?", (clip_id,))
        log.info("uploads: remote copy of %s deleted", clip_id)
        self._events.emit(
            event(
                "deleted",
                request_id=row[0] if row else None,
                ids=[],
                not_found=[],
                remote={"status": "confirmed", "confirmed": [clip_id]},
            )
        )

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}"
