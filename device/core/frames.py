"""The unit of audio passed through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device import FRAME_SAMPLES, SAMPLE_RATE_HZ


@dataclass(frozen=True)
class Frame:
    """80 ms of 16 kHz mono int16 audio; `start` counts samples since the stream started."""

    start: int
    samples: np.ndarray

    @property
    def end(self) -> int:
        return self.start + len(self.samples)

    @property
    def t(self) -> float:
        return seconds(self.start)


def seconds(samples: int) -> float:
    """Sample count at 16 kHz as audio seconds, rounded for stable event output."""
    return round(samples / SAMPLE_RATE_HZ, 4)


def samples_for(duration_s: float) -> int:
    return round(duration_s * SAMPLE_RATE_HZ)


def frames_for(duration_s: float) -> int:
    """Whole frames covering at least `duration_s`."""
    return max(1, -(-samples_for(duration_s) // FRAME_SAMPLES))
