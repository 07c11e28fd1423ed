"""Crash soak: the crash harness of tests/test_crash.py for many cycles (default 500).

    scripts/soak-crash [--cycles 500] [--seed 1]

Needs scripts/setup, installed wake-word models (EDGE_RECORDER_MODELS_DIR) and openssl. Prints a
table and one JSON line; exits 1 if any invariant broke (target: 0 violations).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.crash_harness import run_cycles  # noqa: E402
from tests.upload_server import make_test_tls  # noqa: E402


def long_input(d: Path) -> Path:
    one = d / "one.wav"
    subprocess.run([str(ROOT / "scripts" / "make-test-audio"), str(one),
                    "hey jarvis, turn on the kitchen light"], check=True)
    audio, _ = soundfile.read(str(one), dtype="int16")
    gap = np.zeros(16000, dtype=np.int16)
    out = d / "long.wav"
    soundfile.write(str(out), np.concatenate([np.concatenate([audio, gap])] * 12), 16000,
                    subtype="PCM_16")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        started = time.monotonic()
        report = run_cycles(args.cycles, d, long_input(d), make_test_tls(d), seed=args.seed)
        elapsed = time.monotonic() - started
    s = {**report.summary(), "seed": args.seed, "elapsed_s": round(elapsed, 1)}
    for name in ("cycles", "clips_seen", "deletes_acked", "uploads_received", "violations", "elapsed_s"):
        print(f"{name:<18} {s[name]:>10}")
    print(json.dumps(s))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
