"""Consent: off by default, granted only on the device, never retroactive (P1).

The record (state, scope, time, policy version) is a preference (device/storage/preferences.py).
A clip joins the upload queue only if consent covered it when it was stored; revoking purges the
queue in the same transaction, and the uploader re-reads consent before every request and while
sending its body.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from device.core.errors import ConfigError
from device.storage.clips import ClipStore

log = logging.getLogger(__name__)

POLICY_VERSION = 1
"""Bump when what an upload contains changes: consent given under an older policy no longer holds."""
SCOPES = ("audio", "transcript")
KEY = "consent"


@dataclass(frozen=True)
class Consent:
    granted: bool
    scope: tuple[str, ...] = ()
    changed_at: str | None = None
    policy_version: int = POLICY_VERSION

    @property
    def covers(self) -> str | None:
        """The scope uploads may use now, as stored with a queued clip ("audio,transcript")."""
        valid = self.granted and self.policy_version == POLICY_VERSION and "audio" in self.scope
        return ",".join(self.scope) if valid else None

    def summary(self) -> dict[str, object]:
        return {**asdict(self), "scope": list(self.scope), "state": "on" if self.covers else "off"}


def read(store: ClipStore) -> Consent:
    raw = store.state.preferences.get(KEY, "")
    if not raw or raw == "off":
        return Consent(granted=False)
    data = json.loads(raw)
    return Consent(bool(data["granted"]), tuple(data["scope"]), data["changed_at"],
                   int(data["policy_version"]))


def parse_scope(text: str) -> tuple[str, ...]:
    scope = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [s for s in scope if s not in SCOPES]
    if unknown or "audio" not in scope:
        raise ConfigError(f"scope {text!r}: use audio or audio,transcript (uploads always carry audio)")
    return scope


def grant(store: ClipStore, scope: tuple[str, ...]) -> Consent:
    """Only ever called from the device itself (CLI or a physical action), never from the network."""
    consent = Consent(True, scope, _now())
    store.state.preferences.set(KEY, json.dumps(asdict(consent)))
    log.info("consent granted (%s, policy %d)", ",".join(scope), POLICY_VERSION)
    return consent


def revoke(store: ClipStore, nonce: str | None = None) -> tuple[Consent, list[str]]:
    """Consent off and every waiting upload purged, in one transaction; a clip that may be on the
    server (on the wire, or tried before) gets a remote delete. Returns the purged ids."""
    consent = Consent(False, (), _now())
    with store.state.atomically():
        queued, maybe_sent = store.uploads.withdraw()
        store.state.preferences.set(KEY, json.dumps(asdict(consent)))
        if nonce is not None:
            store.state.requests.use_nonce(nonce)
    log.info("consent revoked; %d queued upload(s) purged, %d that may be on the server get a "
             "remote delete", len(queued), len(maybe_sent))
    return consent, queued + maybe_sent


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
