"""The mute state: software mute (MQTT, CLI) and hardware mute (the button); muted while either is
on. Its one owner is this class: the listener waits on it, the button and commands set it."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from device.core.errors import describe

log = logging.getLogger(__name__)

SETTING = "mute"
"""The store's preference that keeps the mute across a restart: {"software": .., "hardware": ..}."""


class MuteState:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.software = False
        self.hardware = False
        self.muted_event = threading.Event()
        self._listeners: list[Callable[[], None]] = []
        self._read: Callable[[str, str], str] | None = None
        self._write: Callable[[str, str], None] | None = None
        self._write_lock = threading.Lock()
        self._software_only = False

    def keep(self, read: Callable[[str, str], str], write: Callable[[str, str], None],
             has_button: bool, has_remote: bool) -> None:
        """The speaker itself (`run`): take up the mute the store kept (a crash, the watchdog, an
        update or a power cut never lifts one), then keep every change there before its listeners
        hear of it: a mute command is acknowledged once it would survive a restart. A kept mute
        that nothing configured now could lift (the button's without a button, MQTT's without
        MQTT) is lifted, and said."""
        self._read = read
        software, hardware = self._kept()
        for on, liftable, what, unset in (
                (software, has_remote, "an MQTT mute", "mqtt.host"),
                (hardware, has_button, "the button's mute", "mute.button_pin")):
            if on and not liftable:
                log.warning("mute: %s (%s is not set) kept from before the restart is lifted: "
                            "nothing could lift it now", what, unset)
            elif on:
                log.warning("mute: %s kept from before the restart holds", what)
        self._write = write
        self.set(software=self.software or (software and has_remote),
                 hardware=self.hardware or (hardware and has_button))
        if (software, hardware) != (self.software, self.hardware):
            self.save()  # what was lifted stays lifted when the configuration comes back

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
            self.save()
            for callback in self._listeners:
                callback()

    def keep_software(self, read: Callable[[str, str], str], write: Callable[[str, str], None]
                      ) -> None:
        """Another process that serves MQTT while the speaker is stopped (`simulate` beside it):
        it does not take up the kept mute, but an MQTT mute it acknowledges is kept for the
        speaker (the software half only: the button's is the speaker's own)."""
        self._read, self._write, self._software_only = read, write, True

    def _kept(self) -> tuple[bool, bool]:
        try:
            kept = json.loads(self._read(SETTING, "{}")) if self._read else {}
        except ValueError:
            kept = {}
        if not isinstance(kept, dict):
            kept = {}
        return kept.get("software") is True, kept.get("hardware") is True

    def save(self) -> bool:
        """Keep the state as it is now (another thread may have changed it again meanwhile).
        False if it could not be kept: the mute holds all the same (never let keeping it undo it),
        but a command that set it must not be acknowledged yet."""
        if self._write is None:
            return True
        with self._write_lock:
            with self._lock:
                now = {"software": self.software, "hardware": self.hardware}
            try:
                if self._software_only:
                    now["hardware"] = self._kept()[1]
                self._write(SETTING, json.dumps(now))
            except Exception as exc:
                log.error("mute: %s is in force but could not be kept in the store (%s); a "
                          "restart would lift it", now, describe(exc))
                return False
        return True

    def toggle_hardware(self) -> None:
        """The button: pressing it flips the hardware mute (gpiozero's thread: only a flag)."""
        with self._lock:
            target = not self.hardware
        self.set(hardware=target)
