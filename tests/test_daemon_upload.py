"""End to end: consent on the device's CLI, clips from `simulate`, uploads by the `run` daemon,
SIGKILL during an upload and a restart."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import ENTRY_POINT, PLAIN_SENTENCE, WAKE_SENTENCE, file_mic, run_cli, wait_until
from tests.upload_server import UploadServer


def clip_ids(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return [e["id"] for e in map(json.loads, proc.stdout.splitlines()) if e["type"] == "clip"]


def test_consent_cli_is_opt_in_and_not_retroactive(with_models: Path, speech: Callable[..., Path]) -> None:
    assert json.loads(run_cli("consent", "status").stdout)["state"] == "off"
    bad = run_cli("consent", "grant", "--scope", "transcript")
    assert bad.returncode == 2 and "uploads always carry audio" in bad.stderr
    granted = json.loads(run_cli("consent", "grant", "--scope", "audio,transcript").stdout)
    assert granted["state"] == "on" and granted["scope"] == ["audio", "transcript"]
    assert granted["policy_version"] == 1 and granted["changed_at"]
    revoked = json.loads(run_cli("consent", "revoke").stdout)
    assert revoked["state"] == "off"


@pytest.mark.slow
def test_kill_9_during_upload_then_restart_sends_each_eligible_clip_exactly_once(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path, https_server: UploadServer,
    tls_material: dict[str, Path],
) -> None:
    wav = str(speech(WAKE_SENTENCE))
    before_consent = clip_ids(run_cli("simulate", wav))
    assert run_cli("consent", "grant").returncode == 0
    eligible = clip_ids(run_cli("simulate", wav)) + clip_ids(run_cli("simulate", wav))

    env = file_mic(tmp_path, speech(PLAIN_SENTENCE), 16000)
    cfg = tmp_path / "upload.toml"
    cfg.write_text('[audio]\ndevice = "filemic"\nsample_rate_hz = 16000\nqueue_s = 0.5\n'
                   '[indicator]\npin_factory = "mock"\n'
                   f'[upload]\nurl = "{https_server.url}"\ntoken = "t0k3n"\n'
                   f'ca_file = "{tls_material["ca"]}"\n'
                   'backoff_initial_s = 0.1\nbackoff_max_s = 0.5\ntimeout_s = 10\nhold_s = 0.0\n')
    https_server.script.extend(["sleep:5"])  # the first upload is received, then the answer is slow

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen([str(ENTRY_POINT), "run", "--config", str(cfg)], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    daemon = start()
    try:
        wait_until(lambda: https_server.posts(), 60, "no upload started")
        daemon.send_signal(signal.SIGKILL)  # power cut while the request is in flight
        daemon.wait(timeout=30)
        daemon = start()
        wait_until(lambda: set(https_server.accepted) == set(eligible), 60, "not every clip arrived")
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    keys = {p.headers["Idempotency-Key"] for p in https_server.posts()}
    assert keys == set(eligible)  # nothing else was ever sent: not the clip from before consent
    assert not keys & set(before_consent)
