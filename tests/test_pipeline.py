"""The whole listening loop with real openWakeWord models and espeak-ng speech; the LED is
gpiozero's MockFactory, and invariants I1/I2 are checked against its recorded pin history."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from device.core.config import Settings
from device.storage.clips import ClipStore
from tests.helpers import PLAIN_SENTENCE, WAKE_SENTENCE, of_type, read_wav, simulate


def test_wake_sentence_gives_one_wake_one_light_pair_and_one_lit_clip(
    with_models: Path, speech: Callable[..., Path], state_dir: Path, tmp_path: Path
) -> None:
    factory = MockFactory()
    events, source, counters = simulate(speech(WAKE_SENTENCE), state_dir, factory)

    [wake] = of_type(events, "wake")
    assert wake["wake_word"] == "hey_jarvis" and wake["score"] > 0.5
    assert [e["state"] for e in of_type(events, "indicator")] == ["recording", "idle"]
    assert [s.state for s in source.pin.states] == [False, True, False]
    [clip] = of_type(events, "clip")
    light_on = of_type(events, "indicator")[0]["t"]
    assert clip["start"] >= light_on >= wake["t"]
    assert counters.wakes == 1 and counters.clips == 1 and counters.overflows == 0

    # I1: every kept frame was captured while the light was lit; it was off one frame later.
    start, end = round(clip["start"] * 16000), round(clip["end"] * 16000)
    kept = [s for s in sorted(source.lit_at_capture) if start <= s < end]
    assert kept and all(source.lit_at_capture[s] for s in kept)
    assert not source.lit_at_capture[end + 1280]
    assert not any(source.lit_at_capture[s] for s in source.lit_at_capture if s < start)

    # The file on disk holds exactly those frames' audio, owner-only.
    store = ClipStore(state_dir)
    wav = tmp_path / "clip.wav"
    audio, rate = read_wav(store.export(store.get(clip["id"]), wav))
    assert rate == 16000
    assert np.array_equal(audio, np.concatenate([source.audio[s] for s in kept]))
    assert (state_dir / "clips" / f"{clip['id']}.clip").stat().st_mode & 0o777 == 0o600
    assert state_dir.stat().st_mode & 0o777 == 0o700
    assert (state_dir / "index.sqlite").stat().st_mode & 0o777 == 0o600


class StuckPin(MockPin):
    """A pin whose driver accepts writes but whose level never changes (a broken LED driver)."""

    def _set_state(self, value: Any) -> None:
        pass


class FailingPin(MockPin):
    """A pin whose driver errors whenever it is driven high."""

    def _set_state(self, value: Any) -> None:
        if value:
            raise OSError(5, "Input/output error")
        super()._set_state(value)


@pytest.mark.parametrize("pin_class", [StuckPin, FailingPin])
def test_light_that_cannot_turn_on_means_nothing_is_kept(
    with_models: Path, speech: Callable[..., Path], state_dir: Path, pin_class: type[MockPin],
) -> None:
    factory = MockFactory(pin_class=pin_class)
    events, source, counters = simulate(speech(WAKE_SENTENCE), state_dir, factory)

    assert len(of_type(events, "wake")) == 1
    [error] = of_type(events, "error")
    assert error["code"] == "indicator_failed" and "nothing was recorded" in error["message"]
    assert of_type(events, "clip") == [] and of_type(events, "indicator") == []
    assert not any(s.state for s in source.pin.states)
    assert list((state_dir / "clips").iterdir()) == []
    assert counters.clips == 0 and counters.errors == 1


def test_speech_without_the_wake_word_keeps_nothing(
    with_models: Path, speech: Callable[..., Path], state_dir: Path
) -> None:
    factory = MockFactory()
    events, source, _ = simulate(speech(PLAIN_SENTENCE), state_dir, factory)
    assert events == []
    assert [s.state for s in source.pin.states] == [False]
    assert list((state_dir / "clips").iterdir()) == []


def test_false_wake_followed_by_silence_is_discarded(
    with_models: Path, speech: Callable[..., Path], state_dir: Path
) -> None:
    factory = MockFactory()
    events, source, counters = simulate(speech("hey jarvis", tail_s=5.0), state_dir, factory)
    assert len(of_type(events, "wake")) == 1
    [discarded] = of_type(events, "discarded")
    assert discarded["reason"] == "no_speech"
    assert [e["state"] for e in of_type(events, "indicator")] == ["recording", "idle"]
    assert of_type(events, "clip") == [] and list((state_dir / "clips").iterdir()) == []
    assert counters.discarded == 1


def test_preroll_keeps_the_wake_word_only_when_opted_in(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path
) -> None:
    settings = Settings.model_validate({"recorder": {"keep_wake_word_audio": True, "preroll_s": 1.0}})
    events, _, _ = simulate(speech(WAKE_SENTENCE), tmp_path / "a", MockFactory(), settings)
    plain, _, _ = simulate(speech(WAKE_SENTENCE), tmp_path / "b", MockFactory())
    [with_preroll], [without] = of_type(events, "clip"), of_type(plain, "clip")
    assert without["start"] - with_preroll["start"] == pytest.approx(1.04, abs=0.001)
