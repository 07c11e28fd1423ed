"""Helpers the test files share (fixtures live in conftest.py): speech and WAV files, the CLI in
process and as a subprocess, a real mosquitto, a real tmpfs, a file-backed ALSA microphone, clips
and commands against a store, the pipeline on a WAV file, bounded waits."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import numpy as np
import pytest
import soundfile
from gpiozero.pins.mock import MockFactory

from device import cli
from device.app import run_pipeline
from device.audio.sources import WavSource
from device.control.commands import Controller, Signing, error_event, parse
from device.control.mute import MuteState
from device.core.config import Settings
from device.core.errors import CommandError
from device.core.events import EventSink
from device.core.frames import Frame
from device.recording.pipeline import Counters
from device.storage.clips import ClipStore
from device.wake import detector as wake

ROOT = Path(__file__).resolve().parent.parent

MAKE_AUDIO = ROOT / "scripts" / "make-test-audio"

WAKE_SENTENCE = "hey jarvis, turn on the kitchen light"

ENTRY_POINT = Path(sys.executable).parent / "edge-recorder"
"""The console script users run (installed by scripts/setup)."""

PLAIN_SENTENCE = "the weather today is sunny with a light breeze from the west"

REAL_LOAD_OPENWAKEWORD = wake.load_openwakeword_model

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

def spawn_cli(*args: str, timeout: float = 180, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """The real console script in a subprocess, with the test's environment: for what only a
    process shows (exit codes of a fresh start, signals, resource limits, stdin)."""
    return subprocess.run(
        [str(ENTRY_POINT), *args],
        capture_output=True, text=True, timeout=timeout, env=dict(os.environ), **kwargs,  # type: ignore[call-overload]
    )

def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The CLI's `main()` in this process (same argument parsing, output and exit code as the
    console script, without a cold start), bounded by `timeout` like a subprocess would be."""
    out, err = io.StringIO(), io.StringIO()
    result: dict[str, int] = {}

    def call() -> None:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            result["code"] = cli.main(list(args))

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise AssertionError(f"edge-recorder {' '.join(args)} did not finish in {timeout} s")
    return subprocess.CompletedProcess(["edge-recorder", *args], result.get("code", 1),
                                       out.getvalue(), err.getvalue())

def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and directory under root with (size, mtime_ns, mode): to prove nothing changed."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns,
                                   p.stat().st_mode)
        for p in sorted(root.rglob("*"))
    }

MQTT_USER, MQTT_PASSWORD = "speaker", "correct horse battery staple"

class Broker:
    """mosquitto on a free loopback port, TLS only, passwords required, persistence on."""

    def __init__(self, workdir: Path, tls: dict[str, Path]) -> None:
        self.workdir = workdir
        self.tls = tls
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        passwd = workdir / "passwd"
        subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), MQTT_USER, MQTT_PASSWORD],
                       check=True, capture_output=True, timeout=30)
        (workdir / "data").mkdir()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"user root\nlistener {self.port} 127.0.0.1\n"
            f"cafile {tls['ca']}\ncertfile {tls['cert']}\nkeyfile {tls['key']}\n"
            f"allow_anonymous false\npassword_file {passwd}\n"
            f"persistence true\npersistence_location {workdir / 'data'}/\n"
            "max_queued_messages 100000\n"
            f"log_dest file {workdir / 'mosquitto.log'}\n"
        )

    @classmethod
    @contextlib.contextmanager
    def running(cls, workdir: Path, tls: dict[str, Path]) -> Iterator[Self]:
        """A broker of this kind in a new `workdir`, started, and stopped after the block."""
        workdir.mkdir()
        broker = cls(workdir, tls)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: port_open(self.port), 10, "mosquitto did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def config_toml(self, extra: str = "") -> str:
        return (f'[mqtt]\nhost = "127.0.0.1"\nport = {self.port}\nusername = "{MQTT_USER}"\n'
                f'password = "{MQTT_PASSWORD}"\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n'
                f'{extra}\n[mqtt.tls]\nenabled = true\nca_file = "{self.tls["ca"]}"\n')

    def client_args(self) -> list[str]:
        """Arguments for mosquitto_pub / mosquitto_sub."""
        return ["-h", "127.0.0.1", "-p", str(self.port), "--cafile", str(self.tls["ca"]),
                "-u", MQTT_USER, "-P", MQTT_PASSWORD]

@contextlib.contextmanager
def tmpfs(where: Path, size: str, why_skip: str = "") -> Iterator[Path]:
    """A real size-limited file system (tmpfs) mounted at `where`; the test is skipped where this
    machine does not allow mounting one."""
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}){why_skip}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0

def wait_until(predicate: Callable[[], object], timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{message} (waited {timeout_s} s)")


ALSA_CONF = """</usr/share/alsa/alsa.conf>
pcm.filemic {{ type file; slave.pcm "null"; file "/dev/null"; infile "{raw}"; format "raw" }}
"""

def file_mic(tmp_path: Path, wav: Path, rate: int) -> dict[str, str]:
    raw = tmp_path / f"mic{rate}.raw"
    subprocess.run(["sox", str(wav), "-t", "raw", "-r", str(rate), "-c", "1", "-b", "16",
                    "-e", "signed-integer", str(raw)], check=True)
    conf = tmp_path / "asound.conf"
    conf.write_text(ALSA_CONF.format(raw=raw))
    return {**os.environ, "ALSA_CONFIG_PATH": str(conf)}


NOW = datetime.now(UTC)

def add_clip(store: ClipStore, age: timedelta = timedelta(0)) -> str:
    samples = np.full(1280, 7, dtype=np.int16)
    return store.add(samples, 1.0, 1.08, "hey_jarvis", 0.9, "turn on the light",
                     recorded_at=NOW - age).id

def on_disk(store: ClipStore) -> set[str]:
    return {p.stem for p in store.clips_dir.glob("*.clip")}

def indexed(store: ClipStore) -> set[str]:
    return {c.id for c in store.all()}

def run(store: ClipStore, payload: Any, kind: str = "delete", mute: MuteState | None = None,
        signing: Signing | None = None) -> dict[str, Any]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    try:
        reply = Controller(store, mute or MuteState()).execute(parse(kind, raw, signing, store))
    except CommandError as exc:
        reply = error_event(exc)
    return reply.to_dict()


Event = dict[str, Any]  # events as their JSON objects

PIN = "GPIO17"

class WatchedSource:
    """A WAV source that notes, for every frame, whether the light was lit when it was captured."""

    def __init__(self, path: Path, factory: MockFactory) -> None:
        self.inner = WavSource(path)
        self.pin = factory.pin(PIN)
        self.lit_at_capture: dict[int, bool] = {}
        self.audio: dict[int, np.ndarray] = {}

    @property
    def overflows(self) -> int:
        return self.inner.overflows

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        for frame in self.inner.frames(stop):
            self.lit_at_capture[frame.start] = bool(self.pin.state)
            self.audio[frame.start] = frame.samples
            yield frame

    def clock(self) -> int:
        return self.inner.clock()

    def close(self) -> None:
        self.inner.close()

def simulate(path: Path, state_dir: Path, factory: MockFactory,
             settings: Settings | None = None) -> tuple[list[Event], WatchedSource, Counters]:
    events: list[Event] = []
    sink = EventSink()
    sink.subscribe(lambda e: events.append(e.to_dict()))
    source = WatchedSource(path, factory)
    counters = run_pipeline(settings or Settings(), state_dir, lambda: source, sink, factory,
                            threading.Event())
    return events, source, counters

def of_type(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e["type"] == kind]


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("edge-recorder: error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]
