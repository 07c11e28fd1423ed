"""Wake-word detection with openWakeWord on the ai-edge-litert TFLite runtime.

Two imports of openwakeword are redirected before it loads:
- `tflite_runtime.interpreter`: tflite-runtime cannot import beside NumPy 2 and has no wheels for
  Python 3.12+. ai-edge-litert is its successor with the same Interpreter API.
- `onnxruntime`: openwakeword imports it at package import for its optional Silero VAD and ONNX
  models, which edge-recorder never uses. onnxruntime (1.2x+) queues telemetry on import, with a
  hashed device id, OS and CPU, in ~/.cache/Microsoft. It is not a dependency, and an inert stand-in
  satisfies the import so that it never loads even where it happens to be installed.
"""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from device.config import WakeSettings
from device.errors import ModelError
from device.models import FEATURE_FILES, ModelStore

log = logging.getLogger(__name__)


class WakeDetector(Protocol):
    names: list[str]

    def scores(self, samples: np.ndarray) -> Mapping[str, float]:
        """Per-model score (0..1) for one 80 ms frame."""
        ...


def use_litert_as_tflite_runtime() -> None:
    """Make `import tflite_runtime.interpreter` resolve to ai-edge-litert's interpreter."""
    if "tflite_runtime.interpreter" in sys.modules:
        return
    try:
        from ai_edge_litert import interpreter
    except ImportError as exc:
        raise ModelError(f"ai-edge-litert is not installed ({exc}); run scripts/setup") from None
    package = types.ModuleType("tflite_runtime")
    package.interpreter = interpreter  # type: ignore[attr-defined]
    sys.modules["tflite_runtime"] = package
    sys.modules["tflite_runtime.interpreter"] = interpreter


class _NoOnnxRuntime(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ModelError(
            f"onnxruntime.{name} was used, but edge-recorder runs only .tflite wake-word models "
            "(onnxruntime is kept out: it sends telemetry with a device id)"
        )


def keep_onnxruntime_out() -> None:
    """Satisfy openwakeword's `import onnxruntime` without loading onnxruntime."""
    sys.modules.setdefault("onnxruntime", _NoOnnxRuntime("onnxruntime"))


def load_openwakeword_model(wake_paths: list[str], store: ModelStore) -> Any:
    """An `openwakeword.model.Model` over verified files, on ai-edge-litert."""
    use_litert_as_tflite_runtime()
    keep_onnxruntime_out()
    try:
        from openwakeword.model import Model
    except ImportError as exc:
        raise ModelError(
            f"openwakeword is not installed ({exc}); run scripts/setup, which installs "
            "openwakeword==0.6.0 without its tflite-runtime requirement"
        ) from None
    melspec = store.verified_file(FEATURE_FILES["melspectrogram"])
    embedding = store.verified_file(FEATURE_FILES["embedding"])
    try:
        return Model(
            wakeword_models=wake_paths,
            inference_framework="tflite",
            melspec_model_path=str(melspec),
            embedding_model_path=str(embedding),
        )
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load wake-word model(s) {wake_paths}: {exc}") from None


class OpenWakeWordDetector:
    """All configured wake words in one openWakeWord model (they share the feature front end)."""

    def __init__(self, settings: WakeSettings, store: ModelStore) -> None:
        resolved = [store.wake_model(m) for m in settings.models]
        self.names = [name for name, _ in resolved]
        self._model = load_openwakeword_model([str(path) for _, path in resolved], store)
        # openwakeword keys predictions by file stem (e.g. hey_jarvis_v0.1); report config names.
        self._keys = {path.stem: name for name, path in resolved}
        log.info("wake words: %s", ", ".join(self.names))

    def scores(self, samples: np.ndarray) -> dict[str, float]:
        raw = self._model.predict(samples)
        return {self._keys.get(k, k): float(v) for k, v in raw.items()}
