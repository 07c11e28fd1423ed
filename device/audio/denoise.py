"""Noise suppression for the command recognizer's second hearing: WebRTC's noise suppressor
(`webrtc-noise-gain`, what wyoming-satellite puts in front of Home Assistant's speech pipeline).

Only the voice-command path hears its output (device/speech/voice.py): in front of openWakeWord it
hurt (wake words heard at 10 dB SNR fell from 37 to 26-32 of 48 on the tuning voices), and in
front of the command recognizer alone it let ordinary speech through (3-7 false commands in 348
sentences), so it is a second opinion, never the only one (BENCHMARKS.md, issue 27).

A suppressor learns the room's noise as it goes. One is made per utterance, in the writer's thread,
and first hears the last WARM_S of the stream before the wake (RAM only; its output is dropped), so
that it knows the room when the command starts (only in a noisy room: device/speech/voice.py).
The audio it hears is never kept.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from device import SAMPLE_RATE_HZ

PIECE_SAMPLES = SAMPLE_RATE_HZ // 100
"""The suppressor takes 10 ms at a time."""
LEVEL = 3
"""Suppression level (0-4): 3 measured best on the tuning voices as a second hearing (the lever
runs of scripts/voice-levers)."""
AUTO_GAIN = 0
"""Automatic gain control off: it cost clean commands on the tuning voices."""
WARM_S = 2.0
"""How much of the stream before the wake the suppressor hears first, to learn the room."""
FLOOR = np.random.default_rng(0).normal(0.0, 3.0, SAMPLE_RATE_HZ).round().astype(np.int16)
"""A -80 dBFS floor added under what the suppressor hears: after exact digital silence (a WAV
file, espeak-ng) it takes the speech for noise and removes 2.5-10 dB of it (tests/test_denoise.py,
scripts/voice-levers); no microphone gives exact zeros, so this changes nothing for one."""


def denoise_available() -> bool:
    """Whether webrtc-noise-gain can be loaded here (a dependency; a hand-made install may lack it)."""
    try:
        import webrtc_noise_gain  # noqa: F401
    except ImportError:
        return False
    return True


class NoiseSuppressor:
    """One utterance's suppressor: 16 kHz int16 in, the same length out."""

    def __init__(self, warm: Iterable[np.ndarray] = ()) -> None:
        from webrtc_noise_gain import AudioProcessor

        self._processor = AudioProcessor(AUTO_GAIN, LEVEL)
        self._floor_at = 0
        for samples in warm:
            self.process(samples)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """`samples` with the noise taken out (a last piece shorter than 10 ms passes as it is)."""
        whole = len(samples) // PIECE_SAMPLES * PIECE_SAMPLES
        audio = self._with_floor(samples[:whole])
        out = np.empty(len(samples), dtype=np.int16)
        for i in range(0, whole, PIECE_SAMPLES):
            done = self._processor.Process10ms(audio[i:i + PIECE_SAMPLES].tobytes())
            out[i:i + PIECE_SAMPLES] = np.frombuffer(done.audio, dtype=np.int16)
        out[whole:] = samples[whole:]
        return out

    def _with_floor(self, samples: np.ndarray) -> np.ndarray:
        at = (self._floor_at + np.arange(len(samples))) % len(FLOOR)
        self._floor_at = (self._floor_at + len(samples)) % len(FLOOR)
        mixed = samples.astype(np.int32) + FLOOR[at]
        return np.clip(mixed, -32768, 32767).astype(np.int16)
