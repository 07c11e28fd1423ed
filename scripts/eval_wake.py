"""False wakes and accidental clips: the whole pipeline beside bare openWakeWord, in one run.

    scripts/eval-wake DATA_DIR [--models hey_jarvis,alexa] [--presets sensitive,balanced,strict]
                               [--snr 10,5] [--gap-s 0.5] [--no-owners | --only-owners]
                               [--owner-presets balanced] [--phrase-check FILE|off]
                               [--confirm none,agree,cascade] [--no-bare]
                               [--thresholds 0.5,0.7] [--confirm-thresholds 0.5,0.9]

DATA_DIR holds recordings in a plain layout anyone can fill (WAV/FLAC/OGG, any rate or channels):
  positives/<wake_word>/**   one utterance of the wake word per file (recall)
  negatives/**               anything that is not the wake word: laid end to end, as TV or talk
  noise/**                   optional: mixed into positives and negatives at each --snr (dB)
  owners/<wake_word>/<owner>/{enroll,other,test}/**
                             optional: one person's voice. `enroll` (the wake word, one utterance
                             per file) and `other` (anything else) go to `edge-recorder enroll`'s
                             code; `test` (the wake word again, other takes) measures recall. Each
                             owner gets rows of its own: the pipeline with that owner verifier on
                             the owner's test takes, on all the negatives, and on the positives of
                             other voices (`others_recall`: positives/<wake_word>/ files whose
                             names do not start with "<owner>-").

`scripts/eval-wake-data` lays this out from public recordings fetched beforehand. Each positive is
scored after 2 s of silence (a listening device wakes nothing in its first second) and with 1 s
after it; with --snr, the noise covers the take only.

For every model and sensitivity preset it reports recall on the positives, and on the negatives
false wakes per hour and accidental clips per hour (false wakes that became stored clips). The
pipeline is `simulate`'s code path (a wake counts when the light comes on, i.e. after the
second look) (run_pipeline, simulated LED, a throwaway store); bare
openWakeWord is the same model's `predict` with a 0.5 threshold and a 2 s refractory period, run
on the same audio in the same process. Prints a table and one JSON line.

--confirm gives rows per wake.confirm (none: openWakeWord alone; agree and cascade: microWakeWord
must fire too), each with the listening CPU the pipeline spent (process time) beside bare
openWakeWord's on the same audio; --no-bare skips bare openWakeWord on the negatives (hours of CPU
on long data; its columns are then empty).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from device.app import run_pipeline  # noqa: E402
from device.core.config import Settings, resolve_models_dir  # noqa: E402
from device.core.events import Event, EventSink  # noqa: E402
from device.core.frames import Frame  # noqa: E402
from device.storage.models import ModelStore  # noqa: E402
from device.wake import detector as wake  # noqa: E402
from device.wake import phrase  # noqa: E402
from device.wake.phrase import NOT_PHRASE  # noqa: E402
from device.wake.trigger import NOT_CONFIRMED  # noqa: E402
from device.wake.verifier import TURNED_AWAY, VerifierFiles, Weights, enrollment_features  # noqa: E402

FRAME = 1280
RATE = 16000
AUDIO = (".wav", ".flac", ".ogg", ".opus")  # Debian ships warzone2100's music as Opus
BARE_THRESHOLD, BARE_REFRACTORY_S = 0.5, 2.0
LEAD_IN = 2 * RATE
BARE_FALSE: dict[tuple[str, str], int] = {}
BARE_CPU: dict[tuple[str, str], float] = {}


def audio_files(folder: Path) -> list[Path]:
    """Every audio file below `folder`, following symbolic links (data is often linked in)."""
    return sorted(Path(root) / name for root, _, names in os.walk(folder, followlinks=True)
                  for name in names if Path(name).suffix.lower() in AUDIO)


def load(path: Path) -> np.ndarray:
    """Any file as 16 kHz mono int16 (NaN as silence)."""
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != RATE:
        mono = soxr.resample(mono, rate, RATE)
    return (np.clip(np.nan_to_num(mono), -1, 1) * 32767).astype(np.int16)


def load_all(folder: Path) -> list[np.ndarray]:
    """Every recording below `folder`; one that cannot be decoded is left out, with one line."""
    found = []
    for path in audio_files(folder):
        try:
            found.append(load(path))
        except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
            print(f"eval-wake: left out {path}: {exc}", file=sys.stderr)
    return found


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    if len(noise) < len(speech):
        noise = np.tile(noise, math.ceil(len(speech) / len(noise)))
    start = int(rng.integers(0, len(noise) - len(speech) + 1))
    n = noise[start:start + len(speech)].astype(np.float64)
    s = speech.astype(np.float64)
    ps, pn = np.mean(s ** 2) or 1.0, np.mean(n ** 2) or 1.0
    out = s + n * math.sqrt(ps / (pn * 10 ** (snr_db / 10)))
    return np.clip(out, -32768, 32767).astype(np.int16)


class Memory:
    """A source over samples in memory: `simulate`'s path without a file."""

    overflows = 0

    def __init__(self, samples: np.ndarray) -> None:
        self._samples, self._at = samples, 0

    def frames(self, stop: Any) -> Iterator[Frame]:
        for i in range(0, len(self._samples) - FRAME + 1, FRAME):
            self._at = i + FRAME
            yield Frame(i, self._samples[i:i + FRAME])

    def clock(self) -> int:
        return self._at

    def close(self) -> None:
        pass


def pipeline(samples: np.ndarray, settings: Settings, state: Path) -> dict[str, Any]:
    from gpiozero.pins.mock import MockFactory

    seen: list[Event] = []
    sink = EventSink()
    sink.subscribe(seen.append)
    run_pipeline(settings, state, lambda: Memory(samples), sink, MockFactory(), threading.Event())
    sink.close()
    kinds = [e.type for e in seen]
    lit = sum(1 for e in seen if e.type == "indicator" and getattr(e, "state", "") == "recording")
    reasons = [getattr(e, "reason", "") for e in seen if e.type == "discarded"]
    return {"wakes": kinds.count("wake"), "lit": lit, "clips": kinds.count("clip"),
            "turned_away": reasons.count(TURNED_AWAY), "not_phrase": reasons.count(NOT_PHRASE),
            "not_confirmed": reasons.count(NOT_CONFIRMED),
            "wakes_at": [getattr(e, "t", None) for e in seen
                         if e.type == "indicator" and getattr(e, "state", "") == "recording"]}


def bare(samples: np.ndarray, model: Any) -> int:
    """Bare openWakeWord: crossings of 0.5, each followed by a 2 s refractory period."""
    model.reset()
    hits, quiet_until = 0, -1.0
    for i in range(0, len(samples) - FRAME + 1, FRAME):
        score = max(model.predict(samples[i:i + FRAME]).values())
        t = (i + FRAME) / RATE
        if score > BARE_THRESHOLD and t > quiet_until:
            hits += 1
            quiet_until = t + BARE_REFRACTORY_S
    return hits


def enrolled(name: str, owner: Path, models: ModelStore, into: Path) -> dict[str, Any]:
    """`edge-recorder enroll`'s code on an owner's folders: the verifier lands in `into`."""
    detector = wake.OpenWakeWordDetector(Settings.model_validate({"wake": {"models": [name]}}).wake,
                                         models)
    found = enrollment_features(detector, name, load_all(owner / "enroll"),
                                load_all(owner / "other"))
    VerifierFiles(into).enroll(name, found.pos, found.neg)
    return {"enroll_used": sum(found.woke), "enroll_files": len(found.woke)}


def with_verifier(template: Path | None, state: Path) -> Path:
    """A fresh state directory, holding the owner verifier of `template` if there is one."""
    if template is not None:
        shutil.copytree(template / "verifier", state / "verifier")
    return state


def cache_models() -> None:
    """Load each model once and reset it for every run (a reset model is a fresh one)."""
    cache: dict[tuple[str, ...], Any] = {}
    real = wake.load_openwakeword_model

    def cached(paths: list[str], store: ModelStore) -> Any:
        if tuple(paths) not in cache:
            cache[tuple(paths)] = real(paths, store)
        cache[tuple(paths)].reset()
        return cache[tuple(paths)]

    wake.load_openwakeword_model = cached  # type: ignore[assignment]


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    data = Path(args.data_dir)
    rng = np.random.default_rng(args.seed)
    noises = load_all(data / "noise") if (data / "noise").exists() else []
    negatives = load_all(data / "negatives")
    gap = np.zeros(int(args.gap_s * RATE), np.int16)
    stream = np.concatenate([x for n in negatives for x in (n, gap)]) if negatives else gap
    conditions: list[tuple[str, float | None]] = [("clean", None)]
    conditions += [(f"snr{snr:g}", snr) for snr in args.snr if noises]
    models = ModelStore(resolve_models_dir(Settings(), Path(tempfile.gettempdir())))
    cache_models()
    if args.phrase_check:
        weights = None if args.phrase_check == "off" else Weights.read(Path(args.phrase_check))
        phrase.bundled = lambda name: weights if name == "hey_jarvis" else None  # type: ignore[assignment]
    results: dict[str, Any] = {"negatives_h": round(len(stream) / RATE / 3600, 3),
                               "negatives_recorded_h": round(sum(map(len, negatives)) / RATE / 3600, 3),
                               "negative_files": len(negatives), "rows": []}
    for name in args.models:
        bare_model = wake.load_openwakeword_model([str(models.wake_model(name)[1])], models)
        owners = sorted(p for p in (data / "owners" / name).glob("*") if p.is_dir()) \
            if args.owners else []
        for owner in ([] if args.only_owners else [None]) + owners:
            template = Path(tempfile.mkdtemp(prefix="eval-wake-owner-")) if owner else None
            enrollment = enrolled(name, owner, models, template) if owner and template else {}
            folder = owner / "test" if owner else data / "positives" / name
            positives = load_all(folder)
            others = [load(f) for f in audio_files(data / "positives" / name)
                      if not f.name.startswith(f"{owner.name}-")] if owner else []
            for cond, snr in conditions:
                results["rows"] += evaluate_one(
                    args, name, positives, stream, bare_model, template, rng, noises, cond, snr,
                    {"owner": owner.name if owner else None, **enrollment}, others)
            if template:
                shutil.rmtree(template)
    return results


def evaluate_one(args: argparse.Namespace, name: str, positives: list[np.ndarray],
                 stream: np.ndarray, bare_model: Any, template: Path | None,
                 rng: np.random.Generator, noises: list[np.ndarray], cond: str,
                 snr: float | None, extra: dict[str, Any],
                 others: list[np.ndarray] | None = None) -> list[dict[str, Any]]:
    """Rows for one model, one set of positives (and owner verifier), one condition; with an
    owner, also how many of `others` (other voices saying the wake word) light the light."""
    def pick(x: np.ndarray) -> np.ndarray:
        return mix(x, noises[int(rng.integers(len(noises)))], snr, rng) if snr else x

    def takes(found: list[np.ndarray]) -> list[np.ndarray]:
        # 2 s of lead-in: a device has been listening before anyone speaks (and wakes nothing in
        # its first `wake.startup_quiet_s`), then 1 s after the take.
        return [np.concatenate([np.zeros(LEAD_IN, np.int16), pick(p), np.zeros(RATE, np.int16)])
                for p in found]

    pos, other_pos = takes(positives), takes(others or [])
    neg = pick(stream)
    hours = len(neg) / RATE / 3600
    bare_recall = sum(bare(p, bare_model) > 0 for p in pos)
    key = (name, cond)  # a clean stream is the same for every owner: bare openWakeWord scores it once
    if snr or key not in BARE_FALSE:
        started = time.process_time()
        BARE_FALSE[key] = bare(neg, bare_model) if args.bare else -1
        BARE_CPU[key] = time.process_time() - started
    bare_false = BARE_FALSE[key]
    rows = []
    presets = (args.owner_presets or args.presets) if template else args.presets
    for preset, confirm, threshold, confirm_threshold in [
            (p, c, t, ct) for p in presets for c in args.confirm for t in args.thresholds
            for ct in args.confirm_thresholds]:
        wake: dict[str, Any] = {"models": [name], "sensitivity": preset, "confirm": {name: confirm}}
        if threshold is not None:
            wake["thresholds"] = {name: threshold}
        if confirm_threshold is not None:
            wake["confirm_threshold"] = confirm_threshold
        settings = Settings.model_validate({"wake": wake, "asr": {"enabled": False}})
        with tempfile.TemporaryDirectory() as tmp:
            found = sum(pipeline(p, settings, with_verifier(template, Path(tmp) / f"p{i}"))["lit"] > 0
                        for i, p in enumerate(pos))
            found_others = sum(
                pipeline(p, settings, with_verifier(template, Path(tmp) / f"o{i}"))["lit"] > 0
                for i, p in enumerate(other_pos))
            started = time.process_time()
            negative = pipeline(neg, settings, with_verifier(template, Path(tmp) / "neg"))
            cpu = time.process_time() - started
        rows.append({
                    **extra, "model": name, "preset": preset, "confirm": confirm, "condition": cond,
                    "threshold": settings.wake.threshold_for(name, preset),
                    "confirm_threshold": settings.wake.confirm_threshold_for(name),
                    "pipeline_cpu_s": round(cpu, 1), "bare_cpu_s": round(BARE_CPU[key], 1),
                    "not_confirmed": negative["not_confirmed"], "wakes_at": negative["wakes_at"],
                    "positives": len(pos), "negatives_h": round(hours, 3),
                    "bare_recall": round(bare_recall / max(1, len(pos)), 4),
                    "recall": round(found / max(1, len(pos)), 4),
                    "bare_false_wakes_per_h": round(bare_false / hours, 3),
                    "false_wakes_per_h": round(negative["lit"] / hours, 3),
                    "accidental_clips_per_h": round(negative["clips"] / hours, 3),
                    "bare_false_wakes": bare_false, "false_wakes": negative["lit"],
                    "accidental_clips": negative["clips"], "turned_away": negative["turned_away"],
                    "not_phrase": negative["not_phrase"],
                    **({"others": len(other_pos),
                        "others_recall": round(found_others / len(other_pos), 4)}
                       if other_pos else {}),
                })
    return rows


def floats_or_default(text: str) -> list[float | None]:
    """"0.5,0.9" → [0.5, 0.9]; "default" stands for the configured value."""
    return [None if x == "default" else float(x) for x in text.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--models", type=lambda s: s.split(","), default=["hey_jarvis", "alexa"])
    parser.add_argument("--presets", type=lambda s: s.split(","),
                        default=["sensitive", "balanced", "strict"])
    parser.add_argument("--snr", type=lambda s: [float(x) for x in s.split(",")], default=[])
    parser.add_argument("--gap-s", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-owners", dest="owners", action="store_false",
                        help="skip the owners/ folders (no owner verifier rows)")
    parser.add_argument("--only-owners", action="store_true",
                        help="only the owner verifier rows (e.g. beside a --no-owners run)")
    parser.add_argument("--phrase-check", metavar="FILE|off",
                        help="hey_jarvis's phrase-check weights to use instead of the bundled ones "
                             "(scripts/train-phrase-check --folds-out), or off: none")
    parser.add_argument("--confirm", type=lambda s: s.split(","), default=["none"],
                        help="wake.confirm modes to give rows for (none, agree, cascade)")
    parser.add_argument("--thresholds", type=floats_or_default, default=[None],
                        help="openWakeWord thresholds to give rows for, instead of the preset's "
                             "(wake.thresholds)")
    parser.add_argument("--confirm-thresholds", type=floats_or_default, default=[None],
                        help="microWakeWord thresholds to give rows for (wake.confirm_threshold)")
    parser.add_argument("--no-bare", dest="bare", action="store_false",
                        help="skip bare openWakeWord on the negatives")
    parser.add_argument("--owner-presets", type=lambda s: s.split(","),
                        help="presets for the owner rows (default: --presets)")
    args = parser.parse_args()
    started = time.monotonic()
    results = evaluate(args)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    head = ("model", "owner", "preset", "confirm", "threshold", "confirm_threshold", "condition",
            "positives", "bare_recall", "recall",
            "negatives_h", "bare_false_wakes_per_h", "false_wakes_per_h", "accidental_clips_per_h",
            "not_phrase", "not_confirmed", "others_recall", "pipeline_cpu_s", "bare_cpu_s")
    print(" | ".join(head))
    for row in results["rows"]:
        print(" | ".join(str(row.get(h, "")) for h in head))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
