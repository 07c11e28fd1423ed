"""Consent-gated uploads to the owner's HTTPS endpoint, and remote deletes, off the capture path.

A durable queue in the index (table `uploads`, rows made with the clip only if consent covered it);
workers take due jobs, re-check consent, and POST multipart `metadata` + `audio` with
`Idempotency-Key: <clip id>`. Retries use exponential backoff with jitter (429 honours Retry-After),
bounded by max_attempts, then `failed` with a reason. Consent is re-checked while the body is sent,
so a revoke stops even a request in flight. Remote deletes (`DELETE <url>/<id>`) retry until the
server confirms with 2xx or 404. Only a reply's status and headers are used: its body is read (and
dropped) up to MAX_REPLY_BYTES, then the connection is closed, so a server that answers with a
gigabyte cannot take the speaker's memory.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.exceptions
from urllib3.filepost import encode_multipart_formdata

from device import __version__
from device.control import consent
from device.core import events
from device.core.config import UploadSettings
from device.core.errors import ConfigError, StoreError, describe
from device.core.events import EventSink, UploadStatus
from device.core.files import read_secret
from device.storage.clips import Clip, ClipStore
from device.storage.upload_queue import REMOTE_DELETE, UPLOAD

log = logging.getLogger(__name__)

POLL_S = 0.5
STOP_GRACE_S = 5.0
"""A stop lets the requests on the wire finish for this long, then cuts them off (each is sent
again at the next start): the daemon's whole stop stays well within systemd's TimeoutStopSec=30."""
CHUNK = 16 * 1024
MAX_REPLY_BYTES = 64 * 1024
"""The most of a reply's body ever read. A short body is read to its end (the connection can be
reused); a longer one is cut off by closing the connection."""
PERMANENT_STATUS = {400, 404, 405, 410, 411, 413, 414, 415, 422}
"""The request itself is wrong: sending it again cannot help. Anything else (401 and 5xx included:
a token can be fixed, a server can come back) is retried while the clip is kept."""
MAX_RETRY_AFTER_S = 3600.0
"""A server asking to wait longer than this (e.g. 1,157 days) is asked again after an hour."""
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


def drain(resp: requests.Response) -> None:
    """Read and drop a streamed reply's body, at most MAX_REPLY_BYTES of it and as sent (a
    compressed body is never inflated), then close it. Errors in the body change nothing: the
    status line and headers have already said what happened."""
    read = 0
    try:
        while read <= MAX_REPLY_BYTES:
            chunk = resp.raw.read(CHUNK, decode_content=False)
            if not chunk:
                break
            read += len(chunk)
    except (urllib3.exceptions.HTTPError, OSError):
        pass
    finally:
        resp.close()  # after the whole body: back to the pool; before: the connection is closed


@dataclass(frozen=True)
class Outcome:
    done: bool
    reason: str = ""
    retry_after_s: float | None = None


def classify(resp: requests.Response) -> Outcome:
    if 200 <= resp.status_code < 300:
        return Outcome(True)
    if 300 <= resp.status_code < 400:
        where = resp.headers.get("Location", "nowhere")
        return Outcome(False, f"permanent: HTTP {resp.status_code}: the endpoint redirects to {where}; "
                              "redirects are never followed, set upload.url to the final address")
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    permanent = resp.status_code in PERMANENT_STATUS
    return Outcome(False, f"{'permanent: ' if permanent else ''}HTTP {resp.status_code}", retry_after)


def answer(resp: requests.Response) -> str:
    """The server's answer as the log keeps it: status code and reason phrase."""
    return f"HTTP {resp.status_code} {resp.reason or ''}".strip()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait, from either form of the header, capped at MAX_RETRY_AFTER_S."""
    if not value:
        return None
    if value.strip().isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, (when - datetime.now(UTC)).total_seconds()))


class Cutter:
    """The sockets one request uses, so that its deadline or a stop can cut it off; one that comes
    after the cut is cut as it is used. It holds a duplicate of each socket's descriptor: the TLS
    wrapper takes the TCP socket's own over while it shakes hands, and a shutdown through either
    ends the connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._twins: list[socket.socket] = []
        self._cut = self._closed = False

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                twin = socket.socket(fileno=os.dup(sock.fileno()))
            except OSError:
                return
            self._twins.append(twin)
            if not self._cut:
                return
        self._shut(twin)

    def cut(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._cut = True
            for twin in self._twins:
                self._shut(twin)

    def close(self) -> None:
        """The request is over: its duplicates are let go (the connection itself stays pooled)."""
        with self._lock:
            self._closed = True
            for twin in self._twins:
                twin.close()
            self._twins.clear()

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Deadline(threading.local):
    """The current thread's request."""

    cutter: Cutter | None = None


_deadline = _Deadline()


class _TrackedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        """The TCP socket, tracked before the TLS handshake: a server that takes the connection
        and never answers the handshake is cut off too."""
        sock = super()._new_conn()
        if _deadline.cutter is not None:
            _deadline.cutter.track(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if isinstance(self.sock, socket.socket) and _deadline.cutter is not None:
            _deadline.cutter.track(self.sock)  # a connection taken from the pool
        super().request(*args, **kwargs)


class _TrackedHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection

    def _put_conn(self, conn: Any) -> None:
        """Back to the pool, the connection is no longer this request's: its deadline must not
        cut the next request that takes it."""
        if _deadline.cutter is not None:
            _deadline.cutter.close()
        super()._put_conn(conn)


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """Every request gets a total deadline, not only a per-read timeout: a server that answers one
    byte a second would otherwise hold an upload worker (and every job behind it) for ever. Through
    a proxy (HTTPS_PROXY) too."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _tracked(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        return _tracked(super().proxy_manager_for(proxy, **proxy_kwargs))


def _tracked(manager: Any) -> Any:
    manager.pool_classes_by_scheme = {**manager.pool_classes_by_scheme,
                                      "https": _TrackedHTTPSConnectionPool}
    return manager


@contextmanager
def deadline(seconds: float) -> Iterator[Cutter]:
    """Shut down the sockets of the request made inside, if it is still running after `seconds`
    (or when the cutter it yields is used sooner)."""
    cutter = _deadline.cutter = Cutter()
    timer = threading.Timer(seconds, cutter.cut)
    timer.daemon = True
    timer.start()
    try:
        yield cutter
    finally:
        timer.cancel()
        _deadline.cutter = None
        cutter.close()


class Uploader:
    def __init__(self, settings: UploadSettings, store: ClipStore, events: EventSink) -> None:
        assert settings.url, "Uploader needs upload.url"
        if settings.ca_file and not Path(settings.ca_file).expanduser().is_file():
            raise ConfigError(f"upload.ca_file '{settings.ca_file}' does not exist; set it to the "
                              "CA certificate of your upload server, or remove it to use the system's")
        self.settings = settings
        self.url = settings.url.rstrip("/")
        self.host = settings.host or ""
        """Where requests go, as the "what left this device" log names it."""
        self._store = store
        self._queue = store.uploads
        self._events = events
        self._token = settings.token or read_secret(settings.token_file, "upload.token")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight: set[str] = set()
        self._on_the_wire: set[Cutter] = set()
        self._cutting = False
        """A stop's grace is over: requests on the wire are cut off, and none starts."""
        self._session = requests.Session()
        self._session.mount("https://", DeadlineAdapter())
        self._verify = verify_setting(settings)
        self._threads = [
            threading.Thread(target=self._work, name=f"uploader-{i}", daemon=True)
            for i in range(settings.concurrency)
        ]

    def start(self) -> None:
        """Also takes back what a killed uploader left `sending`: the one process that serves a
        state directory (app.py's control lock) is its one uploader, whoever else holds the
        store open (`edge-recorder web` does for good, so the store's own recovery at an open
        that has it alone may never come)."""
        log.info("uploads: to %s (consent is checked before every request)", self.url)
        self._queue.recover()
        for t in self._threads:
            t.start()

    def close(self) -> None:
        """Requests on the wire may finish for STOP_GRACE_S; then they are cut off (and sent again
        at the next start), so that a slow server never holds up the daemon's stop."""
        self._stop.set()
        self._queue.wake()
        if not self._joined(STOP_GRACE_S):
            with self._lock:
                self._cutting = True
                cutters = list(self._on_the_wire)
            log.info("uploads: stopping: %d request(s) still on the wire are cut off; they are "
                     "sent again at the next start", len(cutters))
            for cutter in cutters:
                cutter.cut()
            if not self._joined(STOP_GRACE_S):
                log.warning("uploads: a worker was still busy %.0f s after its request was cut "
                            "off; stopping without it", STOP_GRACE_S)
        self._session.close()

    def _joined(self, within_s: float) -> bool:
        until = time.monotonic() + within_s
        for t in self._threads:
            if t.is_alive():
                t.join(max(0.0, until - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    # -- scheduling -------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            with self._lock:  # the in-flight set and the pick are one step
                job = self._queue.claim(self._inflight, self.settings.hold_s)
                if job is not None:
                    self._inflight.add(job[1])
            if job is None:
                self._queue.wait(POLL_S)
                continue
            kind, clip_id = job
            try:
                if kind == UPLOAD:
                    self._upload(clip_id)
                else:
                    self._remote_delete(clip_id)
            except Exception:  # a worker must outlive any one job
                log.exception("uploads: %s of %s failed unexpectedly", kind, clip_id)
                self._queue.retry_later(kind, clip_id, self._backoff_s)
            finally:
                with self._lock:
                    self._inflight.discard(clip_id)

    def _backoff_s(self, attempts: int) -> float:
        s = self.settings
        return min(s.backoff_max_s, s.backoff_initial_s * 2 ** max(0, attempts - 1)) * random.uniform(
            0.5, 1.0
        )

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
        meta = metadata(clip, scope, self.settings.redact)
        body, content_type = encode_multipart_formdata(
            {
                "metadata": ("metadata.json", json.dumps(meta), "application/json"),
                "audio": (f"{clip.id}.wav", audio, "audio/wav"),
            }
        )
        gated = GatedBody(
            body, self.settings.max_bytes_per_s, lambda: self._effective_scope(clip_id) is not None
        )
        headers = {"Content-Type": content_type, "Idempotency-Key": clip.id, **self._auth()}
        try:
            resp = self._send("POST", self.url, len(body), data=gated, headers=headers)
            outcome = classify(resp)
            self._queue.record_sent(UPLOAD, clip.id, self.host, answer(resp), meta)
        except (requests.RequestException, Withdrawn) as exc:
            if gated.withdrawn:
                self._queue.record_sent(UPLOAD, clip.id, self.host, "none: consent was revoked "
                                        "while sending, the request was cut off", meta)
                self._finish(clip_id, "withheld", "consent was revoked during the upload")
                return
            outcome = Outcome(False, describe(exc, with_type=True))
            self._queue.record_sent(UPLOAD, clip.id, self.host, f"none: {outcome.reason}", meta)
        if outcome.done:
            self._uploaded(clip)
        elif outcome.reason.startswith("permanent"):
            self._finish(clip_id, "failed", outcome.reason)
        elif (n := self._queue.retry_later(UPLOAD, clip_id, self._delay(outcome.retry_after_s))
              ) == self.settings.max_attempts:
            reason = (f"{outcome.reason}; still failing after {n} attempts: retrying every "
                      f"{self.settings.backoff_max_s:.0f} s while the clip is kept")
            log.warning("uploads: %s %s", clip_id, reason)
            self._events.emit(events.Upload(id=clip_id, status="retrying", reason=reason))
        else:
            log.info("uploads: %s will be retried (%s)", clip_id, outcome.reason)

    def _delay(self, retry_after_s: float | None) -> Callable[[int], float]:
        if retry_after_s is not None:
            return lambda attempts: retry_after_s
        return self._backoff_s

    def _effective_scope(self, clip_id: str) -> set[str] | None:
        """What may be sent now: the clip's recorded scope, narrowed by consent as it is now."""
        now = consent.read(self._store).covers
        recorded = self._queue.scope(clip_id)
        if recorded is None or now is None:
            return None
        return recorded & set(now.split(","))

    def _uploaded(self, clip: Clip) -> None:
        if not self._queue.uploaded(clip.id):
            log.warning("uploads: %s was deleted while it was being sent; its remote delete is "
                        "queued", clip.id)
            return
        if not self.settings.keep_local:
            self._store.forget_local_copy(clip.id)
        log.info("uploads: %s uploaded", clip.id)
        self._events.emit(events.Upload(id=clip.id, status="uploaded"))

    def _finish(self, clip_id: str, status: UploadStatus, reason: str) -> None:
        if status == "withheld":
            self._queue.withhold(clip_id)
        else:
            self._queue.failed(clip_id, reason)
        log.warning("uploads: %s %s: %s", clip_id, status, reason)
        self._events.emit(events.Upload(id=clip_id, status=status, reason=reason))

    # -- remote deletes ---------------------------------------------------------------------------
    def _remote_delete(self, clip_id: str) -> None:
        try:
            resp = self._send("DELETE", f"{self.url}/{clip_id}", 0, headers=self._auth())
            confirmed = 200 <= resp.status_code < 300 or resp.status_code == 404
            reason = classify(resp).reason
            self._queue.record_sent(REMOTE_DELETE, clip_id, self.host, answer(resp))
        except requests.RequestException as exc:
            confirmed, reason = False, describe(exc, with_type=True)
            self._queue.record_sent(REMOTE_DELETE, clip_id, self.host, f"none: {reason}")
        if not confirmed:
            log.info("uploads: remote delete of %s will be retried (%s)", clip_id, reason)
            self._queue.retry_later(REMOTE_DELETE, clip_id, self._backoff_s)
            return
        request_id = self._queue.remote_deleted(clip_id)
        log.info("uploads: remote copy of %s deleted", clip_id)
        self._events.emit(events.Deleted(
            request_id=request_id, ids=(), not_found=(), reason="command",
            remote=events.Remote("confirmed", confirmed=(clip_id,)),
        ))

    def _send(self, method: str, url: str, body_bytes: int, **kwargs: Any) -> requests.Response:
        """One request within its total deadline. The reply is streamed: its status and headers
        are kept, its body is drained up to MAX_REPLY_BYTES and dropped."""
        with deadline(self._deadline_s(body_bytes)) as cutter:
            with self._lock:
                if self._cutting:
                    raise requests.ConnectionError("not sent: the uploader is stopping")
                self._on_the_wire.add(cutter)
            try:
                resp = self._session.request(method, url, stream=True, **self._request_options(),
                                             **kwargs)
                drain(resp)
            finally:
                with self._lock:
                    self._on_the_wire.discard(cutter)
        return resp

    def _deadline_s(self, body_bytes: int) -> float:
        """The whole request: timeout_s, plus the time the bandwidth limit needs for the body."""
        rate = self.settings.max_bytes_per_s
        return self.settings.timeout_s + (body_bytes / rate if rate else 0.0)

    def _request_options(self) -> dict[str, Any]:
        # verify is passed on every request: requests lets REQUESTS_CA_BUNDLE override
        # Session.verify, which would silently ignore the owner's upload.ca_file. Redirects are
        # never followed: a 3xx could send the clip (or its id) somewhere the owner did not choose.
        return {"timeout": self.settings.timeout_s, "verify": self._verify, "allow_redirects": False}

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}


def verify_setting(settings: UploadSettings) -> bool | str:
    return (settings.ca_file or True) if settings.verify else False


def probe(settings: UploadSettings, timeout_s: float) -> tuple[bool, str]:
    """For `doctor`: reach the endpoint over HTTPS with an OPTIONS request; nothing is sent."""
    try:
        resp = requests.options(str(settings.url), timeout=timeout_s, verify=verify_setting(settings),
                                allow_redirects=False, stream=True)
        drain(resp)
    except requests.RequestException as exc:
        return False, f"cannot reach {settings.url}: {type(exc).__name__}"
    return True, f"{settings.url} answers over HTTPS (HTTP {resp.status_code}); nothing was sent"
