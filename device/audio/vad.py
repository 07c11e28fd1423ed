"""Voice activity on 80 ms frames: webrtcvad (which takes 10, 20 or 30 ms), over a noise floor
learned while idle.

webrtcvad alone hears steady noise (a running tap, a fan) as speech, so in a noisy kitchen the end
of an utterance was never found and the light stayed on until the length limit. The room's level is
learned from the frames heard while nothing is recorded (the median frame energy of the last
FLOOR_FRAMES of them: speech now and then does not move a median), and a frame counts as speech
only if it is also `margin_db` above that floor. Measured on tuning voices and noise (scripts/bench
--only-voice, BENCHMARKS.md); its cost is a mean and a median per frame, far below webrtcvad's own.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

import numpy as np

from device import SAMPLE_RATE_HZ

SUBFRAME_SAMPLES = SAMPLE_RATE_HZ // 100  # 10 ms
FLOOR_FRAMES = 125
"""How many idle frames (10 s) the room's level is the median of."""


def frame_level(samples: np.ndarray) -> float:
    """Root mean square of a frame, in sample units."""
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0


def level_dbfs(samples: np.ndarray, floor_db: float) -> float:
    """The level of 16-bit samples in dB below full scale, never under `floor_db` (silence)."""
    rms = frame_level(samples) / 32768.0
    return max(floor_db, 20 * math.log10(rms)) if rms > 0 else floor_db


class SpeechDetector:
    def __init__(self, aggressiveness: int, margin_db: float = 0.0) -> None:
        """`margin_db`: how far over the room's level a frame must be to count as speech (0 = no
        floor: webrtcvad alone)."""
        import webrtcvad

        self._vad = webrtcvad.Vad(aggressiveness)
        self._ratio = 10 ** (margin_db / 20) if margin_db > 0 else 0.0
        self._idle: deque[float] = deque(maxlen=FLOOR_FRAMES)
        self._floor: float | None = None

    def idle(self, samples: np.ndarray) -> None:
        """A frame heard while nothing is recorded: the room's own sound."""
        if self._ratio:
            self._idle.append(frame_level(samples))
            self._floor = None

    def floor(self) -> float:
        """The room's level now (0 until an idle frame was heard). statistics.median, the same
        value as np.median, which imports numpy.ma (1.2 MB resident) to look for masks."""
        if self._floor is None:
            self._floor = statistics.median(self._idle) if self._idle else 0.0
        return self._floor

    def is_speech(self, samples: np.ndarray) -> bool:
        """True when the frame is over the room's level by the margin and at least half of its
        10 ms pieces are voiced."""
        if self._ratio and frame_level(samples) < self.floor() * self._ratio:
            return False
        pieces = len(samples) // SUBFRAME_SAMPLES
        voiced = sum(
            self._vad.is_speech(
                samples[i * SUBFRAME_SAMPLES : (i + 1) * SUBFRAME_SAMPLES].tobytes(), SAMPLE_RATE_HZ
            )
            for i in range(pieces)
        )
        return voiced * 2 >= pieces
