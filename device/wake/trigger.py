"""When a wake word counts: threshold, patience, the quiet first seconds, the second look and
re-arming, over per-frame scores from any detector. Pure logic (tested with plain lists); the
recorder (device/recording/recorder.py) asks it on every frame."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from device.core.config import WakeSettings
from device.core.events import DiscardReason
from device.core.frames import Frame, samples_for


@dataclass(frozen=True)
class Wake:
    """A wake word was heard at the end of the frame ending at `at` (samples)."""

    at: int
    wake_word: str
    score: float



REARM_FRAMES = 3
"""After a wake, the gate re-arms once every score has stayed under its threshold this long."""
DOUBT_FRAMES = 4
"""A wake the second look doubts is looked at again on each following frame that still wakes,
this many times in all (320 ms): the verifier is often surer a frame or two after the first
frame over the threshold. Then it is turned away."""


class WakeGate:
    """Threshold, patience, the second look and re-arming over per-frame scores.

    After a wake, the same utterance must not wake again: the gate re-arms when every score has
    been below its threshold for REARM_FRAMES, or after `refractory_s` at the latest. It is not held
    off while recording, so a real wake word soon after a false wake is not lost.
    """

    def __init__(self, settings: WakeSettings, level: Callable[[], str] | None = None,
                 second_look: Callable[[Wake], DiscardReason | None] | None = None,
                 owner: Callable[[str], bool] | None = None) -> None:
        """`owner(name)`: whether an owner verifier takes the second look for `name` from the
        lower thresholds of config.OWNER_THRESHOLDS."""
        self._settings = settings
        self._owner = owner or (lambda name: False)
        self._level = level or (lambda: settings.sensitivity)
        """The sensitivity in force now (it can be changed at run time)."""
        self._second_look = second_look
        self._streak: dict[str, int] = {}
        self._quiet_until = 0
        self._armed = True
        self._below = 0
        self._doubt: tuple[Wake, DiscardReason, int] | None = None
        """The first doubted wake of a run of waking frames, why, and how often it was doubted."""
        self.turned_away: list[tuple[Wake, DiscardReason]] = []

    def update(self, frame: Frame, scores: Mapping[str, float]) -> Wake | None:
        best: Wake | None = None
        any_over = False
        level = self._level()
        for name, score in scores.items():
            threshold, patience = self._settings.preset(name, level, self._owner(name))
            over = score > threshold
            any_over |= over
            self._streak[name] = self._streak.get(name, 0) + 1 if over else 0
            ready = self._streak[name] >= patience
            if ready and (best is None or score > best.score):
                best = Wake(frame.end, name, float(score))
        self._below = 0 if any_over else self._below + 1
        if not self._armed and (self._below >= REARM_FRAMES or frame.end > self._quiet_until):
            self._armed = True
        if best is None or not self._armed or frame.end <= samples_for(self._settings.startup_quiet_s):
            self._end_doubt()
            return None
        if self._second_look is not None and (why := self._second_look(best)) is not None:
            first, _, times = self._doubt or (best, why, 0)
            self._doubt = (first, why, times + 1)
            if times + 1 < DOUBT_FRAMES:
                return None
            self._end_doubt()  # turned away for good: the same utterance must not wake again
            self._disarm(frame)
            return None
        self._doubt = None
        self._disarm(frame)
        return best

    def _disarm(self, frame: Frame) -> None:
        self._armed = False
        self._quiet_until = frame.end + samples_for(self._settings.refractory_s)
        self._streak.clear()

    def _end_doubt(self) -> None:
        if self._doubt is not None:
            first, why, _ = self._doubt
            self.turned_away.append((first, why))
            self._doubt = None

    def reset(self) -> None:
        """A new input stream starts: its sample clock starts at zero again."""
        self._quiet_until = 0
        self._armed = True
        self._below = 0
        self._streak.clear()
        self._end_doubt()
