"""Wake-word detection with openWakeWord on the ai-edge-litert TFLite runtime.

Three imports of openwakeword are redirected before it loads:
- `tflite_runtime.interpreter`: tflite-runtime cannot import beside NumPy 2 and has no wheels for
  Python 3.12+. ai-edge-litert is its successor with the same Interpreter API.
- `onnxruntime`: openwakeword imports it at package import for its optional Silero VAD and ONNX
  models, which edge-recorder never uses. onnxruntime (1.2x+) queues telemetry on import, with a
  hashed device id, OS and CPU, in ~/.cache/Microsoft. It is not a dependency, and an inert stand-in
  satisfies the import so that it never loads even where it happens to be installed.
- `openwakeword.custom_verifier_model`: imported by the package for training custom verifiers; it
  pulls in scikit-learn and SciPy (about 110 MB and 1.6 s of every start). A stand-in loads the real
  module only when a verifier is actually trained.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import types
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import numpy as np

from device import FRAME_SAMPLES, OPENWAKEWORD_REQUIREMENT
from device.core.config import WakeSettings
from device.core.errors import ModelError, describe
from device.core.stderr import captured_fd2, write_fd2
from device.storage.models import FEATURE_FILES, ModelStore

log = logging.getLogger(__name__)


class WakeDetector(Protocol):
    """A wake-word engine, or a combination of them, as the listener asks it."""

    names: list[str]
    frame_samples: int
    """The audio step the engine works in: `scores` takes any whole number of them (the pipeline
    passes FRAME_SAMPLES, 80 ms)."""

    def scores(self, samples: np.ndarray) -> Mapping[str, float]:
        """Per-model score (0..1) for one frame."""
        ...

    def reset(self) -> None:
        """Forget all audio heard so far."""
        ...


def use_litert_as_tflite_runtime() -> None:
    """Make `import tflite_runtime.interpreter` resolve to ai-edge-litert's interpreter."""
    if "tflite_runtime.interpreter" in sys.modules:
        return
    try:
        from ai_edge_litert import interpreter
    except ImportError as exc:
        raise ModelError(f"ai-edge-litert is not installed ({exc}); run: {sys.executable} -m pip "
                         "install ai-edge-litert") from None
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


VERIFIER_MODULE = "openwakeword.custom_verifier_model"


def _real_verifier_module() -> Any:
    import importlib

    sys.modules.pop(VERIFIER_MODULE, None)
    return importlib.import_module(VERIFIER_MODULE)


class _LazyVerifierModule(types.ModuleType):
    """Stands in for openwakeword's verifier-training module until it is really used. The package
    imports `train_custom_verifier` from it at import time: that name is a wrapper here."""

    def __init__(self, name: str) -> None:
        super().__init__(name)

        def train_custom_verifier(*args: Any, **kwargs: Any) -> Any:
            return _real_verifier_module().train_custom_verifier(*args, **kwargs)

        self.train_custom_verifier = train_custom_verifier

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(_real_verifier_module(), name)


def defer_verifier_imports() -> None:
    """Keep scikit-learn and SciPy out of every start: openwakeword imports them only to train."""
    sys.modules.setdefault(VERIFIER_MODULE, _LazyVerifierModule(VERIFIER_MODULE))


DOWNLOAD_HELPERS = ("requests", "tqdm")
"""openwakeword.utils imports these for its model downloader, which edge-recorder never calls
(models come pinned from `models fetch`): 8 MB of a start that a Pi Zero 2 W can use better."""
BATCH_HELPERS = ("multiprocessing", "multiprocessing.pool")
"""It also imports multiprocessing for its batch helpers (a thread pool for ONNX models, a process
per file in bulk_predict), which scoring .tflite models frame by frame never reaches: 0.4 MB."""


@contextlib.contextmanager
def _download_helpers_left_out() -> Iterator[None]:
    """While openwakeword is imported, its download and batch helpers resolve to inert stand-ins;
    they are taken out of sys.modules again afterwards, so edge-recorder's own `import requests`
    (uploads, `models fetch`) still gets the real one."""
    stand_ins = {name: _Unused(name) for name in (*DOWNLOAD_HELPERS, *BATCH_HELPERS)
                 if name not in sys.modules}
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


class _Unused(types.ModuleType):
    """Any name imported from it is a function that refuses to run."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def unused(*args: Any, **kwargs: Any) -> Any:
            raise ModelError(f"{self.__name__}.{name} was used by openwakeword's downloader or "
                             "batch helpers; edge-recorder installs models with `edge-recorder "
                             "models fetch` and scores frames one by one")

        return unused


def install_hint() -> str:
    """The exact command that installs openwakeword into the Python running now."""
    return (f"{sys.executable} -m pip install --no-deps '{OPENWAKEWORD_REQUIREMENT}' (its metadata "
            "requires tflite-runtime, which edge-recorder replaces with ai-edge-litert)")


def load_openwakeword_model(wake_paths: list[str], store: ModelStore) -> Any:
    """An `openwakeword.model.Model` over verified files, on ai-edge-litert."""
    use_litert_as_tflite_runtime()
    keep_onnxruntime_out()
    defer_verifier_imports()
    try:
        with _download_helpers_left_out():
            from openwakeword.model import Model
    except ImportError:
        raise ModelError(f"openwakeword is not installed in this environment; run: {install_hint()}"
                         ) from None
    lighter_start_up()
    melspec = store.verified_file(FEATURE_FILES["melspectrogram"])
    embedding = store.verified_file(FEATURE_FILES["embedding"])
    try:
        with tflite_info_left_out():
            model = Model(
                wakeword_models=wake_paths,
                inference_framework="tflite",
                melspec_model_path=str(melspec),
                embedding_model_path=str(embedding),
            )
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load wake-word model(s) {', '.join(wake_paths)}: not an "
                         f"openWakeWord wake-word model? ({describe(exc)})") from None
    shorter_raw_buffer(model)
    return model


RAW_SAMPLES_KEPT = 16000
"""Raw audio openWakeWord keeps for its streaming melspectrogram: one second (see below)."""


def shorter_raw_buffer(model: Any) -> None:
    """openWakeWord keeps the last 10 s of raw audio as a deque of Python ints (160,000 objects,
    about 6 MB that fill up in the first 10 s of listening), and copies the whole deque into a list
    on every frame; its streaming melspectrogram reads only the newest frame's samples and 480
    before them. One second is kept instead: the same samples reach the model (the same scores),
    6 MB less resident, and a tenth of the copying per frame."""
    preprocessor = model.preprocessor
    preprocessor.raw_data_buffer = deque(preprocessor.raw_data_buffer, maxlen=RAW_SAMPLES_KEPT)


STREAMING_SAMPLES = 1280 + 480
"""What openWakeWord's streaming melspectrogram is computed from: a frame and 480 samples before it."""
WINDOW_FRAMES = 76
"""Melspectrogram frames per embedding window."""


TFLITE_INFO = b"INFO: "
"""How TFLite's C++ logger starts a line of INFO severity on stderr."""


@contextlib.contextmanager
def tflite_info_left_out() -> Iterator[None]:
    """TFLite's C++ logger writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." once
    per process, straight to file descriptor 2, when the first interpreter is built: on every
    command that loads the models. Its threshold can only be raised from C++ (tflite's
    MinimalLogger::SetMinimumLogSeverity, which ai-edge-litert's libraries do not export), and
    TF_CPP_MIN_LOG_LEVEL governs TensorFlow's other logger, not this one. So while an interpreter
    is built, stderr is filtered (stderr_without) - but only while this is the process's only
    thread: moving descriptor 2 while another thread might write to it is what once lost the
    daemon's "mqtt: cannot reach" line (see audio.sources.load_portaudio). `run`, `simulate` and
    `doctor` build one interpreter first for that reason (load_tflite)."""
    if threading.active_count() > 1:
        yield
        return
    with stderr_without(TFLITE_INFO):
        yield


@contextlib.contextmanager
def stderr_without(prefix: bytes) -> Iterator[None]:
    """Descriptor 2 is captured meanwhile; then everything in it but the lines that start with
    `prefix` is written to stderr (a library's warnings and errors still show)."""
    caught = bytearray()
    try:
        with captured_fd2() as caught:
            yield
    finally:
        write_fd2(b"".join(ln for ln in caught.splitlines(keepends=True) if not ln.startswith(prefix)))


def load_tflite(store: ModelStore) -> None:
    """Build one small interpreter (the embedding model: about 13 ms) while this is the process's
    only thread, so that TFLite's once-per-process INFO line is said, and left out, before any
    thread starts (see tflite_info_left_out). Without the model nothing happens here: loading the
    pipeline says what is missing."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        path = store.verified_file(FEATURE_FILES["embedding"])
        with tflite_info_left_out():
            Interpreter(model_path=str(path)).allocate_tensors()
    except (ImportError, ModelError, OSError, ValueError, RuntimeError) as exc:
        log.debug("TFLite not loaded ahead: %s", describe(exc))


def lighter_start_up() -> None:
    """openWakeWord fills its feature buffer at start (and at every reset) with the embeddings of 4 s
    of random noise, computed as one batch: the melspectrogram of 64,000 samples at once, then 41
    embedding windows at once. TFLite's arenas grow to those sizes and stay grown: about 25 MB of
    resident memory that streaming (one frame at a time) never needs. Here the filler is computed
    the way streaming computes: the noise's melspectrogram in frame-sized pieces (1,760 samples,
    as every frame), then one embedding window, whose row is repeated to the same number: noise
    either way, filling the models' 1.28 s window for the first frames exactly as openWakeWord's own
    filler does (the first `wake.startup_quiet_s` cannot wake). Only that filler call is changed:
    streaming uses another path."""
    from openwakeword.utils import AudioFeatures

    original = AudioFeatures._get_embeddings
    if getattr(original, "lighter", False):
        return

    def filler(self: Any, x: np.ndarray, window_size: int = WINDOW_FRAMES, step_size: int = 8,
               **kwargs: Any) -> np.ndarray:
        if len(x) <= 16000:
            return original(self, x, window_size, step_size, **kwargs)  # type: ignore[no-any-return]
        pieces = range(0, len(x) - STREAMING_SAMPLES, FRAME_SAMPLES)
        spec = np.concatenate([self._get_melspectrogram(x[i:i + STREAMING_SAMPLES], **kwargs)
                               for i in pieces[:window_size // 8 + 2]])
        window = spec[None, -window_size:, :, None].astype(np.float32)
        row = np.atleast_2d(self.embedding_model_predict(window))
        frames = len(x) // 160 - 3  # mel frames openWakeWord computes for len(x) samples
        return np.resize(row, ((frames - window_size) // step_size + 1, row.shape[1]))

    filler.lighter = True  # type: ignore[attr-defined]
    AudioFeatures._get_embeddings = filler


class OpenWakeWordDetector:
    """All configured wake words in one openWakeWord model (they share the feature front end)."""

    frame_samples = FRAME_SAMPLES

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

    def features(self, name: str) -> np.ndarray:
        """The embedding features `name`'s model scored last (16 x 96 for the bundled models):
        what openWakeWord's custom verifier looks at."""
        key = next(k for k, v in self._keys.items() if v == name)
        return np.asarray(self._model.preprocessor.get_features(self._model.model_inputs[key]))[0]

    def reset(self) -> None:
        """Forget all audio heard so far, as at start (openWakeWord's reset)."""
        self._model.reset()
