"""Makes hey_jarvis's impostor features (device/data/hey_jarvis.impostors.npz) for the owner verifier.

    scripts/make-impostors DATA_DIR [--out device/data/hey_jarvis.impostors.npz] [--work DIR]
                                    [--frames 256]

An owner verifier trained only on the owner's own speech (openWakeWord's recipe) has never heard
anyone else near the wake word: it learns "the wake word" as much as "this voice". `enroll` adds
these frames as negatives, other people saying the wake word or something close to it, so the
verifier learns the owner's voice (device/wake/verifier.py, IMPOSTOR_SHARE). They are the wake model's
16 x 96 embedding features (never audio) at every frame where hey_jarvis scores 0.1 or more on
  - Picovoice's real recordings of the bare name "Jarvis" (DATA_DIR/phrase/hey_jarvis/bare, from
    `scripts/eval-wake-data`; Apache-2.0, many speakers), and
  - espeak-ng "hey jarvis", "jarvis, what time is it", "hey travis", ... in the 16 voices of
    scripts/train-phrase-check, none of which is in eval-wake's positives or owners;
--frames of them drawn at random (seeded), kept as float16.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from eval_wake import audio_files, load  # noqa: E402
from train_phrase_check import NAME, RATE, spoken  # noqa: E402

from device.core.config import Settings, resolve_models_dir  # noqa: E402
from device.storage.models import ModelStore  # noqa: E402
from device.wake import detector as wake  # noqa: E402
from device.wake.verifier import IMPOSTOR_FLOOR, scored_frames  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "device" / "data" / f"{NAME}.impostors.npz")
    parser.add_argument("--work", type=Path, default=Path("/tmp/phrase-check-work"))
    parser.add_argument("--frames", type=int, default=256)
    args = parser.parse_args()
    bare = [load(f) for f in audio_files(args.data_dir / "phrase" / NAME / "bare")]
    if not bare:
        print(f"make-impostors: {args.data_dir}/phrase/{NAME}/bare holds no recordings "
              "(scripts/eval-wake-data lays them out)", file=sys.stderr)
        return 2
    said_pos, said_neg = spoken(args.work)
    detector = wake.OpenWakeWordDetector(
        Settings.model_validate({"wake": {"models": [NAME]}}).wake,
        ModelStore(resolve_models_dir(Settings(), args.work)))
    rng = np.random.default_rng(0)
    found = []
    for take in bare + said_pos + said_neg:
        # 2 s of faint noise first (a listening device has heard the room), 0.5 s after.
        audio = np.concatenate([rng.normal(0, 30, 2 * RATE).astype(np.int16), take,
                                rng.normal(0, 30, RATE // 2).astype(np.int16)])
        found += [f for _, f in scored_frames(detector, NAME, audio, IMPOSTOR_FLOOR)]
    chosen = np.stack(found)[np.sort(rng.choice(len(found), min(args.frames, len(found)),
                                                replace=False))]
    buffer = io.BytesIO()
    np.savez_compressed(buffer, features=chosen.astype(np.float16))
    args.out.write_bytes(buffer.getvalue())
    print(f"{len(found)} frames from {len(bare)} real bare names and {len(said_pos) + len(said_neg)} "
          f"espeak-ng takes; kept {len(chosen)}: wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
