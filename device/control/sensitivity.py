"""The wake sensitivity in force: the configured level, or a less sensitive one chosen at run time
(CLI, MQTT, Home Assistant). Remote changes may only make it less sensitive than the level in force
(P5): after the owner chose `strict` on the device, no remote command can return it to `balanced`.
The CLI on the device may also return it to the configured level. Kept in the store, so it
survives a restart and a change made by the CLI reaches the running daemon within a few seconds."""

from __future__ import annotations

from collections.abc import Callable

from device.core.config import SENSITIVITY_LEVELS, WakeSettings
from device.core.errors import CommandError
from device.core.followed import FollowedSetting

SETTING = "wake.sensitivity"


def rank(level: str) -> int:
    """0 = most sensitive. "custom" ranks as the configured thresholds are: taken as sensitive."""
    return SENSITIVITY_LEVELS.index(level) if level in SENSITIVITY_LEVELS else 0


class SensitivityState(FollowedSetting[str]):
    def __init__(self, settings: WakeSettings, read: Callable[[str, str], str],
                 write: Callable[[str, str], None]) -> None:
        self.configured = settings.sensitivity
        self._read, self._write = read, write
        super().__init__("wake sensitivity", self.configured)
        self._value = self.load()

    def load(self) -> str:
        """A stored level never makes it more sensitive than the configuration now allows."""
        stored = self._read(SETTING, self.configured)
        return stored if stored in SENSITIVITY_LEVELS and rank(stored) >= rank(self.configured) \
            else self.configured

    def level(self) -> str:
        return self._value

    def set(self, level: str, remote: bool, request_id: str | None = None) -> str:
        """Change the level. Nothing is more sensitive than the configured level; a remote change
        is never more sensitive than the level in force."""
        if level not in SENSITIVITY_LEVELS:
            raise CommandError("bad_request", f"sensitivity must be one of {', '.join(SENSITIVITY_LEVELS)}",
                               request_id)
        if rank(level) < rank(self.configured):
            who = "remotely" if remote else "at run time"
            raise CommandError("refused", f"sensitivity cannot be raised {who} above the "
                               f"configured {self.configured!r} (edit wake.sensitivity)", request_id)
        in_force = self.refresh()  # as the store has it now (the CLI may have just changed it)
        if remote and rank(level) < rank(in_force):
            raise CommandError("refused", f"remotely, wake sensitivity can only be made less sensitive (now "
                               f"{in_force!r}); change it back on the device", request_id)
        self._write(SETTING, level)
        return self.refresh()
