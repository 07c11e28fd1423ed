"""The console script as users run it: simulate, clips, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.conftest import PLAIN_SENTENCE, WAKE_SENTENCE, read_wav, run_cli, snapshot


def events_of(proc: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("edge-recorder: error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_simulate_writes_the_event_stream_and_the_store(
    with_models: Path, speech: Callable[..., Path], state_dir: Path
) -> None:
    events = events_of(run_cli("simulate", str(speech(WAKE_SENTENCE)), "--events", "-"))
    assert [e["type"] for e in events] == ["wake", "indicator", "indicator", "clip"]
    assert all(list(e)[0] == "type" for e in events)
    clip = events[-1]
    listed = [json.loads(x) for x in run_cli("clips", "list").stdout.splitlines()]
    assert [c["id"] for c in listed] == [clip["id"]]
    assert listed[0]["start_s"] == clip["start"] and listed[0]["wake_word"] == "hey_jarvis"


def test_simulate_default_is_the_bundled_sample(with_models: Path) -> None:
    proc = run_cli("simulate")
    assert [e["type"] for e in events_of(proc)] == ["wake", "indicator", "indicator", "clip"]
    assert "1 wake(s), 1 clip(s)" in proc.stderr


def test_simulate_converts_any_rate_and_channel_count(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path
) -> None:
    mono, _ = read_wav(speech(WAKE_SENTENCE))
    stereo = tmp_path / "stereo44k.wav"
    subprocess.run(["sox", str(speech(WAKE_SENTENCE)), "-r", "44100", "-c", "2", str(stereo)],
                   check=True)
    events = events_of(run_cli("simulate", str(stereo)))
    assert [e["type"] for e in events] == ["wake", "indicator", "indicator", "clip"]
    assert len(mono) > 0


def test_idle_listening_writes_nothing_to_disk(
    with_models: Path, speech: Callable[..., Path], state_dir: Path, tmp_path: Path
) -> None:
    events_of(run_cli("simulate", str(speech(PLAIN_SENTENCE))))  # creates the empty store
    before, home_before = snapshot(state_dir), snapshot(tmp_path / "home")
    events = events_of(run_cli("simulate", str(speech(PLAIN_SENTENCE))))
    assert events == []
    assert snapshot(state_dir) == before
    assert snapshot(tmp_path / "home") == home_before
    assert list((state_dir / "clips").iterdir()) == []


def test_clips_show_export_and_delete(
    with_models: Path, speech: Callable[..., Path], state_dir: Path, tmp_path: Path
) -> None:
    [clip] = [e for e in events_of(run_cli("simulate", str(speech(WAKE_SENTENCE))))
              if e["type"] == "clip"]
    cid = str(clip["id"])
    shown = json.loads(run_cli("clips", "show", cid).stdout)
    assert shown["id"] == cid and shown["duration_s"] > 0
    out = tmp_path / "out.wav"
    assert run_cli("clips", "export", cid, str(out)).returncode == 0
    audio, rate = read_wav(out)  # decrypted: a plain WAV of the clip's length, owner-only
    assert rate == 16000 and len(audio) / 16000 == pytest.approx(shown["duration_s"], abs=0.001)
    assert out.stat().st_mode & 0o777 == 0o600
    assert b"RIFF" not in (state_dir / "clips" / f"{cid}.clip").read_bytes()[:64]

    missing = "0" * 32
    gone = run_cli("clips", "delete", cid, missing)
    reply = json.loads(gone.stdout)
    assert (reply["type"], reply["ids"], reply["not_found"]) == ("deleted", [cid], [missing])
    assert gone.returncode == 1
    assert not (state_dir / "clips" / f"{cid}.clip").exists()
    assert run_cli("clips", "list").stdout == ""
    assert_one_line_error(run_cli("clips", "show", cid), "no clip with id")


# -- bad input: one line, non-zero exit, no traceback ------------------------------------------

def test_missing_wake_word_model(speech: Callable[..., Path], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_RECORDER_MODELS_DIR", str(tmp_path / "empty"))
    proc = run_cli("simulate", str(speech(WAKE_SENTENCE)))
    assert_one_line_error(proc, "hey_jarvis_v0.1.tflite", "not installed", "models fetch")


def test_unknown_wake_word_name(with_models: Path, speech: Callable[..., Path], tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[wake]\nmodels = ["hey_siri"]\n')
    proc = run_cli("simulate", str(speech(WAKE_SENTENCE)), "--config", str(cfg))
    assert_one_line_error(proc, "'hey_siri' not found", "hey_jarvis")


def test_checksum_mismatch(models_dir: Path, speech: Callable[..., Path], tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "models"
    shutil.copytree(models_dir, broken)
    target = broken / "hey_jarvis_v0.1.tflite"
    data = bytearray(target.read_bytes())
    data[1000] ^= 0xFF
    target.write_bytes(bytes(data))
    monkeypatch.setenv("EDGE_RECORDER_MODELS_DIR", str(broken))
    proc = run_cli("simulate", str(speech(WAKE_SENTENCE)))
    assert_one_line_error(proc, "checksum mismatch", "hey_jarvis_v0.1.tflite")
    listed = [json.loads(x) for x in run_cli("models", "list").stdout.splitlines()]
    assert [m["ok"] for m in listed if m["name"] == "hey_jarvis"] == [False]


@pytest.mark.parametrize("kind", ["garbage", "empty_file", "no_frames"])
def test_corrupt_or_empty_wav(with_models: Path, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.wav"
    if kind == "garbage":
        path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" + bytes(range(256)))
    elif kind == "empty_file":
        path.write_bytes(b"")
    else:
        soundfile.write(str(path), np.zeros(0, dtype=np.int16), 16000, subtype="PCM_16")
    proc = run_cli("simulate", str(path))
    expected = "contains no audio" if kind == "no_frames" else "cannot read audio file"
    assert_one_line_error(proc, expected, str(path))


def test_missing_wav(with_models: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("simulate", str(tmp_path / "nope.wav")), "cannot read audio file")


def test_unknown_device(with_models: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[audio]\ndevice = "no-such-microphone"\n[indicator]\npin_factory = "mock"\n')
    proc = run_cli("run", "--config", str(cfg), timeout=60)
    assert_one_line_error(proc, "'no-such-microphone' is not available", "edge-recorder devices")


def test_malformed_config(tmp_path: Path, speech: Callable[..., Path]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[wake]\nthreshold = 2\n")
    proc = run_cli("simulate", str(speech(WAKE_SENTENCE)), "--config", str(cfg))
    assert proc.returncode == 2
    assert_one_line_error(proc, "wake.threshold", "less than 1", "got 2")


def test_unwritable_state_dir(with_models: Path, speech: Callable[..., Path], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_cli("simulate", str(speech(WAKE_SENTENCE)), "--state-dir", str(blocker / "state"))
    assert_one_line_error(proc, "is not usable", "Not a directory", "--state-dir")


def test_unwritable_events_path(tmp_path: Path) -> None:
    proc = run_cli("simulate", "--events", str(tmp_path / "no" / "such" / "events.jsonl"))
    assert_one_line_error(proc, "cannot write events to", "No such file or directory")
