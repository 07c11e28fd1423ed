"""Retention: clips beyond max_age or beyond max_bytes (oldest first) are deleted, at start and then
periodically, each sweep reported as a `deleted` event; what was quarantined goes by max_age too
(device/storage/quarantine.py). Local only: copies already uploaded to the owner's server are left
to explicit deletes."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from device.core import events as ev
from device.core.config import RetentionSettings
from device.core.events import EventSink
from device.storage.clips import ClipStore

log = logging.getLogger(__name__)


def expired(store: ClipStore, settings: RetentionSettings, now: datetime) -> list[str]:
    """Ids to delete: too old, then the oldest of the rest until the total fits max_bytes."""
    limit = (now - timedelta(seconds=settings.max_age_s())).isoformat(timespec="milliseconds")
    rows = store.bytes_used()
    old = [cid for cid, at, _ in rows if at < limit]
    kept = [(cid, size) for cid, at, size in rows if at >= limit]
    total = sum(size for _, size in kept)
    over = []
    for cid, size in kept:  # oldest first
        if total <= settings.max_bytes:
            break
        over.append(cid)
        total -= size
    return old + over


def sweep(store: ClipStore, settings: RetentionSettings, events: EventSink) -> list[str]:
    """Expire clips (reported as a `deleted` event) and what was quarantined (logged)."""
    gone = store.quarantine.expire(settings.max_age_s())
    if gone:
        log.info("retention: destroyed %d quarantined item(s)", len(gone))
    ids = expired(store, settings, datetime.now(UTC))
    if not ids:
        return []
    result = store.delete(ids=ids, remote=False)
    log.info("retention: deleted %d clip(s)", len(result["ids"]))
    events.emit(ev.Deleted(request_id=None, ids=tuple(result["ids"]), not_found=(),
                           reason="retention", remote=ev.Remote("not_requested")))
    return list(result["ids"])


class Sweeper:
    def __init__(self, store: ClipStore, settings: RetentionSettings, events: EventSink) -> None:
        self._store, self._settings, self._events = store, settings, events
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def start(self) -> None:
        sweep(self._store, self._settings, self._events)  # at start, before listening
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._settings.sweep_interval_s):
            try:
                sweep(self._store, self._settings, self._events)
            except Exception:  # the sweeper must outlive a bad moment (e.g. a full disk)
                log.exception("retention sweep failed; will try again")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
