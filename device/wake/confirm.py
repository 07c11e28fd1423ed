"""Two detectors that must agree: microWakeWord beside openWakeWord (wake.confirm).

For a wake word whose `wake.confirm` is "agree" or "cascade", every frame is scored by both, and the
scores go to the recorder as `Scores` (openWakeWord's, and microWakeWord's as `confirm`): the wake
gate (device/wake/trigger.py) then wakes only when both fired within CONFIRM_WINDOW_S, and turns a
detection by one alone away (`not_confirmed`). With "cascade", openWakeWord is the expensive one and
rests: a GatedDetector (device/wake/gate.py) opened by microWakeWord's probability rising over
CASCADE_LEVEL replays the last `gate_preroll_s` from RAM through it and scores until
`gate_hangover_s` after the probability fell back. It saves CPU only when every configured wake
word is cascaded (they share openWakeWord's front end); otherwise "cascade" acts as "agree". The
energy gate stays in front of both: in a quiet room neither runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from device import FRAME_SAMPLES
from device.core.config import CASCADE_LEVEL, WakeSettings
from device.core.errors import ModelError
from device.wake import micro
from device.wake.detector import OpenWakeWordDetector, WakeDetector
from device.wake.gate import GatedDetector
from device.wake.trigger import Scores

log = logging.getLogger(__name__)


class ConfirmedDetector:
    """openWakeWord for every wake word, microWakeWord beside it for those it confirms."""

    frame_samples = FRAME_SAMPLES

    def __init__(self, first: WakeDetector, second: WakeDetector, settings: WakeSettings,
                 cascade: bool) -> None:
        self.names = first.names
        self.second = second
        self._up = False
        self.first: WakeDetector = first
        if cascade:
            # Only microWakeWord opens it, during a recording too (a wake word said then supersedes
            # the recording, and microWakeWord stirs for it as ever): no need to run openWakeWord
            # on every frame of every recording.
            self.first = GatedDetector(first, settings, opens=lambda samples: self._up)
        for engine in (first, second):
            if FRAME_SAMPLES % engine.frame_samples:
                raise ModelError(f"a detector works in steps of {engine.frame_samples} samples, "
                                 f"which do not divide the pipeline's {FRAME_SAMPLES}")

    def scores(self, samples: np.ndarray) -> Scores:
        confirm = self.second.scores(samples)
        self._up = any(p > CASCADE_LEVEL for p in confirm.values())
        return Scores(self.first.scores(samples), confirm)

    def reset(self) -> None:
        self.first.reset()
        self.second.reset()


def confirm_modes(settings: WakeSettings, names: list[str]) -> dict[str, str]:
    """What each wake word uses: a measured default that needs microWakeWord where it is not
    installed (no wheel for this system) falls back to openWakeWord alone, with one warning; a
    configured one is an error then (raised when the detector loads)."""
    modes: dict[str, str] = {name: settings.confirm_for(name) for name in names}
    if not micro.available():
        defaults = [n for n, m in modes.items() if m != "none" and n not in settings.confirm]
        if defaults:
            log.warning("microWakeWord is not installed here, so %s run on openWakeWord alone "
                        "(%s)", ", ".join(defaults), micro.install_hint())
        modes.update(dict.fromkeys(defaults, "none"))
    return modes


def build_detector(settings: WakeSettings, scorer: OpenWakeWordDetector,
                  keep_open: Callable[[], bool] = lambda: False) -> WakeDetector:
    """What the listener asks every frame: openWakeWord (`scorer`), with microWakeWord beside it
    where wake.confirm says so, behind the energy gate (wake.gate)."""
    modes = confirm_modes(settings, scorer.names)
    confirmed = [name for name, mode in modes.items() if mode != "none"]
    detector: WakeDetector = scorer
    if confirmed:
        cascade = all(mode == "cascade" for mode in modes.values())
        detector = ConfirmedDetector(scorer, micro.MicroWakeWordDetector(confirmed), settings,
                                     cascade)
        log.info("wake words confirmed by microWakeWord: %s%s", ", ".join(confirmed),
                 " (cascade: openWakeWord runs only when microWakeWord stirs)" if cascade else "")
    if settings.gate:
        detector = GatedDetector(detector, settings, keep_open=keep_open)
    return detector


def meter_detector(settings: WakeSettings, scorer: OpenWakeWordDetector) -> WakeDetector:
    """For `listen --meter`: both detectors on every frame, for every wake word microWakeWord has a
    model for (whatever wake.confirm says), so a tester sees both scores; no gate."""
    names = [n for n in scorer.names if micro.has_model(n)]
    if not names or not micro.available():
        return scorer
    return ConfirmedDetector(scorer, micro.MicroWakeWordDetector(names), settings, cascade=False)
