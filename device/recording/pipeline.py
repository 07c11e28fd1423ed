"""The listening loop: source → wake detector → recorder → light → VAD/ASR → clip store.

The listener runs on one thread and never does I/O itself beyond the GPIO pin: ASR, WAV encoding,
fsync and SQLite run on the ClipWriter's thread, and events are written and published on the event
sink's thread, so a slow disk, model, stdout or broker never holds up the frames behind it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np

from device import SAMPLE_RATE_HZ
from device.audio.denoise import WARM_S
from device.audio.sources import AnyOf, AudioSource
from device.audio.vad import SpeechDetector
from device.control.mute import MuteState
from device.core import events
from device.core.errors import AudioError, EdgeRecorderError, ErrorCode, IndicatorError
from device.core.events import DiscardReason, EventSink, VoiceOutcome
from device.core.frames import Frame, frames_for, seconds
from device.recording.recorder import Discarded, Finished, Recorder, State, Utterance, Wake
from device.speech.asr import Transcriber, TranscriptStream
from device.speech.voice import (
    NEAR_COMMAND,
    NEEDS_CONFIRMATION,
    AnswerStream,
    CommandSpotter,
    CommandStream,
)
from device.storage.clips import ClipStore
from device.wake.detector import WakeDetector

log = logging.getLogger(__name__)

MUTE_POLL_S = 0.1


class Light(Protocol):
    def recording(self) -> None: ...

    def idle(self) -> None: ...


class Feedback(Protocol):
    """The feedback LED (device/recording/indicator.py: Confirmer), never the recording light."""

    def not_caught(self) -> None: ...

    def waiting(self) -> None: ...

    def waited(self) -> None: ...


class NoFeedback:
    def not_caught(self) -> None:
        pass

    def waiting(self) -> None:
        pass

    def waited(self) -> None:
        pass


OnCommand = Callable[[str, float, str | None, VoiceOutcome], None]
"""on_command(name, t, request_id, outcome): carry out a spoken command (request_id None = a new
one; outcome "done", or "confirmed" after a spoken yes)."""


@dataclass
class Counters:
    frames: int = 0
    wakes: int = 0
    clips: int = 0
    discarded: int = 0
    errors: int = 0
    overflows: int = 0
    store_ok: bool = True
    """False while the last attempt to record was refused or failed for lack of space."""


@dataclass
class _Finish:
    utterance: Utterance
    recorded_at: datetime
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class _Asking:
    """A command waiting for a spoken yes, and what has been heard of the answer so far."""

    command: str
    request_id: str
    answer: AnswerStream
    t: float
    spoke: bool = False
    quiet_frames: int = 0


class ClipWriter:
    """Feeds ASR while recording and, on its own thread, decides what a finished utterance becomes:
    a spoken privacy command (executed, or first confirmed by a spoken yes; nothing of it is
    stored), an utterance that came close to a command (dropped: "didn't catch that"), or what the
    save mode says (a clip, a transcript only, or nothing but an event)."""

    def __init__(
        self, transcriber: Transcriber, store: ClipStore, events: EventSink, counters: Counters,
        eligible: Callable[[], str | None] | None = None,
        spotter: CommandSpotter | None = None,
        on_command: OnCommand = lambda command, t, request_id, outcome: None,
        save_mode: Callable[[], str] = lambda: "audio",
        share_transcripts: bool = False,
        feedback: Feedback | None = None,
        answer_end_frames: int = 10,
    ) -> None:
        """`on_command` runs a spoken command; `share_transcripts`: a `heard` event (save mode
        "nothing") carries the transcript (mqtt.publish_transcripts); `feedback` shows "didn't
        catch that" and "waiting for a yes"; `answer_end_frames`: frames of silence after speech
        that end a spoken answer (recorder.trailing_silence_s)."""
        self._transcriber = transcriber
        self._eligible = eligible
        self._spotter, self._on_command = spotter, on_command
        self._feedback = feedback or NoFeedback()
        self._answer_end_frames = answer_end_frames
        self._asking: _Asking | None = None
        self._save_mode, self._share_transcripts = save_mode, share_transcripts
        self._commands: CommandStream | None = None
        self._wake_features: np.ndarray | None = None
        self._store = store
        self._events = events
        self._counters = counters
        self._jobs: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stream: TranscriptStream | None = None
        self.ready_latencies_s: list[float] = []
        """Wall seconds from end of utterance (handed over) to clip stored; for benchmarks."""
        self.command_latencies_s: list[float] = []
        """Wall seconds from end of utterance (handed over) to a spoken command done."""
        self._thread = threading.Thread(target=self._run, name="clip-writer", daemon=True)
        self._thread.start()

    @property
    def hears_commands(self) -> bool:
        """Whether spoken commands are listened for (and so, after one, a yes)."""
        return self._spotter is not None

    @property
    def learns_the_room(self) -> bool:
        """Whether a recording's `begin` wants the audio heard just before its wake (for the
        command hearing's noise suppressor)."""
        return self._spotter is not None and self._spotter.denoises

    def begin(self, wake_features: np.ndarray | None = None,
              before: Sequence[np.ndarray] = ()) -> None:
        """A recording starts; `before`: the audio heard just before its wake, which only the
        command hearing's noise suppressor hears, to learn the room (then it is dropped)."""
        self._jobs.put(("begin", (wake_features, before)))

    def feed(self, frame: Frame) -> None:
        self._jobs.put(("feed", frame))

    def finish(self, utterance: Utterance, recorded_at: datetime) -> None:
        self._jobs.put(("finish", _Finish(utterance, recorded_at)))

    def cancel(self) -> None:
        self._jobs.put(("cancel", None))

    def follow(self, frame: Frame, speech: bool) -> None:
        """A frame heard after an utterance ended (nothing is kept): the answer to a command that
        asks for a yes, if the last utterance was one; dropped at once otherwise."""
        self._jobs.put(("follow", (frame, speech)))

    def end_follow(self) -> None:
        """The time for an answer is over (or a wake, mute or the input's end cut it short)."""
        self._jobs.put(("end_follow", None))

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(("end_follow", None))  # a question still open is answered "no"
            self._jobs.put(("stop", None))
            self._thread.join()

    def _command(self, command: str, t: float) -> None:
        """Carry it out, or first ask for a yes: a command that deletes more than the last
        recording, when the wake was not verified as the owner's voice."""
        owner = self._wake_features is not None  # the owner verifier passed this wake
        if command not in NEEDS_CONFIRMATION or owner or self._spotter is None:
            log.info("voice command: %s (nothing of it is kept)", command)
            self._on_command(command, t, None, "done")
            return
        rid = f"voice-{uuid.uuid4().hex[:16]}"
        log.info("voice command: %s, waiting for a spoken yes", command)
        self._asking = _Asking(command, rid, self._spotter.start_answer(), t)
        self._feedback.waiting()
        self._events.emit(events.Voice(t=t, command=command, request_id=rid, outcome="waiting"))

    def _hear_answer(self, frame: Frame, speech: bool) -> None:
        asking = self._asking
        assert asking is not None
        asking.answer.accept(frame.samples)
        asking.spoke |= speech
        asking.quiet_frames = 0 if speech else asking.quiet_frames + 1
        if asking.spoke and asking.quiet_frames >= self._answer_end_frames:
            self._answered()

    def _answered(self) -> None:
        asking, self._asking = self._asking, None
        assert asking is not None
        self._feedback.waited()  # whatever the answer and whatever carrying it out raises
        if asking.answer.yes():
            log.info("voice command %s confirmed", asking.command)
            self._on_command(asking.command, asking.t, asking.request_id, "confirmed")
            return
        log.info("voice command %s: no yes heard, nothing done", asking.command)
        self._events.emit(events.Voice(t=asking.t, command=asking.command,
                                       request_id=asking.request_id, outcome="not_confirmed"))

    def _run(self) -> None:
        while True:
            kind, payload = self._jobs.get()
            if kind == "stop":
                return
            try:
                self._handle(kind, payload)
            except Exception as exc:  # the writer must outlive any one bad clip
                if self._asking is not None:
                    self._feedback.waited()
                self._stream = self._commands = self._asking = None
                self._counters.errors += 1
                code: ErrorCode = "store_failed" if isinstance(exc, EdgeRecorderError) else "writer_failed"
                self._counters.store_ok = False
                log.error("%s: %s", code, exc)
                self._events.emit(events.Error(t=None, code=code, request_id=None, message=str(exc)))

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "begin":
            if self._asking is not None:  # a wake cut the answer's time short (the listener
                self._answered()          # says so first; this only guards the order)
            self._wake_features, before = payload
            self._stream = self._transcriber.start()
            self._commands = self._spotter.start(before) if self._spotter else None
        elif kind == "feed":
            for stream in (self._stream, self._commands):
                if stream is not None:
                    stream.accept(payload.samples)
        elif kind == "finish":
            self._finish(payload)
        elif kind == "cancel":
            self._stream = self._commands = None
        elif kind == "follow" and self._asking is not None:
            self._hear_answer(*payload)
        elif kind == "end_follow" and self._asking is not None:
            self._answered()

    def _finish(self, job: _Finish) -> None:
        stream, self._stream = self._stream, None
        commands, self._commands = self._commands, None
        u = job.utterance
        hearing = commands.hear() if commands is not None else None
        if hearing is not None and hearing.command:
            self._command(hearing.command, seconds(u.end))
            self.command_latencies_s.append(time.perf_counter() - job.queued_at)
            return
        if hearing is not None and hearing.near:
            log.info("utterance came close to a command: dropped, nothing kept")
            self._counters.discarded += 1
            self._feedback.not_caught()
            self._events.emit(events.Discarded(t=seconds(u.end), reason=NEAR_COMMAND))
            return
        transcript = stream.result() if stream is not None else None
        mode = in_force = self._save_mode()
        if mode == "transcript" and not transcript:
            mode = "nothing"  # no ASR (or nothing recognized): a text-only clip would hold no text
        if mode == "nothing":
            log.info("utterance heard, nothing saved (recorder.save = %s)", in_force)
            self._events.emit(events.Heard(
                t=seconds(u.end), start=seconds(u.start), end=seconds(u.end),
                wake_word=u.wake.wake_word, transcript=transcript if self._share_transcripts else None))
            return
        audio = np.concatenate([f.samples for f in u.frames]) if mode == "audio" else None
        clip = self._store.add(
            audio, seconds(u.start), seconds(u.end), u.wake.wake_word, u.wake.score, transcript,
            recorded_at=job.recorded_at, eligible=self._eligible, wake_features=self._wake_features,
        )
        self.ready_latencies_s.append(time.perf_counter() - job.queued_at)
        self._counters.clips += 1
        log.info("clip %s stored (%.2f s, %s%s)", clip.id, clip.duration_s, u.reason,
                 "" if audio is not None else ", transcript only")
        self._events.emit(events.Clip(
            t=seconds(u.end), id=clip.id, start=clip.start_s, end=clip.end_s,
            wake_word=clip.wake_word, transcript=clip.transcript, audio=audio is not None,
        ))


@dataclass(frozen=True)
class ListenerParts:
    """What the loop drives, frame by frame."""

    detector: WakeDetector
    speech: SpeechDetector
    recorder: Recorder
    light: Light
    writer: ClipWriter


@dataclass(frozen=True)
class ListenerHooks:
    """What the loop asks of, and tells, the rest of the daemon."""

    can_record: Callable[[], str | None] = lambda: None
    """Why a wake cannot be recorded now (no space, read-only), or None."""
    retry: tuple[float, float] | None = None
    """(initial, max) backoff seconds to wait out a lost microphone; None: an input error ends the
    run (a file)."""
    on_ready: Callable[[], None] = lambda: None
    """Called once, when the input first opened."""
    show_muted: Callable[[bool], None] = lambda muted: None
    """Drives a mute LED."""
    wake_features: Callable[[Wake], np.ndarray | None] = lambda wake: None
    """What the owner verifier saw of a wake, kept sealed with its clip (a reject teaches it)."""
    answer_s: float = 0.0
    """For this long after each utterance, frames also go to the writer (with the VAD's view),
    which listens in them for a yes when the utterance asked for one (voice.confirm_within);
    0 = never."""


class Listener:
    """Owns the input stream: opens it, closes it while muted (nothing is captured), reopens it."""

    def __init__(self, open_source: Callable[[], AudioSource], parts: ListenerParts,
                 events: EventSink, counters: Counters, mute: MuteState | None = None,
                 hooks: ListenerHooks | None = None) -> None:
        hooks = hooks or ListenerHooks()
        self.wake_features = hooks.wake_features
        self._answer_frames = frames_for(hooks.answer_s) if hooks.answer_s > 0 else 0
        self._follow_left = 0
        self._open_source = open_source
        self._can_record = hooks.can_record
        self._retry = hooks.retry
        self._on_ready = hooks.on_ready
        self._show_muted = hooks.show_muted
        self._opened_once = False
        self._lost_since: float | None = None
        self._backoff_s = self._retry[0] if self._retry else 0.0
        self.alive_at = time.monotonic()
        """When the audio loop last showed it is alive (a frame, or a wait it chose to do)."""
        self.source: AudioSource | None = None
        self.mute = mute or MuteState()
        self.detector = parts.detector
        self.speech = parts.speech
        self.recorder = parts.recorder
        self.light = parts.light
        self.writer = parts.writer
        self.events = events
        self.counters = counters
        self._last_end = 0
        self._overflows_seen = 0
        self._before: deque[np.ndarray] = deque(
            maxlen=frames_for(WARM_S) if self.writer.learns_the_room else 0)
        """The last frames heard while listening, for the command hearing's noise suppressor to
        learn the room from at a wake. RAM only, never kept; emptied at each wake and whenever the
        input closes (a mute, a lost microphone, the end)."""

    def run(self, stop: threading.Event) -> Counters:
        while not stop.is_set():
            if self.mute.muted:
                self._sit_out_mute(stop)
            elif not self._listen(stop):
                break
        return self.counters

    def _listen(self, stop: threading.Event) -> bool:
        """Listen until the input ends (False), or stop, mute or a lost microphone interrupts it
        (True: go round again)."""
        try:
            source = self.source = self._open_source()
        except AudioError as exc:
            if self._retry is None or not self._opened_once:
                raise  # a device that never worked is a configuration error: say so and exit
            self._mic_lost(exc, stop)
            return True
        self._mic_back()
        self.recorder.new_stream()
        self._overflows_seen = 0
        try:
            for frame in source.frames(AnyOf(stop, self.mute.muted_event)):
                self.step(frame)
        except AudioError as exc:
            if self._retry is None:
                raise
            self._before.clear()
            self._act(self.recorder.end_of_stream(self._last_end))
            self._stop_following()
            self._mic_lost(exc, stop)
            return True
        finally:
            source.close()
            self._before.clear()  # no audio from before a mute or a lost microphone is held
        self._stop_following()
        if self.mute.muted:  # even with a stop just behind it: muting asked for privacy first
            self._act(self.recorder.mute())  # an open recording is discarded, not kept
            self.events.emit(events.Indicator(t=seconds(self._last_end), state="muted"))
            return True
        self._act(self.recorder.end_of_stream(self._last_end))
        self._stop_following()  # the input ended: no answer can come
        return stop.is_set()

    def _sit_out_mute(self, stop: threading.Event) -> None:
        if self.recorder.state is not State.MUTED:
            self._act(self.recorder.mute())
            self.events.emit(events.Indicator(t=seconds(self._last_end), state="muted"))
        self._show_muted(True)
        while self.mute.muted and not stop.wait(MUTE_POLL_S):
            self.alive_at = time.monotonic()
        if not self.mute.muted:
            self._show_muted(False)
            self.recorder.unmute()
            self.events.emit(events.Indicator(t=seconds(self._last_end), state="idle"))

    def _mic_lost(self, exc: AudioError, stop: threading.Event) -> None:
        assert self._retry is not None
        if self._lost_since is None:
            self._lost_since = time.monotonic()
            log.error("microphone lost: %s; retrying with backoff", exc)
            self.events.emit(events.Error(t=seconds(self._last_end), code="mic_lost", request_id=None,
                                          message=str(exc)))
        deadline = time.monotonic() + self._backoff_s
        while not stop.wait(min(MUTE_POLL_S, max(0.0, deadline - time.monotonic()))):
            self.alive_at = time.monotonic()
            if time.monotonic() >= deadline:
                break
        self._backoff_s = min(self._retry[1], self._backoff_s * 2)

    def _mic_back(self) -> None:
        if not self._opened_once:
            self._opened_once = True
            self._on_ready()
        if self._lost_since is not None:
            away = time.monotonic() - self._lost_since
            log.warning("microphone back after %.0f s", away)
            self.events.emit(events.Audio(t=0.0, state="mic_back", away_s=round(away, 1)))
            self._lost_since = None
        self._backoff_s = self._retry[0] if self._retry else 0.0

    def step(self, frame: Frame) -> None:
        self.alive_at = time.monotonic()
        self.counters.frames += 1
        self._last_end = frame.end
        scores = self.detector.scores(frame.samples)
        recording = self.recorder.state is State.RECORDING
        following = not recording and self._follow_left > 0
        speech = self.speech.is_speech(frame.samples) if recording or following else None
        if not (recording or following):
            self.speech.idle(frame.samples)
        if not recording:
            self._before.append(frame.samples)
        decision = self.recorder.on_frame(frame, scores, speech)
        for wake, reason in self.recorder.take_turned_away():
            self._turn_away(wake, reason)
        if following and decision is None:
            self._follow(frame, bool(speech))
        self._feed_kept()
        self._act(decision)
        self.counters.overflows += self._overflow_delta()

    def _follow(self, frame: Frame, speech: bool) -> None:
        self.writer.follow(frame, speech)
        self._follow_left -= 1
        if self._follow_left == 0:
            self.writer.end_follow()

    def _stop_following(self) -> None:
        if self._follow_left > 0:
            self._follow_left = 0
            self.writer.end_follow()

    def _overflow_delta(self) -> int:
        seen = self.source.overflows if self.source else 0
        delta, self._overflows_seen = seen - self._overflows_seen, seen
        return max(delta, 0)

    def _act(self, decision: Wake | Finished | Discarded | None) -> None:
        if isinstance(decision, Wake):
            self._on_wake(decision)
        elif decision is not None:
            self._on_stop(decision)

    def _on_wake(self, wake: Wake) -> None:
        before = tuple(self._before)  # the room, for the command hearing; then let go
        self._before.clear()
        self._stop_following()
        self.counters.wakes += 1
        self.events.emit(events.Wake(t=seconds(wake.at), wake_word=wake.wake_word,
                                     score=round(wake.score, 4)))
        if problem := self._can_record():
            self.recorder.light_failed()  # nothing is kept: the light stays off
            self._refuse(wake, "store_unavailable", problem)
            self.counters.store_ok = False
            return
        self.counters.store_ok = True
        try:
            self.light.recording()
        except IndicatorError as exc:
            self.recorder.light_failed()
            self.light.idle()
            self._refuse(wake, "indicator_failed", str(exc))
            return
        at = self._clock()
        self.recorder.light_confirmed(at)
        self.events.emit(events.Indicator(t=seconds(at), state="recording"))
        self.writer.begin(self.wake_features(wake), before)
        self._feed_kept()

    def _turn_away(self, wake: Wake, reason: DiscardReason) -> None:
        """A wake the second look did not believe: announced and counted, nothing else."""
        self.counters.wakes += 1
        self.counters.discarded += 1
        t = seconds(wake.at)
        self.events.emit(events.Wake(t=t, wake_word=wake.wake_word, score=round(wake.score, 4)))
        self.events.emit(events.Discarded(t=t, reason=reason))

    def _refuse(self, wake: Wake, code: ErrorCode, problem: str) -> None:
        self.counters.errors += 1
        log.error("not recording: %s", problem)
        self.events.emit(events.Error(t=seconds(wake.at), code=code, request_id=None,
                                      message=f"{problem}; nothing was recorded"))

    def _on_stop(self, decision: Finished | Discarded) -> None:
        self.light.idle()
        at = decision.utterance.end if isinstance(decision, Finished) else decision.at
        self.events.emit(events.Indicator(t=seconds(at), state="idle"))
        if isinstance(decision, Finished):
            lag_s = (self._clock() - decision.utterance.start) / SAMPLE_RATE_HZ
            self.writer.finish(decision.utterance, datetime.now(UTC) - timedelta(seconds=lag_s))
            self._follow_left = self._answer_frames
        else:
            self.writer.cancel()
            self.counters.discarded += 1
            self.events.emit(events.Discarded(t=seconds(decision.at), reason=decision.reason))
        next_wake = decision.next_wake if isinstance(decision, Discarded) else None
        self.recorder.finalised(next_wake)
        if next_wake is not None:
            self._on_wake(next_wake)

    def _clock(self) -> int:
        return self.source.clock() if self.source else self._last_end

    def _feed_kept(self) -> None:
        """Hand the frames the recorder just kept to the transcriber (on the writer's thread)."""
        for frame in self.recorder.take_kept():
            self.writer.feed(frame)
