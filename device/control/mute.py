"""The mute state: software mute (MQTT, CLI) and hardware mute (the button); muted while either is
on. Its one owner is this class: the listener waits on it, the button and commands set it."""

from __future__ import annotations

import threading
from collections.abc import Callable


class MuteState:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.software = False
        self.hardware = False
        self.muted_event = threading.Event()
        self._listeners: list[Callable[[], None]] = []

    @property
    def muted(self) -> bool:
        return self.muted_event.is_set()

    def on_change(self, callback: Callable[[], None]) -> None:
        """Called (on the thread that changed it) after every change, e.g. to republish status."""
        self._listeners.append(callback)

    def set(self, software: bool | None = None, hardware: bool | None = None) -> None:
        with self._lock:
            before = (self.software, self.hardware)
            self.software = self.software if software is None else software
            self.hardware = self.hardware if hardware is None else hardware
            if self.software or self.hardware:
                self.muted_event.set()
            else:
                self.muted_event.clear()
            changed = before != (self.software, self.hardware)
        if changed:
            for callback in self._listeners:
                callback()

    def toggle_hardware(self) -> None:
        """The button: pressing it flips the hardware mute (gpiozero's thread: only a flag)."""
        with self._lock:
            target = not self.hardware
        self.set(hardware=target)
