"""The command hearing's noise suppressor (device/audio/denoise.py): WebRTC's, through
webrtc-noise-gain, measured on the bytes it gives back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from device.audio.denoise import NoiseSuppressor
from tests.helpers import read_wav


def level_db(samples: np.ndarray) -> float:
    """Mean energy of the 10 ms pieces within 30 dB of the loudest, in dB: the speech's level."""
    x = samples[: len(samples) // 160 * 160].astype(np.float64).reshape(-1, 160)
    energy = (x ** 2).mean(axis=1)
    return float(10 * np.log10(energy[energy > energy.max() * 1e-3].mean()))


def through(suppressor: NoiseSuppressor, samples: np.ndarray) -> np.ndarray:
    return np.concatenate([suppressor.process(samples[i:i + 1280])
                           for i in range(0, len(samples), 1280)])


def test_steady_noise_is_taken_out_once_the_room_is_learned() -> None:
    noise = np.random.default_rng(1).normal(0, 1000, 16000 * 3).astype(np.int16)
    out = NoiseSuppressor(warm=[noise[i:i + 1280] for i in range(0, 32000, 1280)]).process(noise[32000:])
    assert out.dtype == np.int16 and len(out) == 16000
    before, after = (10 * np.log10(np.mean(x.astype(np.float64) ** 2)) for x in (noise[32000:], out))
    assert before - after > 10  # 18 dB here


def test_speech_after_digital_silence_keeps_its_level(speech: Callable[..., Path]) -> None:
    """After exact zeros (a WAV file, espeak-ng) WebRTC's suppressor takes speech for noise and
    takes 2.5 dB of it away here; the -80 dBFS floor under its input keeps it whole."""
    samples, _ = read_wav(speech("엄마한테 전화해 줘", voice="ko", lead_s=1.0, tail_s=1.0, wpm=140))
    out = through(NoiseSuppressor(warm=[np.zeros(1280, np.int16)] * 25), samples)
    assert abs(level_db(out) - level_db(samples)) < 1.0


def test_a_piece_shorter_than_10_ms_passes_as_it_is() -> None:
    samples = np.arange(1000, dtype=np.int16)
    out = NoiseSuppressor().process(samples)
    assert len(out) == 1000 and np.array_equal(out[960:], samples[960:])
