"""The console script as users run it: simulate, clips, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile
from gpiozero.pins.mock import MockFactory

from device.core.config import Settings
from device.recording.indicator import Indicator
from device.wake.detector import TFLITE_INFO, stderr_without
from tests.helpers import (
    PLAIN_SENTENCE,
    WAKE_SENTENCE,
    assert_one_line_error,
    file_mic,
    read_wav,
    run_cli,
    snapshot,
    spawn_cli,
    tmpfs,
)


def events_of(proc: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


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


@pytest.mark.slow
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


@pytest.mark.parametrize("command", [["simulate"], ["enroll", "hey_jarvis"], ["enroll"],
                                     ["listen", "--meter", "--file"]])
def test_a_missing_audio_file_is_named_as_missing(with_models: Path, tmp_path: Path,
                                                  command: list[str]) -> None:
    missing = tmp_path / "nope.wav"
    assert_one_line_error(run_cli(*command, str(missing)), f"audio file '{missing}' does not exist")
    folder = tmp_path / "takes"
    folder.mkdir()
    assert_one_line_error(run_cli(*command, str(folder)), f"'{folder}' is a directory")


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


# -- issue 24: the command line on a bad day ----------------------------------------------------

@pytest.fixture
def clip_id(with_models: Path, speech: Callable[..., Path]) -> str:
    [clip] = [e for e in events_of(run_cli("simulate", str(speech(WAKE_SENTENCE))))
              if e["type"] == "clip"]
    return str(clip["id"])


def read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


@pytest.mark.slow
def test_file_system_errors_are_one_line_for_every_command(
    clip_id: str, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing folder, a read-only file system and a full disk (real tmpfs mounts), for export
    and for commands that reach the file system elsewhere: one line, exit 1, nothing half-written.
    Before: a traceback each (item 14)."""
    missing = tmp_path / "no" / "such" / "folder" / "x.wav"
    assert_one_line_error(run_cli("clips", "export", clip_id, str(missing)),
                          f"cannot write '{missing}': No such file or directory; nothing was written")
    with tmpfs(tmp_path / "ro", "1m") as ro:
        read_only(ro)
        assert_one_line_error(run_cli("clips", "export", clip_id, str(ro)),
                              f"cannot write '{ro / clip_id}.wav': Read-only file system")
        monkeypatch.setenv("EDGE_RECORDER_MODELS_DIR", str(ro / "models"))
        assert_one_line_error(run_cli("models", "fetch", "--wake"), "Read-only file system")
    with tmpfs(tmp_path / "full", "16k") as full:  # a 2 s clip is 64 KB
        assert_one_line_error(run_cli("clips", "export", clip_id, str(full / "x.wav")),
                              "No space left on device; nothing was written")
        assert list(full.iterdir()) == []
    with tmpfs(tmp_path / "store", "64m") as copy:
        shutil.copytree(state_dir, copy, dirs_exist_ok=True)
        read_only(copy)
        proc = run_cli("consent", "grant", "--state-dir", str(copy))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert_one_line_error(proc, "readonly")


def test_export_never_overwrites_a_file_without_force(clip_id: str, tmp_path: Path) -> None:
    precious = tmp_path / "precious.wav"
    precious.write_bytes(b"the owner's own recording")
    assert_one_line_error(run_cli("clips", "export", clip_id, str(precious)),
                          f"'{precious}' exists: nothing was written (--force replaces it)")
    assert precious.read_bytes() == b"the owner's own recording"
    folder = tmp_path / "out"
    folder.mkdir()
    assert run_cli("clips", "export", clip_id, str(folder)).returncode == 0
    assert_one_line_error(run_cli("clips", "export", clip_id, str(folder)),
                          f"'{folder / clip_id}.wav' exists")
    done = run_cli("clips", "export", clip_id, str(precious), "--force")
    assert done.returncode == 0 and done.stdout.strip() == str(precious)
    assert read_wav(precious)[1] == 16000


@pytest.mark.parametrize("args, fragments", [
    ([], ["say which clips to delete: clip ids (`edge-recorder clips list` shows them)",
          "--last DURATION", "--from ISO8601 --to ISO8601", "--all"]),
    (["xyz"], ["'xyz' is not a clip id: an id is 32 hex characters",
               "`edge-recorder clips list` shows them"]),
    (["0" * 32, "--all"], ["one of them, not ids and --all"]),
    (["--from", "2026-01-01T00:00:00+00:00"], ["--from and --to go together"]),
    (["--from", "yesterday", "--to", "2026-01-01T00:00:00Z"], ["--from takes an ISO 8601 time"]),
    (["--from", "2026-01-02T00:00:00Z", "--to", "2026-01-01T00:00:00Z"],
     ["--from must be before --to"]),
    (["--last", "fortnight"], ["--last takes a duration such as 15m, 24h or 7d"]),
])
def test_clips_delete_errors_speak_the_cli_s_language(
    state_dir: Path, args: list[str], fragments: list[str]
) -> None:
    """Item 16: the CLI's options and what an id looks like, never the MQTT schema's field names
    (`ids.0`, `from+to`) or its regex."""
    line = assert_one_line_error(run_cli("clips", "delete", *args), *fragments)
    for schema in ("ids.0", "from+to", "^[0-9a-f]", "pattern", "newest", "today"):
        assert schema not in line


def test_clips_reject_says_what_is_wrong(state_dir: Path) -> None:
    assert_one_line_error(run_cli("clips", "reject", "xyz"), "'xyz' is not a clip id")
    nothing = run_cli("clips", "reject", "last")
    assert nothing.returncode == 1 and "nothing to reject: there is no clip" in nothing.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind, says", [
    ("passwd", "is not a .tflite file"),
    ("folder", "is a directory, not a .tflite file"),
    ("random", "is not a TensorFlow Lite model (no TFL3 identifier"),
    ("empty", "is empty"),
    ("unreadable", "cannot be read (Input/output error)"),
    ("missing", "not found"),
])
def test_a_wake_model_path_that_is_no_model_says_why(
    with_models: Path, tmp_path: Path, kind: str, says: str
) -> None:
    """Item 8: `wake.models = ["/etc/passwd"]` said "not found" for a file that exists."""
    path = {"passwd": Path("/etc/passwd"), "folder": tmp_path / "folder.tflite",
            "random": tmp_path / "random.tflite", "empty": tmp_path / "empty.tflite",
            "unreadable": tmp_path / "mem.tflite", "missing": tmp_path / "missing.tflite"}[kind]
    if kind == "folder":
        path.mkdir()
    elif kind in ("random", "empty"):
        path.write_bytes(np.random.default_rng(1).bytes(4096) if kind == "random" else b"")
    elif kind == "unreadable":
        path.symlink_to("/proc/self/mem")  # reading its first bytes fails, even for root
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[wake]\nmodels = ["{path}"]\n')
    assert_one_line_error(run_cli("simulate", "--config", str(cfg)), f"'{path}' {says}")


def test_enroll_takes_the_first_wake_word_when_none_is_given(
    with_models: Path, speech: Callable[..., Path]
) -> None:
    """`enroll a.wav b.wav c.wav --other d.wav`, as its help allows: argparse used to take a.wav
    for the wake word and refuse it as "not a configured wake word"."""
    take = str(speech("good morning", "en", lead_s=0.1, tail_s=0.1))
    proc = run_cli("enroll", take, "--other", take)  # the take counted as a sample of hey_jarvis:
    assert_one_line_error(proc, "only 0 of 1 samples woke hey_jarvis (at least 3 must)")


@pytest.mark.slow
def test_devices_says_when_there_are_no_inputs(
    tmp_path: Path, speech: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ALSA_CONFIG_PATH", raising=False)  # this machine has no sound card
    none = spawn_cli("devices")
    assert none.returncode == 1 and none.stdout == ""
    assert "no audio inputs: PortAudio sees no device that can record" in none.stderr
    mic = file_mic(tmp_path, speech(WAKE_SENTENCE), 16000)  # the control: one input
    monkeypatch.setenv("ALSA_CONFIG_PATH", mic["ALSA_CONFIG_PATH"])
    some = spawn_cli("devices")
    assert some.returncode == 0 and "filemic" in some.stdout and some.stderr == ""


def test_doctor_says_once_which_pin_driver_it_tried_and_nothing_else_on_stderr(
    with_models: Path,
) -> None:
    """Item 17: no gpiozero PinFactoryFallback warnings (four before) and no TensorFlow Lite INFO
    line; the gpio check names every driver it tried in its one line."""
    proc = spawn_cli("doctor")
    assert "Fallback" not in proc.stderr and "INFO" not in proc.stderr, proc.stderr
    assert "warnings.warn" not in proc.stderr
    [gpio] = [ln for ln in proc.stdout.splitlines() if "lgpio:" in ln]
    assert gpio.startswith("[FAIL] gpio: cannot use indicator pin 'GPIO17': no GPIO pin driver "
                           "could be loaded (lgpio: No module named 'lgpio'; ")
    assert Indicator(Settings().indicator, MockFactory()).driver == "mock"


def test_tflite_info_lines_are_left_out_but_its_errors_are_not(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with stderr_without(TFLITE_INFO):
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"ERROR: a real problem\nWARNING: a real warning\n")
    assert capfd.readouterr().err == "ERROR: a real problem\nWARNING: a real warning\n"


def test_save_for_longer_than_a_century_is_one_line_and_changes_nothing(state_dir: Path) -> None:
    assert_one_line_error(run_cli("save", "transcript", "--for", "999999d"), "--for", "36500d")
    assert json.loads(run_cli("save").stdout)["mode"] == "audio"
