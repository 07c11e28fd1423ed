"""The real capture path: `edge-recorder run` reading PortAudio/ALSA from a file-backed PCM.

No sound card is needed: ALSA's `file` plugin plays a raw file as a capture device (see
ARCHITECTURE.md, "Testing"). It delivers audio about a hundred times faster than real time, so by
the time the wake word is scored, the rest of the file has already been captured: invariant I1 then
requires that none of it is kept, which these tests check too.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ENTRY_POINT, WAKE_SENTENCE, file_mic


def wait_for_idle_light(path: Path, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            events = [json.loads(x) for x in path.read_text().splitlines()]
            if any(e.get("state") == "idle" for e in events):
                time.sleep(0.5)  # let the clip writer finish
                return [json.loads(x) for x in path.read_text().splitlines()]
        time.sleep(0.2)
    raise AssertionError(f"the light did not go on and off within {timeout_s} s")


def test_devices_lists_the_file_backed_microphone(tmp_path: Path, speech: Callable[..., Path]) -> None:
    env = file_mic(tmp_path, speech(WAKE_SENTENCE), 16000)
    proc = subprocess.run([str(ENTRY_POINT), "devices"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "filemic" in proc.stdout


def run_until_the_light_is_off(
    tmp_path: Path, wav: Path, rate: int, program: list[str] | None = None
) -> tuple[list[dict[str, Any]], subprocess.CompletedProcess[str]]:
    """`edge-recorder run` (or `program` in its place) capturing `wav` from the file-backed mic at
    `rate` until the light has gone on and off, then SIGTERM: its events, exit code and output."""
    env = file_mic(tmp_path, wav, rate)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[audio]\ndevice = "filemic"\nsample_rate_hz = {rate}\nqueue_s = 30\n'
                   '[indicator]\npin_factory = "mock"\n')
    events_path = tmp_path / "events.jsonl"
    daemon = subprocess.Popen(
        [*(program or [str(ENTRY_POINT)]), "run", "--config", str(cfg), "--events",
         str(events_path)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        events = wait_for_idle_light(events_path, timeout_s=120)
    finally:
        daemon.send_signal(signal.SIGTERM)
        stdout, stderr = daemon.communicate(timeout=60)
    return events, subprocess.CompletedProcess(daemon.args, daemon.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.parametrize("rate", [16000, 48000])
def test_run_detects_the_wake_word_from_a_real_capture_stream(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path, state_dir: Path, rate: int
) -> None:
    events, daemon = run_until_the_light_is_off(tmp_path, speech(WAKE_SENTENCE), rate)
    assert daemon.returncode == 0, daemon.stderr
    assert "Traceback" not in daemon.stderr
    wake, on, off = events[:3]
    assert wake["type"] == "wake" and wake["wake_word"] == "hey_jarvis"
    assert 1.5 < wake["t"] < 2.5  # "hey jarvis" ends near 1.9 s of the file, at any capture rate
    assert (on["type"], on["state"], off["state"]) == ("indicator", "recording", "idle")
    assert on["t"] >= wake["t"]
    clips = [e for e in events if e["type"] == "clip"]
    assert all(c["start"] >= on["t"] for c in clips)  # I1 on a real capture clock
    stored = {p.stem for p in (state_dir / "clips").iterdir()}
    assert stored == {c["id"] for c in clips}


# Runs the daemon with os.dup2 watched: each time file descriptor 2 is pointed elsewhere, it says
# how many threads could have been writing to it meanwhile.
WATCHING_STDERR = """
import os, sys, threading
real_dup2 = os.dup2
def dup2(fd, fd2, inheritable=True):
    if fd2 == 2:
        print(f"fd 2 moved with {threading.active_count()} threads", flush=True)
    return real_dup2(fd, fd2, inheritable)
os.dup2 = dup2
from device.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_portaudio_starts_before_any_thread_whose_log_lines_it_could_swallow(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path, state_dir: Path
) -> None:
    # sounddevice points stderr at /dev/null while PortAudio initialises; a warning that another
    # thread (MQTT, uploads, retention) logged in that moment was lost, once "mqtt: cannot reach".
    _, daemon = run_until_the_light_is_off(tmp_path, speech(WAKE_SENTENCE), 16000,
                                           [sys.executable, "-c", WATCHING_STDERR])
    assert daemon.returncode == 0, daemon.stderr
    moves = daemon.stdout.splitlines()
    assert moves, "PortAudio never initialised: the test no longer sees what it checks"
    assert set(moves) == {"fd 2 moved with 1 threads"}, moves
