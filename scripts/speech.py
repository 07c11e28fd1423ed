"""The project's one way to render speech for benchmarks and data (espeak-ng through
scripts/make-test-audio): the same text always gives the same bytes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent


def speak(out: Path, text: str, voice: str = "en", lead: float = 0.3, tail: float = 0.3,
          wpm: int = 175) -> np.ndarray:
    subprocess.run([str(ROOT / "scripts" / "make-test-audio"), str(out), text, voice, str(lead),
                    str(tail), str(wpm)], check=True)
    data, _ = soundfile.read(str(out), dtype="int16")
    return np.asarray(data)


def say(text: str, voice: str, speed: int, pitch: int, path: Path) -> None:
    """Speech with no silence around it, written to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(ROOT / "scripts" / "make-test-audio"), str(path), text, voice, "0", "0",
                    str(speed), str(pitch)], check=True)


def last_voiced_sample(audio: np.ndarray) -> int:
    """Where the speech in `audio` ends: one past its last sample above 2 % of its peak."""
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 0.02 * np.abs(audio).max())
    return int(loud[-1]) + 1
