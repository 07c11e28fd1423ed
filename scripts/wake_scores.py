"""Per-frame scores of both detectors over eval-wake's data, computed once and cached.

    scripts/wake-scores DATA OUT [--sources SUBSTRING,...]

For every negatives source (DATA/<set>/negatives/<source>/, laid end to end with 0.5 s gaps as
scripts/eval-wake does) and every positives folder (DATA/<set>/positives/<model>/, each take after
2 s of silence and before 1 s, from a fresh start), writes OUT/<set>/<negatives|positives>/<name>.npz:
  oww, mww   frames x models: openWakeWord's score and microWakeWord's probability per 80 ms frame.
             On negatives openWakeWord runs as a cascade at LOW would run it (NaN elsewhere): the
             last 3 s replayed when microWakeWord's probability for any model rises over LOW, and
             on until 2 s after it fell back (a full openWakeWord pass over 24 h takes hours here)
  models     the wake words (columns)
  frame_file per frame, the index of the file it came from; files: their paths
Thresholds, agree and cascade are then evaluated from the cache (scripts/eval-confirm); the shipped
configuration's figures come from scripts/eval-wake (the daemon's own pipeline).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from eval_wake import LEAD_IN, RATE, audio_files, load  # noqa: E402

from device.core.config import Settings, resolve_models_dir  # noqa: E402
from device.storage.models import ModelStore  # noqa: E402
from device.wake.detector import load_openwakeword_model  # noqa: E402
from device.wake.micro import MicroWakeWordDetector  # noqa: E402

MODELS = ["alexa", "hey_jarvis"]
FRAME = 1280
LOW = 0.02
PREROLL, HANGOVER, CONTEXT = 38, 25, 27
"""Frames replayed (3 s), run on after the fall (2 s), and needed before a replayed score counts
(openWakeWord's 2.1 s context)."""
GAP = np.zeros(RATE // 2, np.int16)


class Scorer:
    def __init__(self, store: ModelStore) -> None:
        paths = [str(store.wake_model(m)[1]) for m in MODELS]
        self.oww = load_openwakeword_model(paths, store)
        self.keys = [Path(p).stem for p in paths]
        self.mww = MicroWakeWordDetector(MODELS)

    def reset(self) -> None:
        self.oww.reset()
        self.mww.reset()

    def frames(self, audio: np.ndarray, cascade: bool = False) -> tuple[np.ndarray, np.ndarray]:
        n = len(audio) // FRAME
        oww = np.full((n, len(MODELS)), np.nan, np.float32)
        mww = np.zeros((n, len(MODELS)), np.float32)
        open_for = 0
        for i in range(n):
            chunk = audio[i * FRAME:(i + 1) * FRAME]
            m = self.mww.scores(chunk)
            mww[i] = [m[k] for k in MODELS]
            if cascade and max(m.values()) > LOW:
                if open_for == 0:
                    for j in range(max(0, i - PREROLL), i):
                        o = self.oww.predict(audio[j * FRAME:(j + 1) * FRAME])
                        if j >= i - PREROLL + CONTEXT:
                            oww[j] = [o[k] for k in self.keys]
                open_for = HANGOVER
            elif open_for:
                open_for -= 1
            if open_for or not cascade:
                o = self.oww.predict(chunk)
                oww[i] = [o[k] for k in self.keys]
        return oww, mww


def readable(files: list[Path]) -> list[tuple[Path, np.ndarray]]:
    found = []
    for f in files:
        try:
            found.append((f, load(f)))
        except Exception as exc:  # noqa: BLE001 - a file that cannot be decoded is left out
            print(f"wake-scores: left out {f}: {exc}", file=sys.stderr)
    return found


def negatives(scorer: Scorer, folder: Path, out: Path) -> None:
    taken = readable(audio_files(folder))
    pieces, owner = [], []
    for i, (_, audio) in enumerate(taken):
        pieces += [audio, GAP]
        owner.append(np.full(len(audio) + len(GAP), i, np.int32))
    stream, file_of = np.concatenate(pieces), np.concatenate(owner)
    scorer.reset()
    oww, mww = scorer.frames(stream, cascade=True)
    np.savez(out, oww=oww, mww=mww, models=MODELS, frame_file=file_of[FRAME - 1::FRAME][:len(oww)],
             files=[str(f) for f, _ in taken])


def positives(scorer: Scorer, folder: Path, out: Path) -> None:
    taken = readable(audio_files(folder))
    owws, mwws, owner = [], [], []
    for i, (_, audio) in enumerate(taken):
        scorer.reset()
        take = np.concatenate([np.zeros(LEAD_IN, np.int16), audio, np.zeros(RATE, np.int16)])
        oww, mww = scorer.frames(take)
        owws.append(oww)
        mwws.append(mww)
        owner.append(np.full(len(oww), i, np.int32))
    np.savez(out, oww=np.concatenate(owws), mww=np.concatenate(mwws), models=MODELS,
             frame_file=np.concatenate(owner), files=[str(f) for f, _ in taken])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--sources", type=lambda s: s.split(","), default=None,
                        help="only folders whose path contains one of these")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    scorer = Scorer(ModelStore(resolve_models_dir(Settings(), Path("/nonexistent"))))
    jobs = [(d, "negatives") for d in sorted(data.glob("*/negatives/*")) if d.is_dir()]
    jobs += [(d, "positives") for d in sorted(data.glob("*/positives/*")) if d.is_dir()]
    for folder, kind in jobs:
        if args.sources and not any(s in str(folder) for s in args.sources):
            continue
        target = out / folder.parent.parent.name / kind / f"{folder.name}.npz"
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        (negatives if kind == "negatives" else positives)(scorer, folder, target)
        print(f"{folder}: {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
