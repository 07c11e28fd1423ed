"""`edge-recorder listen --meter`: input level, voice activity and every wake word's score, live
(openWakeWord's, and microWakeWord's beside it as "micro" where it has a model).

For tuning thresholds with a real microphone. It keeps nothing: no store, no light, no network.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import IO

import numpy as np

from device.audio.sources import AudioSource
from device.audio.vad import SpeechDetector, level_dbfs
from device.core.config import Settings
from device.wake.detector import WakeDetector

BAR_WIDTH = 30
FLOOR_DB = -90.0
PRINT_EVERY_FRAMES = 6
"""Without a terminal, one line per ~0.5 s instead of redrawing in place."""


def dbfs(samples: np.ndarray) -> float:
    return level_dbfs(samples, FLOOR_DB)


SECOND = "micro"
"""How the meter names microWakeWord's probability, beside openWakeWord's score."""


def first_threshold(settings: Settings, name: str, scores: Mapping[str, float]) -> float:
    """openWakeWord's threshold for `name` as the daemon has it: the pair's only where microWakeWord
    scores it here and wake.confirm has it confirm (not where it is not installed, or set to
    "none": the meter shows its score for every wake word it has a model for)."""
    confirmed = name in getattr(scores, "confirm", {}) and settings.wake.confirm_for(name) != "none"
    return settings.wake.threshold_for(name, confirmed=confirmed)


def render(level_db: float, speech: bool, scores: Mapping[str, float], settings: Settings) -> str:
    filled = round(BAR_WIDTH * (level_db - FLOOR_DB) / -FLOOR_DB)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    confirm: Mapping[str, float] = getattr(scores, "confirm", {})

    def shown(score: float, threshold: float) -> str:
        return f"{score:.2f}{'*' if score > threshold else ' '}"

    words = "  ".join(
        f"{name} {shown(score, first_threshold(settings, name, scores))}"
        + (f" {SECOND} {shown(confirm[name], settings.wake.confirm_threshold_for(name))}"
           if name in confirm else "")
        for name, score in scores.items()
    )
    return f"level {level_db:6.1f} dBFS [{bar}] {'speech' if speech else 'quiet '}  {words}"


def over(scores: Mapping[str, float], settings: Settings) -> bool:
    """Whether any detector's score is over its threshold in this frame."""
    confirm: Mapping[str, float] = getattr(scores, "confirm", {})
    return any(s > first_threshold(settings, k, scores) for k, s in scores.items()) or any(
        s > settings.wake.confirm_threshold_for(k) for k, s in confirm.items())


def run_meter(settings: Settings, source: AudioSource, detector: WakeDetector, out: IO[str],
              stop: threading.Event, seconds: float | None = None) -> dict[str, float]:
    """Show the meter until stop, the input ends, or `seconds` of audio. Returns peak scores."""
    vad = SpeechDetector(settings.recorder.vad_aggressiveness)
    live = out.isatty()
    peaks: dict[str, float] = {}
    thresholds: dict[str, float] = {}
    for n, frame in enumerate(source.frames(stop)):
        scores = detector.scores(frame.samples)
        confirm: Mapping[str, float] = getattr(scores, "confirm", {})
        for name, score in scores.items():
            peaks[name] = max(peaks.get(name, 0.0), score)
            thresholds[name] = first_threshold(settings, name, scores)
        for name, score in confirm.items():
            key = f"{name} {SECOND}"
            peaks[key] = max(peaks.get(key, 0.0), score)
            thresholds[key] = settings.wake.confirm_threshold_for(name)
        line = render(dbfs(frame.samples), vad.is_speech(frame.samples), scores, settings)
        if live:
            out.write("\r\x1b[2K" + line)
            out.flush()
        elif n % PRINT_EVERY_FRAMES == 0 or over(scores, settings):
            out.write(f"{frame.t:7.2f}s {line}\n")
        if seconds is not None and frame.end / 16000 >= seconds:
            break
    if live:
        out.write("\n")
    summary = ", ".join(f"{k} {v:.2f} (threshold {thresholds[k]:.2f})" for k, v in peaks.items())
    out.write(f"peak scores: {summary}\n")
    return peaks
