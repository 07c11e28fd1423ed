"""Trains hey_jarvis's phrase check (device/data/hey_jarvis.phrase.npz) and measures it held out.

    scripts/train-phrase-check DATA_DIR [--out device/data/hey_jarvis.phrase.npz] [--work DIR]
                                        [--folds 2] [--per-name 1] [--check-only]
                                        [--folds-out DIR] [--noisy 10 | --clean-only]

DATA_DIR is what `scripts/eval-wake-data` lays out: phrase/hey_jarvis/{bare,hey,hey-heldout}/ and
main/positives/hey_jarvis/. The phrase check is openWakeWord's custom-verifier recipe
(device/wake/verifier.py: standardise, logistic regression with C = 0.001) on the wake model's 16 x 96
embedding features at the frames where hey_jarvis scores 0.5 or more, trained on
  positives: each real bare "Jarvis" (Picovoice, Apache-2.0) with a real "hey" before it, cut from
             Precise's public-domain "hey chatterbox" / "hey computer" takes at the low-energy dip
             after the first syllable (louder or softer to match, 0-100 ms apart), and espeak-ng
             "hey jarvis" in 16 voices that no eval-wake set uses;
  negatives: the same bare "Jarvis" recordings, and espeak-ng "thanks jarvis", "tell jarvis ...",
             "hey travis", ... in those voices.
A positive and a negative share the very same "Jarvis" audio: only the "hey" tells them apart.
The real takes are also used once more with synthetic noise mixed in (--noisy, white and brown noise
generated here, so that eval-wake's noise/ stays held out).

Before the shipped weights are trained on everything, it measures the check held out: the bare
"Jarvis" recordings are split into --folds parts (the splices follow their "Jarvis"; the "hey"s are
split too), and each part is scored by weights that never saw it, as the daemon would (the first
frame over the preset's threshold, looked at again on up to 4 waking frames). It also scores
splices with "hey"s from speakers it never trains on (hey-heldout: "hey savant", CC BY-NC-SA, so
used only here) and eval-wake's espeak-ng positives. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from eval_wake import audio_files, load, load_all, mix  # noqa: E402
from speech import say  # noqa: E402

from device.core.config import PRESETS, Settings, resolve_models_dir  # noqa: E402
from device.storage.models import ModelStore  # noqa: E402
from device.wake import detector as wake  # noqa: E402
from device.wake.trigger import DOUBT_FRAMES  # noqa: E402
from device.wake.verifier import ENROLL_THRESHOLD, Weights, scored_frames, train  # noqa: E402

NAME = "hey_jarvis"
RATE = 16000
TRAIN_VOICES = ["en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc", "en-gb+f1", "en-us+f5", "en+m1",
                "en+m2", "en-us+m5", "en-gb+m6", "en+f2", "en-us+f1", "en-gb-x-gbclan+f5",
                "en-us-nyc+f3", "en+klatt", "en-us+klatt4", "en-gb-x-gbcwmd+m4"]
"""espeak-ng voices for training: none is in eval-wake-data's positives or owners."""
SPOKEN_POS = ["hey jarvis", "hey, jarvis, what time is it"]
SPOKEN_NEG = ["jarvis", "jarvis, what time is it", "thanks jarvis", "tell jarvis to stop",
              "where is jarvis", "hey travis", "okay, jarvis is here"]
BAND = 160
"""10 ms analysis frames for cutting a "hey" off its take."""


def band_energy(x: np.ndarray) -> np.ndarray:
    """Energy per 10 ms between 100 and 1000 Hz: vowels are loud there, "ch", "k", "s" are not."""
    n = len(x) // BAND
    frames = x[:n * BAND].reshape(n, BAND).astype(np.float64) * np.hanning(BAND)
    return (np.abs(np.fft.rfft(frames, axis=1)) ** 2)[:, 1:10].sum(axis=1)


def onset(energy: np.ndarray) -> int:
    smooth = np.convolve(energy, np.ones(3) / 3, "same")
    return int(np.argmax(smooth > 0.1 * smooth.max()))


def cut_hey(take: np.ndarray) -> np.ndarray | None:
    """The first syllable of a "hey ..." take: from 50 ms before the voice starts to the quietest
    10 ms between 150 and 500 ms after it."""
    energy = band_energy(take)
    start = onset(energy)
    window = energy[start + 15:start + 50]
    if len(window) < 35:
        return None
    return take[max(0, start - 5) * BAND:(start + 15 + int(np.argmin(window))) * BAND]


def trimmed(take: np.ndarray) -> np.ndarray:
    return take[max(0, onset(band_energy(take)) - 5) * BAND:]


def splice(hey: np.ndarray, name: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rms = [float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) + 1e-9 for x in (hey, name)]
    gap = np.zeros(int(rng.integers(0, RATE // 10)))
    joined = np.concatenate([hey * (rms[1] / rms[0]), gap, name.astype(np.float64)])
    return np.clip(joined, -32768, 32767).astype(np.int16)


def heys(folder: Path) -> list[np.ndarray]:
    return [h for take in load_all(folder) if (h := cut_hey(take)) is not None]


def spoken(work: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """espeak-ng renderings of SPOKEN_POS and SPOKEN_NEG in TRAIN_VOICES (cached in `work`)."""
    jobs = []
    for label, texts in (("pos", SPOKEN_POS), ("neg", SPOKEN_NEG)):
        for (i, text), voice, speed, pitch in itertools.product(
                enumerate(texts), TRAIN_VOICES, (140, 170, 200), (35, 55, 75)):
            path = work / label / f"{i}-{voice.replace('+', '_')}-{speed}-{pitch}.wav"
            jobs.append((label, text, voice, speed, pitch, path))
    todo = [j for j in jobs if not j[5].exists()]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda j: say(j[1], j[2], j[3], j[4], j[5]), todo))
    return ([load(j[5]) for j in jobs if j[0] == "pos"], [load(j[5]) for j in jobs if j[0] == "neg"])


class Scored:
    """Per take: the frames scoring 0.5 or more, with their scores and features."""

    def __init__(self, detector: Any, takes: list[np.ndarray], seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.takes: list[list[tuple[float, np.ndarray]]] = []
        for take in takes:
            # 2 s of faint noise first (a listening device has heard the room), 1 s after.
            audio = np.concatenate([rng.normal(0, 30, 2 * RATE).astype(np.int16), take,
                                    np.zeros(RATE, np.int16)])
            self.takes.append(scored_frames(detector, NAME, audio, ENROLL_THRESHOLD))

    def features(self, which: Iterator[int] | list[int] | None = None) -> list[np.ndarray]:
        keep = range(len(self.takes)) if which is None else which
        return [f for k in keep for _, f in self.takes[k]]

    def verdicts(self, weights: Weights, threshold: float,
                 which: list[int] | None = None) -> tuple[int, int]:
        """(woke, kept): takes that woke the model at `threshold`, and those the check let through
        (as the recorder asks it: the first waking frame, then up to DOUBT_FRAMES in all)."""
        woke = kept = 0
        for k in range(len(self.takes)) if which is None else which:
            waking = [f for s, f in self.takes[k] if s > threshold][:DOUBT_FRAMES]
            if waking:
                woke += 1
                kept += any(weights.probability(f) >= 0.5 for f in waking)
        return woke, kept


def synthetic_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """White and brown noise in a random blend: generated, so eval-wake's noise/ stays held out."""
    white = rng.normal(0, 1, n)
    brown = np.cumsum(rng.normal(0, 1, n))
    brown -= np.convolve(brown, np.ones(1601) / 1601, "same")  # no drift below ~10 Hz
    brown /= np.std(brown) + 1e-9
    w = float(rng.uniform(0, 1))
    return ((w * white + (1 - w) * brown) * 3000).astype(np.int16)


def fit(pos: list[np.ndarray], neg: list[np.ndarray]) -> Weights:
    return train(np.stack(pos), np.stack(neg))


def save(weights: Weights, path: Path) -> None:
    """As device.wake.phrase.bundled reads it (float32: 18 kB)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **weights.arrays(np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "device" / "data" / f"{NAME}.phrase.npz")
    parser.add_argument("--work", type=Path, default=Path("/tmp/phrase-check-work"))
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--per-name", type=int, default=1,
                        help='training splices per bare "Jarvis" (each with another "hey")')
    parser.add_argument("--noisy", type=float, metavar="SNR_DB", default=10.0,
                        help="also train on the real takes mixed with synthetic noise at this SNR "
                             "(default 10 dB; without it the check let 18 %% of bare names through "
                             "at 10 dB SNR instead of 3 %%)")
    parser.add_argument("--clean-only", dest="noisy", action="store_const", const=None,
                        help="train on clean takes only")
    parser.add_argument("--check-only", action="store_true", help="measure, do not write --out")
    parser.add_argument("--folds-out", type=Path, help=(
        "write each fold's weights (DIR/fold<k>.phrase.npz), links to the bare names it never saw "
        "(DIR/fold<k>/positives/hey_jarvis/) and the same names after a held-out speaker's \"hey\" "
        "(DIR/fold<k>-hey/...), for `scripts/eval-wake DIR/fold<k> --phrase-check "
        "DIR/fold<k>.phrase.npz`"))
    args = parser.parse_args()
    root = args.data_dir / "phrase" / NAME
    bare_files = audio_files(root / "bare")
    bare = [load(f) for f in bare_files]
    own_heys, other_heys = heys(root / "hey"), heys(root / "hey-heldout")
    if not bare or not own_heys:
        print(f"train-phrase-check: {root}/bare and {root}/hey must hold recordings "
              "(scripts/eval-wake-data lays them out)", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    folds = np.arange(len(bare)) * args.folds // len(bare)
    hey_folds = np.arange(len(own_heys)) * args.folds // len(own_heys)

    def pick(pool: list[np.ndarray], fold_of: np.ndarray | None, fold: int) -> np.ndarray:
        choices = np.flatnonzero(fold_of == fold) if fold_of is not None else np.arange(len(pool))
        return pool[int(rng.choice(choices))]

    names = [trimmed(b) for b in bare]
    # Each "Jarvis" with --per-name different "hey"s (of its own fold) for training; the first is
    # the one tested.
    joined = [splice(pick(own_heys, hey_folds, folds[k]), n, rng) for k, n in enumerate(names)]
    more = [(k, splice(pick(own_heys, hey_folds, folds[k]), n, rng))
            for k, n in enumerate(names) for _ in range(args.per_name - 1)]
    joined_other = [splice(pick(other_heys, None, 0), n, rng) for n in names] if other_heys else []
    said_pos, said_neg = spoken(args.work)
    noisy: dict[str, list[np.ndarray]] = {"bare_noisy": [], "joined_noisy": []}
    if args.noisy is not None:  # the same takes again in synthetic noise (not eval-wake's noise/)
        noise_rng = np.random.default_rng(7)
        noisy = {"bare_noisy": [mix(b, synthetic_noise(len(b), noise_rng), args.noisy, noise_rng)
                                for b in bare],
                 "joined_noisy": [mix(j, synthetic_noise(len(j), noise_rng), args.noisy, noise_rng)
                                  for j in joined]}
    models = ModelStore(resolve_models_dir(Settings(), args.work))
    detector = wake.OpenWakeWordDetector(Settings.model_validate({"wake": {"models": [NAME]}}).wake,
                                         models)
    takes = {"bare": bare, "joined": joined, "joined_other": joined_other, "said_pos": said_pos,
             "said_neg": said_neg, "more": [m for _, m in more],
             "espeak_eval": load_all(args.data_dir / "main" / "positives" / NAME), **noisy}
    scored = {key: Scored(detector, found, seed) for seed, (key, found) in enumerate(takes.items())}
    levels = {level: PRESETS[level].get(NAME, PRESETS[level]["*"])[0]
              for level in ("balanced", "strict")}
    rows: list[dict[str, Any]] = []
    totals: dict[tuple[str, str], list[int]] = {}
    for fold in range(args.folds):
        train_on, test_on = [list(np.flatnonzero(folds != fold)), list(np.flatnonzero(folds == fold))]
        more_on = [i for i, (k, _) in enumerate(more) if folds[k] != fold]
        weights = fit(scored["joined"].features(train_on) + scored["more"].features(more_on)
                      + scored["said_pos"].features() + scored["joined_noisy"].features(train_on),
                      scored["bare"].features(train_on) + scored["said_neg"].features()
                      + scored["bare_noisy"].features(train_on))
        if args.folds_out:
            save(weights, args.folds_out / f"fold{fold}.phrase.npz")
            held_out = args.folds_out / f"fold{fold}" / "positives" / NAME
            held_out.mkdir(parents=True, exist_ok=True)
            for k in test_on:
                (held_out / bare_files[k].name).symlink_to(bare_files[k].resolve())
            if joined_other:  # and the same names after a held-out speaker's "hey"
                with_hey = args.folds_out / f"fold{fold}-hey" / "positives" / NAME
                with_hey.mkdir(parents=True, exist_ok=True)
                for k in test_on:
                    soundfile.write(with_hey / bare_files[k].name, joined_other[k], RATE,
                                    subtype="PCM_16")
        for level, threshold in levels.items():
            for key, which in (("bare", test_on), ("joined", test_on), ("joined_other", test_on),
                               ("espeak_eval", None)):
                if scored[key].takes:
                    woke, kept = scored[key].verdicts(weights, threshold, which)
                    total = totals.setdefault((level, key), [0, 0, 0])
                    total[0] += len(which) if which is not None else len(scored[key].takes)
                    total[1] += woke
                    total[2] += kept
    what = {"bare": 'real bare "Jarvis"', "joined": 'real "hey" (PD) + real "Jarvis"',
            "joined_other": 'real "hey" (held-out speakers) + real "Jarvis"',
            "espeak_eval": 'espeak-ng "hey jarvis" (eval-wake positives)'}
    print(f"{'level':9} {'held-out takes':46} {'takes':>5} {'woke':>5} {'kept':>5} {'kept/woke':>9}")
    for (level, key), (n, woke, kept) in totals.items():
        if key == "espeak_eval":
            n, woke, kept = n // args.folds, woke // args.folds, kept // args.folds
        print(f"{level:9} {what[key]:46} {n:5d} {woke:5d} {kept:5d} {kept / max(1, woke):9.3f}")
        rows.append({"level": level, "takes": key, "n": n, "woke": woke, "kept": kept})
    if not args.check_only:
        weights = fit(scored["joined"].features() + scored["more"].features()
                      + scored["said_pos"].features() + scored["joined_noisy"].features(),
                      scored["bare"].features() + scored["said_neg"].features()
                      + scored["bare_noisy"].features())
        save(weights, args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print(json.dumps({"folds": args.folds, "bare": len(bare), "heys": len(own_heys),
                      "heldout_heys": len(other_heys), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
