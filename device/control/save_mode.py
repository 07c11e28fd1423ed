"""What a finished utterance leaves on disk, in force now: "audio" (the clip), "transcript" (its
text only) or "nothing" (events only). `recorder.save` is the most that is ever saved; at run time
(CLI, voice, MQTT, Home Assistant) it can be lowered, for a while or until changed back. Remote
switches only go toward saving less (P5); the CLI and a voice on the device may also return it to
the configured mode. A timed switch returns by itself. Kept in the store, so it survives a restart
and reaches the running daemon within a few seconds of a change made by the CLI."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from device.core.errors import CommandError
from device.core.followed import FollowedSetting

SAVE_MODES = ("audio", "transcript", "nothing")
"""From saving the most to saving the least."""
MODE_SETTING, UNTIL_SETTING = "recorder.save", "recorder.save_until"


@dataclass(frozen=True)
class SaveMode:
    mode: str
    until: float | None = None
    """Unix time at which the configured mode returns; None = until changed."""

    def until_iso(self) -> str | None:
        return datetime.fromtimestamp(self.until, UTC).isoformat(timespec="seconds") \
            if self.until else None

    def summary(self, configured: str) -> dict[str, str | None]:
        return {"mode": self.mode, "until": self.until_iso(), "configured": configured}


def rank(mode: str) -> int:
    """Higher saves less."""
    return SAVE_MODES.index(mode)


class SaveState(FollowedSetting[SaveMode]):
    def __init__(self, configured: str, read: Callable[[str, str], str],
                 write: Callable[[str, str], None], clock: Callable[[], float] = time.time) -> None:
        self.configured = configured
        self._read, self._write, self._clock = read, write, clock
        super().__init__("save mode", SaveMode(configured))
        self._value = self.load()

    def load(self) -> SaveMode:
        """The stored switch, unless it has run out or would save more than the configuration."""
        mode = self._read(MODE_SETTING, self.configured)
        try:
            until = float(self._read(UNTIL_SETTING, "0")) or None
        except ValueError:
            until = None
        if mode not in SAVE_MODES or rank(mode) <= rank(self.configured) or \
                (until is not None and self._clock() >= until):
            return SaveMode(self.configured)
        return SaveMode(mode, until)

    def current(self) -> SaveMode:
        """What is in force now (a timed switch that has run out counts as returned)."""
        value = self._value
        if value.until is not None and self._clock() >= value.until:
            return self.refresh()
        return value

    def mode(self) -> str:
        return self.current().mode

    def set(self, mode: str, remote: bool, for_s: float | None = None,
            request_id: str | None = None) -> SaveMode:
        if mode not in SAVE_MODES:
            raise CommandError("bad_request", f"save must be one of {', '.join(SAVE_MODES)}",
                               request_id)
        if rank(mode) < rank(self.configured):
            raise CommandError("refused", f"cannot save more than the configured "
                               f"{self.configured!r} (edit recorder.save)", request_id)
        in_force = self.refresh().mode  # as the store has it now (the CLI may have just changed it)
        if remote and rank(mode) < rank(in_force):
            raise CommandError("refused", f"remotely, saving can only be reduced (now "
                               f"{in_force!r}); change it back on the device", request_id)
        until = self._clock() + for_s if for_s and mode != self.configured else None
        self._write(UNTIL_SETTING, repr(until or 0.0))
        self._write(MODE_SETTING, mode)
        return self.refresh()
