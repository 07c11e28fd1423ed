"""The recorder state machine: frames, wake scores and VAD flags in; decisions out.

Pure logic: no sounddevice, gpiozero, vosk or paho here, so it is tested with plain lists. The
listener (device/recording/pipeline.py) turns decisions into actions on hardware and reports back, e.g. that
the light is confirmed on.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from device.core.config import RecorderSettings, WakeSettings
from device.core.events import DiscardReason
from device.core.frames import Frame, frames_for, samples_for
from device.wake.trigger import Wake, WakeGate

log = logging.getLogger(__name__)


class State(Enum):
    LISTENING = "listening"
    RECORDING = "recording"
    FINALISING = "finalising"
    MUTED = "muted"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.LISTENING: frozenset({State.RECORDING, State.MUTED}),
    State.RECORDING: frozenset({State.FINALISING, State.MUTED}),
    State.FINALISING: frozenset({State.LISTENING, State.MUTED}),
    State.MUTED: frozenset({State.LISTENING}),
}


class TransitionError(RuntimeError):
    """A state change the transition table does not allow (a bug, never user input)."""


@dataclass(frozen=True)
class Utterance:
    """What one recording kept. `frames` are the retained frames, in order."""

    wake: Wake
    light_on_at: int
    frames: list[Frame] = field(repr=False)
    reason: str

    @property
    def start(self) -> int:
        return self.frames[0].start

    @property
    def end(self) -> int:
        return self.frames[-1].end


@dataclass(frozen=True)
class Finished:
    utterance: Utterance


@dataclass(frozen=True)
class Discarded:
    at: int
    reason: DiscardReason
    next_wake: Wake | None = None
    """Set when a new wake ended the recording ("superseded"): record again from it."""


Decision = Wake | Finished | Discarded | None


class Recorder:
    """LISTENING → RECORDING → FINALISING → LISTENING, with MUTED reachable from every state."""

    def __init__(
        self,
        recorder: RecorderSettings,
        wake: WakeSettings,
        on_transition: Callable[[State, State], Any] | None = None,
        level: Callable[[], str] | None = None,
        second_look: Callable[[Wake], DiscardReason | None] | None = None,
        owner: Callable[[str], bool] | None = None,
    ) -> None:
        """`second_look(wake)` is asked at every wake, before anything else happens to it: it
        answers None (go on) or why it doubts the wake; a wake still doubted after DOUBT_FRAMES
        is turned away (it never lights the light, nor ends or supersedes a recording; see
        take_turned_away). `owner`: see WakeGate."""
        self._settings = recorder
        self._gate = WakeGate(wake, level, second_look, owner)
        self._on_transition = on_transition
        self.state = State.LISTENING
        preroll = frames_for(recorder.preroll_s) if recorder.keep_wake_word_audio else 0
        self._preroll: deque[Frame] = deque(maxlen=preroll)
        self._pending: Wake | None = None
        self._kept_new: list[Frame] = []
        self._reset_recording()

    def _reset_recording(self) -> None:
        self._frames: list[Frame] = []
        self._retain_from = 0
        self._light_on_at = 0
        self._speech_samples = 0
        self._silence_samples = 0

    def _set_state(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise TransitionError(f"{self.state.value} -> {new.value} is not allowed")
        old, self.state = self.state, new
        log.info("recorder: %s -> %s", old.value, new.value)
        if self._on_transition:
            self._on_transition(old, new)

    # -- frames ---------------------------------------------------------------------------------
    def on_frame(
        self, frame: Frame, scores: Mapping[str, float], is_speech: bool | None
    ) -> Decision:
        """Feed one frame. Returns a Wake (turn the light on, then call light_confirmed or
        light_failed), a Finished or Discarded recording (turn the light off, then finalised),
        or None."""
        if self.state is State.LISTENING:
            return self._listen(frame, scores)
        if self.state is State.RECORDING:
            if (again := self._gate.update(frame, scores)) is not None:
                return self._supersede(again)
            return self._record(frame, bool(is_speech))
        return None

    def _supersede(self, wake: Wake) -> Discarded:
        """A wake word during a recording: the owner is (again) addressing the speaker, so what was
        recorded since the last wake (most likely a false wake and whatever followed) is dropped
        and a new recording starts from this wake."""
        at = self._frames[-1].end if self._frames else wake.at
        self._set_state(State.FINALISING)
        self._reset_recording()
        return Discarded(at, "superseded", next_wake=wake)

    def _listen(self, frame: Frame, scores: Mapping[str, float]) -> Wake | None:
        if self._preroll.maxlen:
            self._preroll.append(frame)
        self._pending = self._gate.update(frame, scores)
        return self._pending

    def take_turned_away(self) -> list[tuple[Wake, DiscardReason]]:
        """Wakes the second look turned away since the last call, with the reason."""
        away, self._gate.turned_away = self._gate.turned_away, []
        return away

    def _record(self, frame: Frame, is_speech: bool) -> Decision:
        if frame.start < self._retain_from:
            return None  # captured before the light was confirmed on: never kept (I1)
        self._keep(frame)
        if is_speech:
            self._speech_samples += len(frame.samples)
            self._silence_samples = 0
        else:
            self._silence_samples += len(frame.samples)
        reason = self._end_reason(frame)
        return self._stop(reason, frame.end) if reason else None

    def _end_reason(self, frame: Frame) -> str | None:
        s = self._settings
        recorded = frame.end - self._retain_from
        if self._speech_samples == 0:
            return "no_speech" if recorded >= samples_for(s.speech_timeout_s) else None
        if self._silence_samples >= samples_for(s.trailing_silence_s):
            return "trailing_silence"
        if frame.end - self._frames[0].start >= samples_for(s.max_length_s):
            return "max_length"
        return None

    def _stop(self, reason: str, at: int) -> Finished | Discarded:
        self._set_state(State.FINALISING)
        wake = self._pending
        enough = self._speech_samples >= max(1, samples_for(self._settings.min_speech_s))
        if wake is None or not self._frames or not enough:
            self._reset_recording()
            return Discarded(at, "no_speech")
        utterance = Utterance(wake, self._light_on_at, self._frames, reason)
        self._reset_recording()
        return Finished(utterance)

    def _keep(self, frame: Frame) -> None:
        self._frames.append(frame)
        self._kept_new.append(frame)

    def take_kept(self) -> list[Frame]:
        """The frames kept since the last call, in order (for the transcriber, as they come)."""
        kept, self._kept_new = self._kept_new, []
        return kept

    # -- answers from the listener ----------------------------------------------------------------
    def light_confirmed(self, at: int) -> None:
        """The light is confirmed on; audio captured from sample `at` on may be kept."""
        if self._pending is None:
            raise TransitionError("light confirmed without a wake")
        self._reset_recording()
        self._kept_new = []
        self._light_on_at = self._retain_from = at
        for frame in self._preroll:
            self._keep(frame)
        self._preroll.clear()
        self._set_state(State.RECORDING)

    def light_failed(self) -> None:
        """The light could not be turned on: keep nothing (I2) and go on listening."""
        self._pending = None
        self._preroll.clear()

    def finalised(self, next_wake: Wake | None = None) -> None:
        """The listener has acted on a Finished/Discarded decision; `next_wake` (from a superseded
        recording) is the wake to answer next (light_confirmed or light_failed)."""
        self._pending = next_wake
        if self.state is State.FINALISING:
            self._set_state(State.LISTENING)

    def end_of_stream(self, at: int) -> Finished | Discarded | None:
        """The input ended: close an open recording as if its speech had ended."""
        if self.state is not State.RECORDING:
            return None
        return self._stop("end_of_stream", at)

    # -- mute -----------------------------------------------------------------------------------
    def mute(self) -> Discarded | None:
        """Enter MUTED from any state. An open recording is discarded, not kept: muting is a
        request for privacy."""
        if self.state is State.MUTED:
            return None
        was_recording = self.state is State.RECORDING
        at = self._frames[-1].end if self._frames else self._retain_from
        self._reset_recording()
        self._pending = None
        self._preroll.clear()
        self._set_state(State.MUTED)
        return Discarded(at, "muted") if was_recording else None

    def unmute(self) -> None:
        """Back to LISTENING; the input stream will be reopened (see new_stream)."""
        if self.state is State.MUTED:
            self._pending = None
            self._set_state(State.LISTENING)

    def new_stream(self) -> None:
        """A new input stream starts (after a mute or a lost microphone): its sample clock starts
        at zero again, so the refractory period of the old stream must not carry over."""
        self._gate.reset()
        self._preroll.clear()

