"""End to end: the real daemon (`edge-recorder run` on the file-backed ALSA microphone) controlled
with mosquitto_pub / mosquitto_sub through a real broker; SIGKILL right after the acknowledgement."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ENTRY_POINT, PLAIN_SENTENCE, WAKE_SENTENCE, Broker, run_cli, wait_until
from tests.test_capture import file_mic

DEVICE = "0e2e0e2e0e2e"
BASE = f"edge-recorder/{DEVICE}/"


def retained(broker: Broker, topic: str) -> str:
    out = subprocess.run(["mosquitto_sub", *broker.client_args(), "-t", BASE + topic, "-C", "1",
                          "-W", "10"], capture_output=True, text=True, timeout=20)
    return out.stdout.strip()


def retained_status(broker: Broker) -> dict[str, object]:
    text = retained(broker, "status")
    return json.loads(text) if text else {}


class Daemon:
    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.cmd, self.env = cmd, env
        self.proc: subprocess.Popen[str] | None = None

    def start(self, broker: Broker) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: retained(broker, "availability") == "online", 60, "daemon not online")

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        assert self.proc is not None
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err


@pytest.fixture
def daemon(with_models: Path, speech: Callable[..., Path], tmp_path: Path, state_dir: Path,
           broker: Broker) -> Iterator[Daemon]:
    env = file_mic(tmp_path, speech(PLAIN_SENTENCE), 16000)
    cfg = tmp_path / "daemon.toml"
    cfg.write_text('[audio]\ndevice = "filemic"\nsample_rate_hz = 16000\nqueue_s = 0.5\n'
                   '[indicator]\npin_factory = "mock"\n' + broker.config_toml())
    state_dir.mkdir(mode=0o700)
    (state_dir / "device_id").write_text(DEVICE)
    d = Daemon([str(ENTRY_POINT), "run", "--config", str(cfg)], env)
    yield d
    if d.proc and d.proc.poll() is None:
        d.stop(signal.SIGKILL)


def test_delete_over_mqtt_is_durable_across_kill_9(
    daemon: Daemon, broker: Broker, speech: Callable[..., Path], state_dir: Path
) -> None:
    clips = []
    for _ in range(2):  # the same store `run` uses, filled by `simulate`
        events = [json.loads(x) for x in run_cli("simulate", str(speech(WAKE_SENTENCE))).stdout.splitlines()]
        clips += [e["id"] for e in events if e["type"] == "clip"]
    doomed, kept = clips
    daemon.start(broker)

    sub = subprocess.Popen(["mosquitto_sub", *broker.client_args(), "-t", BASE + "evt/deleted",
                            "-C", "1", "-W", "30", "-q", "1"], stdout=subprocess.PIPE, text=True)
    wait_until(lambda: "mosquitto_sub" in subprocess.run(["ps", "-o", "comm=", "-p", str(sub.pid)],
                                                         capture_output=True, text=True).stdout,
               10, "mosquitto_sub did not start")
    payload = json.dumps({"request_id": "e2e-1", "ids": [doomed]})
    subprocess.run(["mosquitto_pub", *broker.client_args(), "-t", BASE + "cmd/delete", "-q", "1",
                    "-m", payload], check=True, timeout=20)
    ack = json.loads(sub.communicate(timeout=40)[0])
    code, _ = daemon.stop(signal.SIGKILL)  # power cut right after the acknowledgement
    assert code == -signal.SIGKILL
    assert ack["request_id"] == "e2e-1" and ack["ids"] == [doomed]

    assert not (state_dir / "clips" / f"{doomed}.clip").exists()
    rows = sqlite3.connect(state_dir / "index.sqlite").execute("SELECT id FROM clips").fetchall()
    assert rows == [(kept,)]
    wait_until(lambda: retained(broker, "availability") == "offline", 30, "no last will")

    daemon.start(broker)
    listed = [json.loads(x)["id"] for x in run_cli("clips", "list").stdout.splitlines()]
    assert listed == [kept]
    assert retained_status(broker)["clips"] == 1
    code, err = daemon.stop()
    assert code == 0 and "Traceback" not in err
    assert retained(broker, "availability") == "offline"


def test_a_broker_that_is_down_never_stops_listening(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path, broker: Broker
) -> None:
    env = file_mic(tmp_path, speech(WAKE_SENTENCE), 16000)
    # The broker is down: its address is a port held (bound, never listening) for this test, so no
    # other test's broker can take it meanwhile, as one could take a port a stopped broker freed.
    down = socket.socket()
    down.bind(("127.0.0.1", 0))
    cfg = tmp_path / "down.toml"
    cfg.write_text('[audio]\ndevice = "filemic"\nsample_rate_hz = 16000\nqueue_s = 30\n'
                   '[indicator]\npin_factory = "mock"\n'
                   + broker.config_toml().replace(f"port = {broker.port}\n",
                                                  f"port = {down.getsockname()[1]}\n"))
    events, log = tmp_path / "events.jsonl", tmp_path / "stderr.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([str(ENTRY_POINT), "run", "--config", str(cfg), "--events",
                                 str(events)], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        try:
            wait_until(lambda: events.exists() and '"wake"' in events.read_text(), 60, "no wake")
            try:
                wait_until(lambda: "cannot reach" in log.read_text(), 30, "absence unreported")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the daemon said:\n{log.read_text()}") from None
            time.sleep(2.0)  # reconnects every 0.2-1 s: several failed attempts, still one report
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    down.close()
    err = log.read_text()
    assert proc.returncode == 0, err
    assert err.count("cannot reach 127.0.0.1") == 1, err  # once per transition, not per retry
