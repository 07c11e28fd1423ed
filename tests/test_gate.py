"""Gated listening (issue 13): in a quiet room the wake-word models rest, and no wake is lost at
the onset of speech; with real models on espeak-ng speech and generated room tone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
from gpiozero.pins.mock import MockFactory

from device.core.config import Settings, WakeSettings
from device.wake.gate import GatedDetector
from tests.helpers import WAKE_SENTENCE, of_type, read_wav, simulate


def room_tone(seconds: float, db: float, seed: int = 1) -> np.ndarray:
    """Steady broadband noise at `db` dBFS: a fan, a fridge, a quiet room."""
    noise = np.random.default_rng(seed).standard_normal(int(seconds * 16000))
    noise *= 10 ** (db / 20) * 32768 / np.sqrt(np.mean(noise ** 2))
    return noise.astype(np.int16)


def with_tone(speech: Path, out: Path, lead_s: float, db: float) -> Path:
    voice, _ = read_wav(speech)
    tone = room_tone(lead_s + len(voice) / 16000 + 2.0, db)
    mixed = tone.astype(np.int32)
    start = int(lead_s * 16000)
    mixed[start:start + len(voice)] += voice
    soundfile.write(str(out), np.clip(mixed, -32768, 32767).astype(np.int16), 16000, subtype="PCM_16")
    return out


def test_the_gate_finds_the_same_wake_as_the_models_alone_while_they_mostly_rest(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path
) -> None:
    wav = with_tone(speech(WAKE_SENTENCE, lead_s=0.0, tail_s=0.0), tmp_path / "room.wav", 20.0, -50)
    results = {}
    for gate in (False, True):
        settings = Settings.model_validate({"wake": {"gate": gate}})
        events, _, _ = simulate(wav, tmp_path / f"s{gate}", MockFactory(), settings)
        results[gate] = (of_type(events, "wake"), of_type(events, "clip"))
    (ungated, ungated_clips), (gated, gated_clips) = results[False], results[True]
    assert len(ungated) == len(gated) == 1 and len(ungated_clips) == len(gated_clips) == 1
    assert gated[0]["t"] == ungated[0]["t"]  # the light comes on in the same frame
    assert abs(gated[0]["score"] - ungated[0]["score"]) < 0.05


class Counting:
    names = ["hey_jarvis"]
    frame_samples = 1280

    def __init__(self) -> None:
        self.calls = 0

    def scores(self, samples: np.ndarray) -> dict[str, float]:
        self.calls += 1
        return {"hey_jarvis": 0.0}


def test_steady_fan_noise_becomes_the_floor_and_speech_opens_the_gate() -> None:
    inner = Counting()
    gate = GatedDetector(inner, WakeSettings())
    fan = room_tone(60.0, -35)  # loud, but steady
    for i in range(0, len(fan), 1280):
        gate.scores(fan[i:i + 1280])
    resting = inner.calls
    assert not gate.open and resting < 0.1 * gate.frames  # the fan does not hold the models awake
    burst = (room_tone(1.0, -15, seed=2))  # someone speaks, 20 dB over the fan
    gate.scores(burst[:1280])
    assert gate.open and inner.calls > resting + 20  # the pre-roll was replayed, then scored


def test_the_gate_stays_open_while_recording() -> None:
    inner, recording = Counting(), [True]
    gate = GatedDetector(inner, WakeSettings(), keep_open=lambda: recording[0])
    quiet = np.zeros(1280, dtype=np.int16)
    for _ in range(100):
        gate.scores(quiet)
    assert inner.calls == 100
