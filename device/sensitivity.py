"""The wake sensitivity in force: the configured level, or a less sensitive one chosen at run time
(CLI, MQTT, Home Assistant). Remote changes may only make it less sensitive than the configuration
(P5); the CLI on the device may also return it to the configured level. Kept in the store, so it
survives a restart and a change made by the CLI reaches the running daemon within a few seconds."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from device.config import SENSITIVITY_LEVELS, WakeSettings
from device.errors import CommandError

log = logging.getLogger(__name__)

SETTING = "wake.sensitivity"
REFRESH_S = 2.0


def rank(level: str) -> int:
    """0 = most sensitive. "custom" ranks as the configured thresholds are: taken as sensitive."""
    return SENSITIVITY_LEVELS.index(level) if level in SENSITIVITY_LEVELS else 0


class SensitivityState:
    def __init__(self, settings: WakeSettings, read: Callable[[str, str], str],
                 write: Callable[[str, str], None]) -> None:
        self.configured = settings.sensitivity
        self._read, self._write = read, write
        self._lock = threading.Lock()
        self._level = self._valid(read(SETTING, self.configured))
        self._listeners: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="sensitivity", daemon=True)

    def _valid(self, stored: str) -> str:
        """A stored level never makes it more sensitive than the configuration now allows."""
        return stored if stored in SENSITIVITY_LEVELS and rank(stored) >= rank(self.configured) \
            else self.configured

    def level(self) -> str:
        return self._level

    def on_change(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def set(self, level: str, remote: bool, request_id: str | None = None) -> str:
        """Change the level; a remote (or any) change below the configured level is refused."""
        if level not in SENSITIVITY_LEVELS:
            raise CommandError("bad_request", f"sensitivity must be one of {', '.join(SENSITIVITY_LEVELS)}",
                               request_id)
        if rank(level) < rank(self.configured):
            who = "remotely" if remote else "at run time"
            raise CommandError("refused", f"sensitivity cannot be raised {who} above the "
                               f"configured {self.configured!r} (edit wake.sensitivity)", request_id)
        self._write(SETTING, level)
        self._apply(level)
        return level

    def _apply(self, level: str) -> None:
        with self._lock:
            changed, self._level = level != self._level, level
        if changed:
            log.info("wake sensitivity: %s", level)
            for callback in self._listeners:
                callback()

    def start(self) -> None:
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(REFRESH_S):
            try:
                self._apply(self._valid(self._read(SETTING, self.configured)))
            except Exception:  # a busy store: try again at the next tick
                log.debug("could not read the sensitivity setting", exc_info=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
