"""Shared fixtures: real models (fetched once per session), espeak-ng speech, a CLI runner."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from device import cli
from device.wake import detector as wake
from tests.upload_server import UploadServer, make_test_tls

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


REAL_LOAD_OPENWAKEWORD = wake.load_openwakeword_model


@pytest.fixture(scope="session", autouse=True)
def _models_loaded_once() -> Iterator[None]:
    """The real openWakeWord models are loaded once per session and reset before each reuse (as
    wyoming-openwakeword's tests do): a reset model is in the state of a freshly loaded one."""
    cache: dict[tuple[str, ...], object] = {}
    load = REAL_LOAD_OPENWAKEWORD

    def cached(wake_paths: list[str], store: object) -> object:
        # per thread: a pipeline a test runs in the background never shares a model with another
        key = (*wake_paths, str(getattr(store, "root", "")), str(threading.get_ident()))
        if key not in cache:
            cache[key] = load(wake_paths, store)  # type: ignore[arg-type]
        model = cache[key]
        model.reset()  # type: ignore[attr-defined]
        return model

    patch = pytest.MonkeyPatch()
    patch.setattr(wake, "load_openwakeword_model", cached)
    yield
    patch.undo()


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


# -- MQTT: a real mosquitto with TLS and a password file ------------------------------------------

MQTT_USER, MQTT_PASSWORD = "speaker", "correct horse battery staple"


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_test_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def https_server(tls_material: dict[str, Path]) -> Iterator[UploadServer]:
    """The owner's upload endpoint: a real HTTPS server on loopback that records every byte."""
    srv = UploadServer(tls_material)
    yield srv
    srv.close()


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


@pytest.fixture
def broker(tmp_path: Path, tls_material: dict[str, Path]) -> Iterator[Broker]:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = Broker(workdir, tls_material)
    b.start()
    yield b
    b.stop()


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
