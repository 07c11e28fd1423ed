"""Gated listening: in a quiet room the wake-word models do not run on every frame.

openWakeWord runs three models on every 80 ms frame (melspectrogram, embedding, wake word), which
holds a Pi Zero 2 W core busy even in silence. The gate keeps only what is cheap rolling: the frame
energy against an adaptive noise floor, and the last `preroll_s` of audio in RAM. When a frame
rises `margin_db` above the floor, the buffered audio is replayed through the models first (so
they see the same context as if they had never stopped: it spans about 2.1 s of audio)
and then every frame is scored until `hangover_s` after the last loud one. While a recording is
open the gate stays open. The floor follows the room: it is a low percentile of the last 30 s of
frame levels, so a fan or a fridge becomes the floor (and does not hold the gate open) while speech
stands above it.

The same gate, opened by microWakeWord's probability instead of the frame's energy, is the cascade
(device/wake/confirm.py): openWakeWord then runs only around what microWakeWord half-heard.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

import numpy as np

from device.audio.vad import level_dbfs
from device.core.config import WakeSettings
from device.core.frames import frames_for
from device.wake.detector import WakeDetector

FLOOR_WINDOW_S = 30.0
FLOOR_PERCENTILE = 5
"""The noise floor: this percentile of the frame levels in the last FLOOR_WINDOW_S."""
FLOOR_EVERY_FRAMES = 6
"""The floor is recomputed this often (every 0.48 s): a percentile of 375 levels on every frame
cost about a twentieth of openWakeWord's own time per frame, and a 30 s floor does not move faster."""
SILENCE_DB = -100.0


def frame_db(samples: np.ndarray) -> float:
    return level_dbfs(samples, SILENCE_DB)


class GatedDetector:
    """A WakeDetector that scores frames only while the room is not quiet (or while recording).
    `opens(samples)`, if given, decides instead of the frame's energy."""

    def __init__(self, inner: WakeDetector, settings: WakeSettings,
                 keep_open: Callable[[], bool] = lambda: False,
                 opens: Callable[[np.ndarray], bool] | None = None) -> None:
        self.names = inner.names
        self.frame_samples = inner.frame_samples
        self._inner = inner
        self._opens = opens or self._loud
        self._margin_db = settings.gate_margin_db
        self._hangover = frames_for(settings.gate_hangover_s)
        self._keep_open = keep_open
        self._buffer: deque[np.ndarray] = deque(maxlen=frames_for(settings.gate_preroll_s))
        self._levels: deque[float] = deque(maxlen=frames_for(FLOOR_WINDOW_S))
        self._floor: float | None = None
        self._open_for = 0
        self._quiet = {name: 0.0 for name in inner.names}
        self.frames = 0
        self.scored = 0
        """Frames seen and frames the models ran on (replays included), for benchmarks and tests."""

    @property
    def open(self) -> bool:
        return self._open_for > 0

    def scores(self, samples: np.ndarray) -> Mapping[str, float]:
        self.frames += 1
        if self._opens(samples) or self._keep_open():
            if not self.open:
                self._replay()
            self._open_for = self._hangover
        elif self._open_for > 0:
            self._open_for -= 1
        if not self.open:
            self._buffer.append(samples)
            return self._quiet
        self.scored += 1
        return self._inner.scores(samples)

    def _loud(self, samples: np.ndarray) -> bool:
        level = frame_db(samples)
        self._levels.append(level)
        if self._floor is None or self.frames % FLOOR_EVERY_FRAMES == 0:
            self._floor = self.floor_db()
        return level > self._floor + self._margin_db

    def floor_db(self) -> float:
        """np.percentile(levels, FLOOR_PERCENTILE), its default (linear) method to the bit, without
        np.percentile itself: that imports numpy.ma (1.2 MB resident) to sort its indices."""
        levels = sorted(self._levels)
        at = (len(levels) - 1) * (FLOOR_PERCENTILE / 100)
        low = int(at)
        below, above, t = levels[low], levels[min(low + 1, len(levels) - 1)], at - low
        return above - (above - below) * (1 - t) if t >= 0.5 else below + (above - below) * t

    def reset(self) -> None:
        """Forget all audio heard so far: the buffer, the room's levels, and the models'."""
        self._buffer.clear()
        self._levels.clear()
        self._floor = None
        self._open_for = 0
        self._inner.reset()

    def _replay(self) -> None:
        """Bring the models' buffers up to date with the audio they skipped (scores discarded:
        those frames were quiet)."""
        while self._buffer:
            self.scored += 1
            self._inner.scores(self._buffer.popleft())
