"""The phrase check: a second look that knows the whole wake phrase, for anyone's voice.

hey_jarvis wakes on the bare name "Jarvis" about half the time (real recordings from many
speakers score as high as the phrase). A speaker-independent verifier, openWakeWord's custom-verifier
recipe again (device/wake/verifier.py), trained by scripts/train-phrase-check on real bare "Jarvis"
recordings against the same recordings with a real "hey" before them, tells the two apart from the
16 x 96 embedding features the wake model has just scored. It ships as plain arrays in
device/data/<wake_word>.phrase.npz and costs one dot product per waking frame.

It is on at the strict level by default (`wake.phrase_check`): a wake it doubts is looked at again
on the next waking frames, then discarded (`not_phrase`) before the light, like the owner
verifier's. Models without a bundled phrase check are never doubted.

A bundled file that cannot be used (a damaged installation) is reported once at start (a log line
and an `error` event) and every wake the check would have looked at is discarded
(`phrase_check_damaged`): never kept without it. It is part of the installation, so reinstalling
(which restarts the service) fixes it; `wake.phrase_check = "never"` turns the check off.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import numpy as np

from device.core.config import WakeSettings
from device.core.errors import ModelError
from device.core.events import DiscardReason
from device.wake.trigger import Wake
from device.wake.verifier import BUNDLED_FEATURES, Weights, bundled_file, report_damage

log = logging.getLogger(__name__)

NOT_PHRASE: DiscardReason = "not_phrase"
"""The `discarded` reason of a wake the phrase check turned away."""
PHRASE_CHECK_DAMAGED: DiscardReason = "phrase_check_damaged"
"""The `discarded` reason of a wake the phrase check would have looked at, when its file is damaged."""
PROBABILITY = 0.5
"""A wake whose features give the whole phrase a lower probability than this is doubted."""


def bundled(name: str) -> Weights | None:
    """The phrase check shipped for a wake-word model, if there is one."""
    path = bundled_file(name, ".phrase.npz")
    return None if path is None else Weights.read(path).fit(BUNDLED_FEATURES)


class PhraseCheck:
    """Asked by the recorder at each wake (before the owner verifier), with the features just scored."""

    def __init__(self, settings: WakeSettings, features: Callable[[str], np.ndarray],
                 level: Callable[[], str], report: Callable[[str], None] = lambda message: None
                 ) -> None:
        """`report(message)`: a bundled file cannot be used (said once)."""
        self._mode = settings.phrase_check
        self._features = features
        self._level = level
        self._report = report
        self._weights: dict[str, Weights | ModelError] = {}
        for name in settings.models if self._mode != "never" else []:
            try:
                if (weights := bundled(name)) is not None:
                    self._weights[name] = weights
            except ModelError as exc:
                self._weights[name] = self._damaged(name, exc)
        self.probabilities: deque[float] = deque(maxlen=1000)
        """The latest probabilities computed (for benchmarks and tests)."""

    def _damaged(self, name: str, exc: ModelError) -> ModelError:
        report_damage(f"the phrase check for {name}", exc,
                      f"the wakes of {name} it would check are discarded until edge-recorder is "
                      "reinstalled (the file comes with it) or wake.phrase_check = \"never\" turns "
                      "it off", self._report)
        return exc

    def active(self, name: str) -> bool:
        on = self._mode == "always" or (self._mode == "strict" and self._level() == "strict")
        return on and name in self._weights

    def second_look(self, wake: Wake) -> DiscardReason | None:
        """None if the wake may go on; else why not."""
        name = wake.wake_word
        if not self.active(name):
            return None
        weights = self._weights[name]
        if isinstance(weights, ModelError):
            return PHRASE_CHECK_DAMAGED
        try:
            p = weights.probability(np.asarray(self._features(name), dtype=np.float32))
        except ModelError as exc:
            self._weights[name] = self._damaged(name, exc)
            return PHRASE_CHECK_DAMAGED
        self.probabilities.append(p)
        if p < PROBABILITY:
            log.info("wake %s doubted: the phrase check gives %.2f (< %.2f)", wake.wake_word, p,
                     PROBABILITY)
            return NOT_PHRASE
        return None
