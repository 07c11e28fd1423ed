"""`edge-recorder listen --meter` on the real capture path, as a tester tuning thresholds would."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.helpers import ENTRY_POINT, WAKE_SENTENCE, file_mic, snapshot


def test_the_meter_shows_level_voice_and_scores_and_keeps_nothing(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path, state_dir: Path
) -> None:
    env = file_mic(tmp_path, speech(WAKE_SENTENCE), 16000)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[audio]\ndevice = "filemic"\nsample_rate_hz = 16000\nqueue_s = 30\n')
    before = snapshot(state_dir)
    proc = subprocess.run([str(ENTRY_POINT), "listen", "--meter", "--seconds", "4", "--config", str(cfg)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any("speech" in ln for ln in lines) and any("quiet" in ln for ln in lines)
    assert any(re.search(r"hey_jarvis 0\.\d\d\*", ln) for ln in lines)  # over threshold, marked
    peak = float(re.search(r"peak scores: hey_jarvis ([\d.]+) \(threshold 0\.80\)", proc.stdout).group(1))
    assert peak > 0.8  # the default ("balanced") threshold for hey_jarvis
    assert snapshot(state_dir) == before  # a meter keeps nothing
