"""On-device transcription with Vosk, fed frame by frame while recording."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from device import SAMPLE_RATE_HZ
from device.core.errors import ModelError
from device.storage.models import check_vosk_dir

log = logging.getLogger(__name__)

WARM_UP_SAMPLES = SAMPLE_RATE_HZ // 2


class TranscriptStream(Protocol):
    def accept(self, samples: np.ndarray) -> None: ...

    def result(self) -> str | None: ...


class Transcriber(Protocol):
    def start(self) -> TranscriptStream: ...


class VoskStream:
    def __init__(self, recognizer: object) -> None:
        self._recognizer = recognizer

    def accept(self, samples: np.ndarray) -> None:
        self._recognizer.AcceptWaveform(samples.tobytes())  # type: ignore[attr-defined]

    def result(self) -> str | None:
        text = json.loads(self._recognizer.FinalResult()).get("text", "")  # type: ignore[attr-defined]
        return str(text).strip()


class VoskTranscriber:
    def __init__(self, model_dir: Path) -> None:
        import vosk

        self.model_dir = model_dir
        vosk.SetLogLevel(-2)  # not even warnings: a missing [unk] is said at every utterance
        self._vosk = vosk
        try:
            self._model = vosk.Model(str(check_vosk_dir(model_dir)))
        except Exception as exc:  # vosk raises a bare Exception("Failed to create a model")
            if isinstance(exc, ModelError):
                raise
            raise ModelError(f"cannot load Vosk model '{model_dir}': {exc}") from None
        self._warm_up()
        log.info("vosk model: %s", model_dir)

    def _warm_up(self) -> None:
        """Decode a moment of silence once, so the first real clip does not pay for lazy set-up."""
        stream = self.start()
        stream.accept(np.zeros(WARM_UP_SAMPLES, dtype=np.int16))
        stream.result()

    def start(self) -> VoskStream:
        return VoskStream(self._vosk.KaldiRecognizer(self._model, SAMPLE_RATE_HZ))

    def start_limited(self, phrases: list[str]) -> object:
        """A recognizer of the same model limited to these phrases' words (Vosk's grammar mode)."""
        return self._vosk.KaldiRecognizer(self._model, SAMPLE_RATE_HZ,
                                          json.dumps(phrases, ensure_ascii=False))


class NoStream:
    def accept(self, samples: np.ndarray) -> None:
        pass

    def result(self) -> str | None:
        return None


class NoTranscriber:
    """Used when ASR is off or no model is installed: clips are kept without a transcript."""

    def start(self) -> NoStream:
        return NoStream()
