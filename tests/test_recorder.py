"""The recorder state machine with plain lists: no models, no hardware."""

from __future__ import annotations

import numpy as np
import pytest

from device.core.config import RecorderSettings, WakeSettings
from device.core.frames import Frame
from device.recording.recorder import (
    TRANSITIONS,
    Discarded,
    Finished,
    Recorder,
    State,
    TransitionError,
    Wake,
    WakeGate,
)

N = 1280
SILENT = np.zeros(N, dtype=np.int16)


def frame(i: int) -> Frame:
    return Frame(i * N, np.full(N, i, dtype=np.int16))


def recorder(**overrides: object) -> tuple[Recorder, list[tuple[State, State]]]:
    seen: list[tuple[State, State]] = []
    rec = Recorder(RecorderSettings(**overrides), WakeSettings(startup_quiet_s=0),
                   lambda a, b: seen.append((a, b)))
    return rec, seen


def wake_then_record(rec: Recorder, speech: list[bool], wake_at: int = 5) -> list[object]:
    """Frames 0..wake_at-1 quiet, a wake on frame wake_at, light on at its end, then `speech`."""
    for i in range(wake_at):
        assert rec.on_frame(frame(i), {"hey_jarvis": 0.01}, None) is None
    hit = rec.on_frame(frame(wake_at), {"hey_jarvis": 0.97}, None)
    assert isinstance(hit, Wake)
    rec.light_confirmed(frame(wake_at).end)
    out = []
    for k, voiced in enumerate(speech, start=wake_at + 1):
        decision = rec.on_frame(frame(k), {"hey_jarvis": 0.0}, voiced)
        out.append(decision)
        if decision is not None:
            rec.finalised()
            break
    return out


def test_wake_then_speech_then_trailing_silence_keeps_exactly_the_lit_frames() -> None:
    rec, seen = recorder(trailing_silence_s=0.8)
    decisions = wake_then_record(rec, [True] * 5 + [False] * 20)
    done = decisions[-1]
    assert isinstance(done, Finished)
    u = done.utterance
    assert u.start == frame(6).start == u.light_on_at  # first frame after the light is on
    assert u.reason == "trailing_silence"
    assert len(u.frames) == 5 + 10  # 0.8 s of trailing silence = 10 frames
    assert [f.start for f in u.frames] == [frame(i).start for i in range(6, 21)]
    assert seen == [(State.LISTENING, State.RECORDING), (State.RECORDING, State.FINALISING),
                    (State.FINALISING, State.LISTENING)]


def test_frames_captured_before_the_light_was_confirmed_are_never_kept() -> None:
    rec, _ = recorder()
    for i in range(3):
        rec.on_frame(frame(i), {"w": 0.0}, None)
    assert isinstance(rec.on_frame(frame(3), {"w": 0.9}, None), Wake)
    rec.light_confirmed(frame(6).start)  # frames 4 and 5 were already in flight
    for i in (4, 5):
        assert rec.on_frame(frame(i), {"w": 0.0}, True) is None
    rec.on_frame(frame(6), {"w": 0.0}, True)
    assert [f.start for f in rec.take_kept()] == [frame(6).start]


def test_a_wake_without_speech_is_discarded_after_the_speech_timeout() -> None:
    rec, _ = recorder(speech_timeout_s=0.8)
    decisions = wake_then_record(rec, [False] * 30)
    assert decisions[-1] == Discarded(frame(15).end, "no_speech")
    assert len(decisions) == 10
    assert rec.state is State.LISTENING


def test_too_little_speech_is_discarded() -> None:
    rec, _ = recorder(min_speech_s=0.4, trailing_silence_s=0.16)
    decisions = wake_then_record(rec, [True, False, False, False])
    assert isinstance(decisions[-1], Discarded)


def test_max_length_stops_a_recording_that_never_goes_quiet() -> None:
    rec, _ = recorder(max_length_s=1.6)
    decisions = wake_then_record(rec, [True] * 100)
    done = decisions[-1]
    assert isinstance(done, Finished) and done.utterance.reason == "max_length"
    assert len(done.utterance.frames) == 20


def test_end_of_stream_closes_an_open_recording() -> None:
    rec, _ = recorder()
    wake_then_record(rec, [True] * 4)
    done = rec.end_of_stream(frame(10).end)
    assert isinstance(done, Finished) and done.utterance.reason == "end_of_stream"


def test_light_failure_keeps_nothing_and_keeps_listening() -> None:
    rec, seen = recorder()
    assert isinstance(rec.on_frame(frame(0), {"w": 0.9}, None), Wake)
    rec.light_failed()
    assert rec.state is State.LISTENING and seen == []
    with pytest.raises(TransitionError):
        rec.light_confirmed(frame(1).start)  # no pending wake any more


def test_preroll_only_with_opt_in_and_at_most_what_was_asked() -> None:
    rec, _ = recorder(keep_wake_word_audio=True, preroll_s=0.24)
    decisions = wake_then_record(rec, [True] * 3 + [False] * 10)
    frames = decisions[-1].utterance.frames  # type: ignore[union-attr]
    assert [f.start for f in frames[:3]] == [frame(i).start for i in (3, 4, 5)]
    rec2, _ = recorder()
    decisions2 = wake_then_record(rec2, [True] * 3 + [False] * 10)
    assert decisions2[-1].utterance.frames[0].start == frame(6).start  # type: ignore[union-attr]


def test_preroll_without_opt_in_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="keep_wake_word_audio"):
        RecorderSettings(preroll_s=1.0)


def test_mute_discards_an_open_recording_and_only_unmute_leaves_muted() -> None:
    rec, _ = recorder()
    wake_then_record(rec, [True] * 3)
    assert rec.mute() == Discarded(frame(8).end, "muted")
    assert rec.state is State.MUTED
    assert rec.on_frame(frame(20), {"hey_jarvis": 0.99}, None) is None
    rec.unmute()
    assert rec.state is State.LISTENING


def test_every_state_can_reach_muted_and_the_table_is_closed() -> None:
    for state, targets in TRANSITIONS.items():
        assert state is State.MUTED or State.MUTED in targets
        assert targets <= set(State)


def test_a_new_stream_does_not_inherit_the_old_streams_refractory_period() -> None:
    rec, _ = recorder()
    late = Frame(10_000 * N, SILENT)  # the old stream had run for 800 s
    assert isinstance(rec.on_frame(late, {"w": 0.9}, None), Wake)
    rec.light_failed()
    rec.new_stream()  # e.g. the USB microphone was unplugged and plugged back in
    assert isinstance(rec.on_frame(frame(30), {"w": 0.9}, None), Wake)


class TestWakeGate:
    def test_threshold_is_strict_and_per_model(self) -> None:
        gate = WakeGate(WakeSettings(models=["a", "b"], sensitivity="custom", threshold=0.5,
                                     thresholds={"b": 0.9}, startup_quiet_s=0))
        assert gate.update(frame(0), {"a": 0.5, "b": 0.8}) is None
        hit = gate.update(frame(1), {"a": 0.6, "b": 0.8})
        assert hit == Wake(frame(1).end, "a", 0.6)

    def test_patience_needs_consecutive_frames(self) -> None:
        gate = WakeGate(WakeSettings(sensitivity="custom", patience_frames=3, refractory_s=0,
                                     startup_quiet_s=0))
        scores = [0.9, 0.9, 0.1, 0.9, 0.9, 0.9]
        hits = [gate.update(frame(i), {"w": s}) for i, s in enumerate(scores)]
        assert [h is not None for h in hits] == [False] * 5 + [True]

    def test_refractory_period_suppresses_repeats(self) -> None:
        gate = WakeGate(WakeSettings(refractory_s=0.4, startup_quiet_s=0))
        hits = [gate.update(frame(i), {"w": 0.9}) for i in range(12)]
        assert [i for i, h in enumerate(hits) if h] == [0, 6]


    def test_nothing_wakes_in_the_first_second_of_a_stream(self) -> None:
        gate = WakeGate(WakeSettings())
        hits = [gate.update(frame(i), {"w": 0.9}) for i in range(20)]
        assert [i for i, h in enumerate(hits) if h] == [12]  # 1.04 s: the first frame after 1 s
        gate.reset()  # a new stream (after a mute, a replugged microphone): quiet again
        assert gate.update(frame(3), {"w": 0.99}) is None

    def test_the_gate_re_arms_as_soon_as_the_score_falls(self) -> None:
        gate = WakeGate(WakeSettings(refractory_s=2.0, startup_quiet_s=0))
        scores = [0.9, 0.9, 0.1, 0.1, 0.1, 0.9]  # a false wake, 240 ms of quiet, a real one
        hits = [gate.update(frame(i), {"w": s}) for i, s in enumerate(scores)]
        assert [i for i, h in enumerate(hits) if h] == [0, 5]


def test_a_wake_word_during_a_recording_supersedes_it_and_starts_a_new_one() -> None:
    rec, seen = recorder(speech_timeout_s=3.0)
    wake_then_record(rec, [False] * 3)  # a false wake: TV noise, no speech yet
    for i in range(9, 12):
        assert rec.on_frame(frame(i), {"hey_jarvis": 0.05}, True) is None
    again = rec.on_frame(frame(12), {"hey_jarvis": 0.97}, False)
    assert isinstance(again, Discarded) and again.reason == "superseded"
    assert again.next_wake == Wake(frame(12).end, "hey_jarvis", 0.97)
    rec.finalised(again.next_wake)
    rec.light_confirmed(frame(13).start)  # the listener answers the new wake
    assert rec.state is State.RECORDING
    for k in range(13, 40):
        if (done := rec.on_frame(frame(k), {"hey_jarvis": 0.0}, k < 20)) is not None:
            break
    assert isinstance(done, Finished) and done.utterance.start == frame(13).start
