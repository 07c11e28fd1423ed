"""A run-time setting kept in the store and followed: a change made by another process (the CLI)
reaches the running daemon within REFRESH_S, and listeners (the MQTT status) hear every change."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

REFRESH_S = 2.0
T = TypeVar("T")


class FollowedSetting(Generic[T]):
    """Subclasses say how the value in force is read from the store (`load`)."""

    def __init__(self, name: str, initial: T) -> None:
        self._name = name
        self._value = initial
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=name, daemon=True)

    def load(self) -> T:
        raise NotImplementedError

    def on_change(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def refresh(self) -> T:
        value = self.load()
        with self._lock:
            changed, self._value = value != self._value, value
        if changed:
            log.info("%s: %s", self._name, value)
            for callback in self._listeners:
                callback()
        return value

    def start(self) -> None:
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(REFRESH_S):
            try:
                self.refresh()
            except Exception:  # a busy store: try again at the next tick
                log.debug("could not read %s", self._name, exc_info=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
