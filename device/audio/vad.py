"""Voice activity on 80 ms frames with webrtcvad (which takes 10, 20 or 30 ms)."""

from __future__ import annotations

import numpy as np

from device import SAMPLE_RATE_HZ

SUBFRAME_SAMPLES = SAMPLE_RATE_HZ // 100  # 10 ms


class SpeechDetector:
    def __init__(self, aggressiveness: int) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, samples: np.ndarray) -> bool:
        """True when at least half of the frame's 10 ms pieces are voiced."""
        pieces = len(samples) // SUBFRAME_SAMPLES
        voiced = sum(
            self._vad.is_speech(
                samples[i * SUBFRAME_SAMPLES : (i + 1) * SUBFRAME_SAMPLES].tobytes(), SAMPLE_RATE_HZ
            )
            for i in range(pieces)
        )
        return voiced * 2 >= pieces
