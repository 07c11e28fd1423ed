"""Start-up and memory: the daemon with wake words only, beside a bare openWakeWord process.

    scripts/bench-start [--runs 5]
    scripts/bench-start --day-minutes 10 [--models alexa] [--runs 1]

Each run is a fresh process, the two alternated (A B A B ...), since these machines are noisy:
- edge-recorder: `simulate` on one 80 ms frame with ASR off: start, load and verify the models,
  score the first frame, store nothing, exit (an upper bound on "ready");
- bare openWakeWord: `import openwakeword` as its users do (its package import included), load the
  same hey_jarvis model on ai-edge-litert, score one frame, exit.
Reports the median wall seconds and peak RSS of each (the kernel's own accounting of the child),
and their ratios. Prints a table and one JSON line.

With --day-minutes, the peak RSS over a whole `simulate` of a day-like stream instead (scripts/bench's:
room tone, talk about 10 % of the time, the first model's wake phrase now and then) with the ASR off
and the given wake words (their default wake.confirm: alexa with microWakeWord beside openWakeWord),
one fresh process per run, beside the same one frame as above.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
BARE = """
import sys, types
from ai_edge_litert import interpreter
pkg = types.ModuleType("tflite_runtime"); pkg.interpreter = interpreter
sys.modules["tflite_runtime"] = pkg; sys.modules["tflite_runtime.interpreter"] = interpreter
sys.modules.setdefault("onnxruntime", types.ModuleType("onnxruntime"))
import numpy as np, openwakeword
m = openwakeword.Model(wakeword_models=[sys.argv[1]], inference_framework="tflite",
                       melspec_model_path=sys.argv[2], embedding_model_path=sys.argv[3])
m.predict(np.zeros(1280, dtype=np.int16))
"""


def peak_of(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and peak RSS of one child, measured in a fresh helper so maxima do not carry over."""
    helper = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
              "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
              "stderr=subprocess.DEVNULL); w = time.perf_counter() - t; "
              "print(json.dumps([w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))")
    out = subprocess.run([sys.executable, "-c", helper, *cmd], env=env, check=True,
                         capture_output=True, text=True).stdout
    wall, rss = json.loads(out)
    return float(wall), float(rss)


PHRASES = {"alexa": "alexa, turn on the kitchen light", "hey_jarvis": "hey jarvis, turn on the kitchen light"}


def day_peak(minutes: float, models: list[str], runs: int) -> int:
    """Peak RSS of `simulate` over a whole day-like stream, wake words only."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench import day_stream

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        audio, planted = day_stream(minutes, d, wake=PHRASES.get(models[0], PHRASES["hey_jarvis"]))
        day = d / "day.wav"
        soundfile.write(str(day), audio, 16000, subtype="PCM_16")
        cfg = d / "wake-only.toml"
        cfg.write_text(f"[wake]\nmodels = {json.dumps(models)}\n[asr]\nenabled = false\n")
        env = {**os.environ, "EDGE_RECORDER_STATE_DIR": str(d / "state")}
        cmd = [str(ROOT / ".venv" / "bin" / "edge-recorder"), "simulate", "--config", str(cfg),
               "--events", "/dev/null"]
        peaks = [peak_of([*cmd, str(day)], env) for _ in range(runs)]
        frame = d / "frame.wav"
        soundfile.write(str(frame), np.zeros(1280, dtype=np.int16), 16000, subtype="PCM_16")
        start = peak_of([*cmd, str(frame)], env)
    result = {"day_minutes": minutes, "models": models, "wakes_planted": planted, "runs": runs,
              "day_wall_s": round(statistics.median(p[0] for p in peaks), 1),
              "day_peak_rss_mb": round(max(p[1] for p in peaks), 1),
              "start_peak_rss_mb": round(start[1], 1),
              "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX")}
    print(f"peak RSS over a {minutes:g}-minute day-like simulate ({', '.join(models)}): "
          f"{result['day_peak_rss_mb']} MB (one frame: {result['start_peak_rss_mb']} MB)")
    print(json.dumps(result))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--day-minutes", type=float, default=0.0)
    parser.add_argument("--models", type=lambda s: s.split(","), default=["alexa"])
    args = parser.parse_args()
    if args.day_minutes:
        return day_peak(args.day_minutes, args.models, args.runs)
    models = Path(os.environ.get("EDGE_RECORDER_MODELS_DIR", ""))
    if not (models / "hey_jarvis_v0.1.tflite").is_file():
        sys.exit("set EDGE_RECORDER_MODELS_DIR to a directory filled by `edge-recorder models fetch`")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        frame = d / "frame.wav"
        soundfile.write(str(frame), np.zeros(1280, dtype=np.int16), 16000, subtype="PCM_16")
        cfg = d / "wake-only.toml"
        cfg.write_text("[asr]\nenabled = false\n")
        env = {**os.environ, "EDGE_RECORDER_STATE_DIR": str(d / "state")}
        ours = [str(ROOT / ".venv" / "bin" / "edge-recorder"), "simulate", str(frame), "--config",
                str(cfg), "--events", "/dev/null"]
        bare = [sys.executable, "-c", BARE, str(models / "hey_jarvis_v0.1.tflite"),
                str(models / "melspectrogram.tflite"), str(models / "embedding_model.tflite")]
        peak_of(ours, env), peak_of(bare, env)  # warm-up: page cache
        a, b = [], []
        for _ in range(args.runs):
            a.append(peak_of(ours, env))
            b.append(peak_of(bare, env))
    med = {k: statistics.median(v) for k, v in {
        "ours_wall_s": [x[0] for x in a], "ours_rss_mb": [x[1] for x in a],
        "bare_wall_s": [x[0] for x in b], "bare_rss_mb": [x[1] for x in b]}.items()}
    result = {k: round(v, 3) for k, v in med.items()} | {
        "runs": args.runs, "rss_ratio": round(med["ours_rss_mb"] / med["bare_rss_mb"], 3),
        "wall_ratio": round(med["ours_wall_s"] / med["bare_wall_s"], 3)}
    print(f"{'measure (median of ' + str(args.runs) + ')':<48} {'edge-recorder':>14} {'bare OWW':>10}")
    print(f"{'start to first frame scored and exit, s':<48} {result['ours_wall_s']:>14} "
          f"{result['bare_wall_s']:>10}")
    print(f"{'peak RSS, MB':<48} {result['ours_rss_mb']:>14} {result['bare_rss_mb']:>10}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
