"""The page's password, sessions, CSRF tokens and the failed-login limit.

The password is kept as an argon2id hash (memory-hard: each guess costs 19 MiB and a good
fraction of a second), in an owner-only file in the state directory. Sessions live in the web process's
memory only (a restart logs everyone out); the cookie carries a random token and nothing else,
HttpOnly and SameSite=Strict. Every state-changing request carries the session's CSRF token.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from device.core.errors import ConfigError
from device.core.files import atomic_write

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
"""argon2id with OWASP's setting (19 MiB, 2 passes, 1 lane): 0.2 s a check here, under a second
on a Pi Zero 2 W, whose 512 MB could not spare RFC 9106's 64 MiB per guess beside the daemon."""


def set_password(path: Path, password: str) -> None:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise ConfigError(f"the password must have {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} "
                          "characters")
    atomic_write(path, (HASHER.hash(password) + "\n").encode())


def check_password(path: Path, password: str) -> bool:
    try:
        stored = path.read_text().strip()
    except FileNotFoundError:
        return False
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        return HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


@dataclass
class Session:
    token: str
    csrf: str
    signed_in: bool
    seen_at: float
    flash: list[str] = field(default_factory=list)
    """Messages shown once, on the next page (what a command did)."""


MAX_SESSIONS = 200


class Sessions:
    def __init__(self, idle_s: float) -> None:
        self._idle_s = idle_s
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def new(self, signed_in: bool) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), signed_in,
                          time.monotonic())
        with self._lock:
            self._expire()
            if len(self._by_token) >= MAX_SESSIONS:  # the oldest goes, a signed-in one last:
                # a stranger fetching the sign-in page over and over cannot sign the owner out
                oldest = min(self._by_token.values(), key=lambda s: (s.signed_in, s.seen_at))
                del self._by_token[oldest.token]
            self._by_token[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._lock:
            self._expire()
            session = self._by_token.get(token)
            if session is not None:
                session.seen_at = time.monotonic()
            return session

    def end(self, session: Session) -> None:
        with self._lock:
            self._by_token.pop(session.token, None)

    def _expire(self) -> None:
        cutoff = time.monotonic() - self._idle_s
        for token in [t for t, s in self._by_token.items() if s.seen_at < cutoff]:
            del self._by_token[token]


def csrf_ok(session: Session | None, token: str | None) -> bool:
    return session is not None and token is not None and hmac.compare_digest(session.csrf, token)


FAILS_PER_CLIENT, FAILS_IN_ALL = 5, 20
WINDOW_S = 15 * 60.0
"""At most 5 failed logins from one address, and 20 from everyone, in any 15 minutes."""


class LoginLimiter:
    """Failed logins, remembered for WINDOW_S; past a limit, logins wait (a 429 with Retry-After).
    One password check at a time: a flood of guesses cannot take 19 MiB each at once."""

    def __init__(self) -> None:
        self._fails: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._lock = threading.Lock()
        self.checking = threading.Lock()

    def wait_s(self, client: str) -> float:
        """0 when this client may try now, else the seconds until it may."""
        now = time.monotonic()
        with self._lock:
            self._forget(now)
            waits = [q[0] + WINDOW_S - now for q, limit in
                     ((self._fails.get(client, deque()), FAILS_PER_CLIENT), (self._all, FAILS_IN_ALL))
                     if len(q) >= limit]
        return max(waits, default=0.0)

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._fails.setdefault(client, deque()).append(now)
            self._all.append(now)

    def _forget(self, now: float) -> None:
        for q in (*self._fails.values(), self._all):
            while q and q[0] < now - WINDOW_S:
                q.popleft()
        for client in [c for c, q in self._fails.items() if not q]:
            del self._fails[client]
