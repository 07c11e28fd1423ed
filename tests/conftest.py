"""Shared fixtures: real models (fetched once per session), espeak-ng speech, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile

ROOT = Path(__file__).resolve().parent.parent
MAKE_AUDIO = ROOT / "scripts" / "make-test-audio"
WAKE_SENTENCE = "hey jarvis, turn on the kitchen light"
ENTRY_POINT = Path(sys.executable).parent / "edge-recorder"
"""The console script users run (installed by scripts/setup)."""
PLAIN_SENTENCE = "the weather today is sunny with a light breeze from the west"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wake-word models installed the way users install them: `models fetch` (pip, pinned)."""
    root = tmp_path_factory.mktemp("models")
    proc = subprocess.run(
        [str(ENTRY_POINT), "models", "fetch", "--wake"],
        env={**os.environ, "EDGE_RECORDER_MODELS_DIR": str(root)},
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """No test touches the real home or state directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home" / "data"))
    monkeypatch.setenv("EDGE_RECORDER_STATE_DIR", str(tmp_path / "state"))
    for var in ("STATE_DIRECTORY", "INVOCATION_ID", "EDGE_RECORDER_MODELS_DIR"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def with_models(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGE_RECORDER_MODELS_DIR", str(models_dir))
    return models_dir


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """speech(text, voice="en", lead_s=1.0, tail_s=1.5, wpm=175) -> 16 kHz mono WAV (cached)."""
    cache: dict[tuple[object, ...], Path] = {}
    folder = tmp_path_factory.mktemp("speech")

    def make(text: str, voice: str = "en", lead_s: float = 1.0, tail_s: float = 1.5,
             wpm: int = 175) -> Path:
        key = (text, voice, lead_s, tail_s, wpm)
        if key not in cache:
            out = folder / f"speech{len(cache)}.wav"
            subprocess.run([str(MAKE_AUDIO), str(out), text, voice, str(lead_s), str(tail_s), str(wpm)],
                           check=True, timeout=60)
            cache[key] = out
        return cache[key]

    return make


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    data, rate = soundfile.read(str(path), dtype="int16")
    return data, rate


def concat_wavs(out: Path, *parts: Path, gap_s: float = 0.0) -> Path:
    pieces = []
    for i, part in enumerate(parts):
        data, rate = read_wav(part)
        assert rate == 16000
        pieces.append(data)
        if gap_s and i < len(parts) - 1:
            pieces.append(np.zeros(int(gap_s * 16000), dtype=np.int16))
    soundfile.write(str(out), np.concatenate(pieces), 16000, subtype="PCM_16")
    return out


def run_cli(*args: str, timeout: float = 180, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a subprocess, with the test's environment."""
    return subprocess.run(
        [str(ENTRY_POINT), *args],
        capture_output=True, text=True, timeout=timeout, env=dict(os.environ), **kwargs,  # type: ignore[call-overload]
    )


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and directory under root with (size, mtime_ns, mode): to prove nothing changed."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns,
                                   p.stat().st_mode)
        for p in sorted(root.rglob("*"))
    }
