"""End to end: consent on the device's CLI, clips from `simulate`, uploads by the `run` daemon,
SIGKILL during an upload and a restart."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from device.core.config import UploadSettings
from device.core.events import EventSink
from device.integrations.upload import Uploader
from device.storage.clips import ClipStore
from tests.helpers import (
    ENTRY_POINT,
    PLAIN_SENTENCE,
    WAKE_SENTENCE,
    Broker,
    file_mic,
    run_cli,
    wait_until,
)
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


@pytest.mark.slow
def test_a_remote_delete_confirmed_while_the_daemon_stops_is_still_announced(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path, state_dir: Path,
    broker: Broker, https_server: UploadServer, tls_material: dict[str, Path],
) -> None:
    """P3: a delete's acknowledgement says when the copy on the server is gone. A confirmation that
    comes while the daemon stops (`systemctl stop`) must still reach MQTT: its queue row is removed
    with it, so no later start could announce it (MQTT closed before the uploader did)."""
    assert run_cli("consent", "grant").returncode == 0
    [clip] = clip_ids(run_cli("simulate", str(speech(WAKE_SENTENCE))))
    upload = (f'[upload]\nurl = "{https_server.url}"\nca_file = "{tls_material["ca"]}"\n'
              'timeout_s = 20\nhold_s = 0.0\n')
    cfg = tmp_path / "both.toml"
    cfg.write_text('[audio]\ndevice = "filemic"\nsample_rate_hz = 16000\nqueue_s = 0.5\n'
                   '[indicator]\npin_factory = "mock"\n' + upload + broker.config_toml())
    store = ClipStore(state_dir)
    uploader = Uploader(UploadSettings(url=https_server.url, ca_file=str(tls_material["ca"]),
                                       hold_s=0.0), store, EventSink())
    uploader.start()
    try:
        wait_until(lambda: https_server.accepted.get(clip), 30, "not uploaded")
    finally:
        uploader.close()
        store.close()
    assert json.loads(run_cli("clips", "delete", clip).stdout)["remote"]["pending"] == [clip]

    (state_dir / "device_id").write_text("0e2e0e2e0e2e")
    deleted = subprocess.Popen(["mosquitto_sub", *broker.client_args(), "-t",
                                "edge-recorder/0e2e0e2e0e2e/evt/deleted", "-W", "60", "-q", "1"],
                               stdout=subprocess.PIPE, text=True)
    https_server.script.append("sleep:3")  # the server takes 3 s to confirm the DELETE
    daemon = subprocess.Popen([str(ENTRY_POINT), "run", "--config", str(cfg)],
                              env=file_mic(tmp_path, speech(PLAIN_SENTENCE), 16000),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: any(r.method == "DELETE" for r in https_server.requests), 60,
                   "no remote delete started")
        daemon.send_signal(signal.SIGTERM)  # while the server has not answered yet
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    deleted.terminate()
    announced = [json.loads(line) for line in deleted.communicate()[0].splitlines()]
    assert https_server.deleted == [clip]
    assert [(e["remote"]["status"], e["remote"]["confirmed"]) for e in announced] == [
        ("confirmed", [clip])]
