"""When a wake word counts: threshold, patience, the quiet first seconds, agreement with a second
detector, the second look and re-arming, over per-frame scores from any detector. Pure logic
(tested with plain lists); the recorder (device/recording/recorder.py) asks it on every frame."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from device.core.config import CONFIRM_WINDOW_S, WakeSettings
from device.core.events import DiscardReason
from device.core.frames import Frame, samples_for


@dataclass(frozen=True)
class Wake:
    """A wake word was heard at the end of the frame ending at `at` (samples)."""

    at: int
    wake_word: str
    score: float


class Scores(dict[str, float]):
    """One frame's scores per wake word (openWakeWord's), and `confirm`: the confirming detector's
    (microWakeWord's) for the wake words that need both to fire (wake.confirm agree or cascade)."""

    def __init__(self, first: Mapping[str, float], confirm: Mapping[str, float]) -> None:
        super().__init__(first)
        self.confirm = dict(confirm)


NOT_CONFIRMED: DiscardReason = "not_confirmed"
"""Why a wake heard by one detector alone was turned away (wake.confirm agree or cascade)."""


class Agreement:
    """For wake words that need two detectors: when each first fired in the current window (and
    openWakeWord's best score since). A wake is the frame that brings the second of the two within
    CONFIRM_WINDOW_S of the first; one that stays alone longer is turned away."""

    def __init__(self) -> None:
        self._window = samples_for(CONFIRM_WINDOW_S)
        self._first: dict[str, Wake] = {}
        self._second: dict[str, Wake] = {}

    def hear(self, at: int, name: str, first: float | None, second: float | None) -> Wake | None:
        """`first`/`second`: the score of a detector that fired in the frame ending at `at`."""
        if first is not None:
            seen = self._first.get(name)
            self._first[name] = Wake(seen.at, name, max(seen.score, first)) if seen else Wake(at, name, first)
        if second is not None:
            self._second.setdefault(name, Wake(at, name, second))
        if name in self._first and name in self._second:
            agreed = replace(self._first.pop(name), at=at)
            del self._second[name]
            return agreed
        return None

    def alone(self, at: int) -> list[Wake]:
        """Detections whose window ended at `at` without the other detector (forgotten now)."""
        lone = []
        for heard in (self._first, self._second):
            for name, wake in list(heard.items()):
                if at - wake.at > self._window:
                    lone.append(heard.pop(name))
        return lone

    def clear(self) -> None:
        self._first.clear()
        self._second.clear()


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
        self._agreement = Agreement()
        self._doubt: tuple[Wake, DiscardReason, int] | None = None
        """The first doubted wake of a run of waking frames, why, and how often it was doubted."""
        self.turned_away: list[tuple[Wake, DiscardReason]] = []

    def update(self, frame: Frame, scores: Mapping[str, float]) -> Wake | None:
        fired, any_over = self._fired(scores)
        self._below = 0 if any_over else self._below + 1
        if not self._armed and (self._below >= REARM_FRAMES or frame.end > self._quiet_until):
            self._armed = True
        listening = self._armed and frame.end > samples_for(self._settings.startup_quiet_s)
        best = self._best(frame, scores, fired) if listening else None
        if listening and (lone := self._agreement.alone(frame.end)):
            self.turned_away += [(wake, NOT_CONFIRMED) for wake in lone]
            self._disarm(frame)
        if best is None:
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

    def _fired(self, scores: Mapping[str, float]
               ) -> tuple[dict[str, tuple[float | None, float | None]], bool]:
        """Per wake word, the score of each detector that fired in this frame (None: it did not):
        openWakeWord over its threshold for `patience` frames, microWakeWord over its own; and
        whether any score was over its threshold (re-arming waits for none)."""
        level = self._level()
        confirm: Mapping[str, float] = getattr(scores, "confirm", {})
        fired, any_over = {}, False
        for name, score in scores.items():
            second = confirm.get(name)
            threshold, patience = self._settings.preset(name, level, self._owner(name),
                                                        confirmed=second is not None)
            self._streak[name] = self._streak.get(name, 0) + 1 if score > threshold else 0
            first = float(score) if self._streak[name] >= patience else None
            if second is not None and second <= self._settings.confirm_threshold_for(name, level):
                second = None
            any_over |= score > threshold or second is not None
            if first is not None or second is not None:
                fired[name] = (first, second)
        return fired, any_over

    def _best(self, frame: Frame, scores: Mapping[str, float],
              fired: dict[str, tuple[float | None, float | None]]) -> Wake | None:
        """The strongest wake of this frame: openWakeWord's alone, or, where a second detector
        must agree, the frame that completes the agreement."""
        confirm: Mapping[str, float] = getattr(scores, "confirm", {})
        best: Wake | None = None
        for name, (first, second) in fired.items():
            if name in confirm:
                wake = self._agreement.hear(frame.end, name, first, second)
            else:
                wake = Wake(frame.end, name, first) if first is not None else None
            if wake is not None and (best is None or wake.score > best.score):
                best = wake
        return best

    def _disarm(self, frame: Frame) -> None:
        self._armed = False
        self._quiet_until = frame.end + samples_for(self._settings.refractory_s)
        self._streak.clear()
        self._agreement.clear()

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
        self._agreement.clear()
        self._end_doubt()
