"""microWakeWord, the second detector: Home Assistant's on-device engine, trained on other data with
another architecture than openWakeWord, from the `pymicro-wakeword` wheel (pinned in
device/__init__.py).

It brings its own feature front end (`pymicro_features`, 40 log-mel bands every 10 ms) and its own
TensorFlow Lite C library, beside ai-edge-litert (openWakeWord's runtime): the two share no symbol
(tests/test_detectors.py loads them in either order). Its models are streaming ones: each call
consumes three 10 ms feature windows and keeps its state inside the interpreter, so a reset reloads
the model. Its model files are checked against their pinned digests before they are loaded.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from device import MICROFEATURES_REQUIREMENT, MICROWAKEWORD_REQUIREMENT
from device.core.errors import ModelError, describe
from device.storage.models import MICRO_WAKE_FILES, verified_micro_model

log = logging.getLogger(__name__)

FEATURE_STEP_SAMPLES = 160
"""microWakeWord's front end makes one feature window per 10 ms."""


def install_hint() -> str:
    return (f"run scripts/openwakeword-install {sys.executable} (it installs {MICROWAKEWORD_REQUIREMENT}"
            f" and {MICROFEATURES_REQUIREMENT}, pinned; their wheels need x86-64 or aarch64 with "
            "glibc 2.35+), or set wake.confirm for this wake word to \"none\"")


def available() -> bool:
    """Whether the microWakeWord wheel is installed here (it is not where no wheel fits)."""
    import importlib.util

    return importlib.util.find_spec("pymicro_wakeword") is not None


def _package() -> Any:
    try:
        import pymicro_wakeword
        from pymicro_wakeword import microwakeword
    except ImportError as exc:
        raise ModelError(f"microWakeWord is not installed in this environment ({exc}); "
                         f"{install_hint()}") from None
    microwakeword.statistics = _FloatMean  # type: ignore[assignment]
    return pymicro_wakeword


class _FloatMean:
    """Stands in for the `statistics` module in pymicro-wakeword, whose `mean` of the last few
    probabilities goes through exact fractions: a fifth of microWakeWord's CPU here. The
    probabilities are dequantized 8-bit outputs (multiples of 1/256), so a float sum is exact and
    the mean the same float as statistics.mean's."""

    @staticmethod
    def mean(values: Any) -> float:
        return float(sum(values)) / len(values)


def models_root() -> Path:
    """Where the installed wheel keeps microWakeWord's models."""
    return Path(_package().__file__).parent / "models"


def has_model(name: str) -> bool:
    return name in MICRO_WAKE_FILES


class MicroWakeWordDetector:
    """microWakeWord models for some wake words, over one shared feature front end. `scores` takes
    any whole number of 10 ms steps; a frame's score is the highest probability (microWakeWord's
    own average over its last few windows) reached within it."""

    frame_samples = FEATURE_STEP_SAMPLES

    def __init__(self, names: list[str]) -> None:
        package = _package()
        missing = [n for n in names if not has_model(n)]
        if missing:
            raise ModelError(f"no microWakeWord model for {', '.join(missing)} (there are: "
                             f"{', '.join(sorted(MICRO_WAKE_FILES))}); set wake.confirm for it to "
                             "\"none\"")
        self.names = list(names)
        root = models_root()
        self._models = {name: self._load(package, verified_micro_model(root, name)) for name in names}
        self._features = package.MicroWakeWordFeatures()
        self._zeros = dict.fromkeys(self.names, 0.0)

    @staticmethod
    def _load(package: Any, config: Path) -> Any:
        try:
            return package.MicroWakeWord.from_config(config)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"cannot load the microWakeWord model {config}: {describe(exc)}; "
                             f"{install_hint()}") from None

    def scores(self, samples: np.ndarray) -> dict[str, float]:
        out = dict(self._zeros)
        for features in self._features.process_streaming(samples.astype(np.int16).tobytes()):
            for name, model in self._models.items():
                probability = model.process_streaming_prob(features)
                if probability is not None and probability > out[name]:
                    out[name] = float(probability)
        return out

    def reset(self) -> None:
        """Forget all audio heard so far (the front end, and each model's streaming state)."""
        self._features.reset()
        for model in self._models.values():
            model.reset()

    def close(self) -> None:
        for model in self._models.values():
            model.close()
