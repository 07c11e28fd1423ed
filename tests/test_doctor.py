"""`edge-recorder doctor`: all checks pass against real parts, and each failure prints its fix."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import PLAIN_SENTENCE, Broker, file_mic, spawn_cli
from tests.upload_server import UploadServer


@pytest.fixture
def healthy(with_models: Path, speech: Callable[..., Path], tmp_path: Path, broker: Broker,
            https_server: UploadServer, tls_material: dict[str, Path],
            monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Config sections for a speaker where everything works."""
    for k, v in file_mic(tmp_path, speech(PLAIN_SENTENCE, lead_s=0.0), 16000).items():
        monkeypatch.setenv(k, v)
    return {
        "audio": 'device = "filemic"\nsample_rate_hz = 16000',
        "indicator": 'pin_factory = "mock"',
        "mqtt": broker.config_toml().split("\n", 1)[1],
        "upload": f'url = "{https_server.url}"\nca_file = "{tls_material["ca"]}"',
    }


def doctor(tmp_path: Path, sections: dict[str, str]) -> tuple[int, str]:
    cfg = tmp_path / "doctor.toml"
    cfg.write_text("\n".join(f"[{name}]\n{body}" for name, body in sections.items()) + "\n")
    proc = spawn_cli("doctor", "--config", str(cfg), timeout=120)  # PortAudio reads the test's ALSA
    # configuration when it starts: a fresh process
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc.returncode, proc.stdout


@pytest.mark.slow
def test_all_checks_pass_on_a_healthy_speaker(healthy: dict[str, str], tmp_path: Path) -> None:
    code, out = doctor(tmp_path, healthy)
    assert code == 0, out
    assert "10 of 10 checks passed" in out
    assert "[ok  ] web: the page is off" in out and "this device only (loopback)" in out
    assert "[ok  ] owner: no owner verifier: `edge-recorder enroll` teaches" in out
    assert re.search(r"\[ok  \] machine: .* MB RAM .* ms per 80 ms frame .*expected memory", out)
    assert "'filemic' at 16000 Hz, input level" in out and "logged in" in out
    assert "answers over HTTPS" in out and "nothing was sent" in out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("section", "body", "check", "fix"),
    [
        ("audio", 'device = "no-such-mic"', "microphone", "edge-recorder devices"),
        ("indicator", 'pin_factory = "mock"\npin = "GPIO99"', "gpio", "check indicator.pin"),
        ("mqtt", 'host = "127.0.0.1"\nport = 9', "mqtt", "check mqtt.host/port"),
        ("upload", 'url = "https://127.0.0.1:9/clips"', "upload", "check upload.url"),
        ("retention", "min_free_bytes = 1000000000000000", "storage", "free some space"),
        ("web", 'host = "0.0.0.0"', "web", "edge-recorder web passwd"),
    ],
)
def test_each_failing_check_prints_its_fix(
    healthy: dict[str, str], tmp_path: Path, section: str, body: str, check: str, fix: str
) -> None:
    code, out = doctor(tmp_path, {**healthy, section: body})
    assert code == 1
    [line] = [ln for ln in out.splitlines() if ln.startswith("[FAIL]")]
    assert line.startswith(f"[FAIL] {check}:")
    fix_line = out.splitlines()[out.splitlines().index(line) + 1]
    assert fix_line.strip().startswith("fix:") and fix in fix_line


@pytest.mark.slow
def test_wrong_broker_password(healthy: dict[str, str], tmp_path: Path) -> None:
    mqtt = healthy["mqtt"].replace("correct horse battery staple", "wrong")
    code, out = doctor(tmp_path, {**healthy, "mqtt": mqtt})
    assert code == 1 and "refused the login" in out and "check mqtt.username" in out


@pytest.mark.slow
def test_missing_models(healthy: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_RECORDER_MODELS_DIR", str(tmp_path / "none"))
    code, out = doctor(tmp_path, healthy)
    assert code == 1 and "[FAIL] models:" in out and "models fetch --wake" in out
