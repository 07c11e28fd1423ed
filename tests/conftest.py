"""Shared fixtures: real models (fetched once per session), espeak-ng speech, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from device.wake import detector as wake
from tests.helpers import ENTRY_POINT, MAKE_AUDIO, REAL_LOAD_OPENWAKEWORD, Broker
from tests.upload_server import UploadServer, make_test_tls


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


# -- MQTT: a real mosquitto with TLS and a password file ------------------------------------------


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_test_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def https_server(tls_material: dict[str, Path]) -> Iterator[UploadServer]:
    """The owner's upload endpoint: a real HTTPS server on loopback that records every byte."""
    srv = UploadServer(tls_material)
    yield srv
    srv.close()


@pytest.fixture
def broker(tmp_path: Path, tls_material: dict[str, Path]) -> Iterator[Broker]:
    with Broker.running(tmp_path / "broker", tls_material) as b:
        yield b


