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

import numpy as np
import pytest
import soundfile

from tests.helpers import ENTRY_POINT, PLAIN_SENTENCE, WAKE_SENTENCE, Broker, file_mic, run_cli, wait_until

DEVICE = "0e2e0e2e0e2e"
BASE = f"edge-recorder/{DEVICE}/"


def retained(broker: Broker, topic: str, base: str = BASE) -> str:
    out = subprocess.run(["mosquitto_sub", *broker.client_args(), "-t", base + topic, "-C", "1",
                          "-W", "10"], capture_output=True, text=True, timeout=20)
    return out.stdout.strip()


def retained_status(broker: Broker, base: str = BASE) -> dict[str, object]:
    text = retained(broker, "status", base)
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


@pytest.mark.slow
def test_delete_over_mqtt_is_durable_across_kill_9(
    daemon: Daemon, broker: Broker, speech: Callable[..., Path], state_dir: Path
) -> None:
    clips = []
    for _ in range(2):  # the same store `run` uses, filled by `simulate`
        events = [json.loads(x) for x in run_cli("simulate", str(speech(WAKE_SENTENCE))).stdout.splitlines()]
        clips += [e["id"] for e in events if e["type"] == "clip"]
    doomed, kept = clips
    daemon.start(broker)

    # subscribed (not merely started) once the retained availability, subscribed after the
    # acknowledgement's topic, has arrived: an acknowledgement published before is lost to it
    sub = subprocess.Popen(["mosquitto_sub", *broker.client_args(), "-t", BASE + "evt/deleted",
                            "-t", BASE + "availability", "-v", "-C", "2", "-W", "30", "-q", "1"],
                           stdout=subprocess.PIPE, text=True)
    assert sub.stdout is not None
    assert sub.stdout.readline() == f"{BASE}availability online\n", "mosquitto_sub did not subscribe"
    payload = json.dumps({"request_id": "e2e-1", "ids": [doomed]})
    subprocess.run(["mosquitto_pub", *broker.client_args(), "-t", BASE + "cmd/delete", "-q", "1",
                    "-m", payload], check=True, timeout=20)
    topic, _, ack_text = sub.communicate(timeout=40)[0].partition(" ")
    assert topic == BASE + "evt/deleted", ack_text
    ack = json.loads(ack_text)
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


@pytest.mark.slow
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


def events_in(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_a_mute_acknowledged_by_simulate_while_the_speaker_is_stopped_holds_when_it_starts(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path, state_dir: Path,
    broker: Broker, daemon: Daemon,
) -> None:
    """With `run` stopped, `simulate` serves MQTT: a mute it acknowledged was not kept, and the
    broker, having its PUBACK, had nothing to redeliver; the speaker started next listened."""
    cfg = tmp_path / "sim.toml"
    cfg.write_text(broker.config_toml())
    proc = subprocess.Popen([str(ENTRY_POINT), "simulate", str(speech(WAKE_SENTENCE, lead_s=2.5)),
                             "--realtime", "--config", str(cfg)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: retained_status(broker), 60, "simulate did not connect")
        subprocess.run(["mosquitto_pub", *broker.client_args(), "-t", BASE + "cmd/mute", "-q", "1",
                        "-m", json.dumps({"request_id": "m-1", "muted": True})], check=True,
                       timeout=20)  # returns once the broker has it
        wait_until(lambda: retained_status(broker).get("muted", {}).get("software") is True, 20,
                   "simulate did not take the mute")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    subprocess.run(["mosquitto_pub", *broker.client_args(), "-t", BASE + "status", "-r", "-n"],
                   check=True, timeout=20)  # simulate's status is gone: what follows is run's
    daemon.start(broker)
    wait_until(lambda: retained_status(broker), 60, "the speaker published no status")
    assert retained_status(broker)["muted"] == {"software": True, "hardware": False}


@pytest.mark.slow
def test_simulate_realtime_survives_a_mute_and_unmute_over_mqtt(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path, state_dir: Path, broker: Broker
) -> None:
    """`simulate --realtime` drives the control plane as `run` does (issue 24, item 11). A mute
    closes the file; the unmute opens it again where the listener had got to (a tape that
    pauses), so the wake word after it is heard and recorded, at its own time in the file, and
    simulate ends when the file does. Before: the capture thread died with `I/O operation on
    closed file` and simulate returned 0 without hearing the rest."""
    cfg = tmp_path / "sim.toml"
    cfg.write_text(broker.config_toml())
    state_dir.mkdir(mode=0o700)
    (state_dir / "device_id").write_text(DEVICE)
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen([str(ENTRY_POINT), "simulate", str(speech(WAKE_SENTENCE, lead_s=2.5)),
                             "--realtime", "--config", str(cfg), "--events", str(events)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: retained_status(broker), 60, "simulate did not connect")

        def mute(muted: bool) -> None:
            subprocess.run(["mosquitto_pub", *broker.client_args(), "-t", BASE + "cmd/mute", "-q",
                            "1", "-m", json.dumps({"request_id": f"m-{muted}", "muted": muted})],
                           check=True, timeout=20)

        mute(True)
        wait_until(lambda: any(e.get("state") == "muted" for e in events_in(events)), 20, "not muted")
        time.sleep(0.5)
        assert proc.poll() is None  # muted, it waits for the unmute, as `run` does
        mute(False)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "INFO: Created TensorFlow Lite" not in err  # item 17, with threads running
    seen = events_in(events)
    assert [e.get("state") or e["type"] for e in seen] == [
        "muted", "idle", "wake", "recording", "idle", "clip"]
    muted_at, wake = seen[0]["t"], seen[2]
    assert isinstance(muted_at, float) and isinstance(wake["t"], float)
    assert muted_at < 2.5 < wake["t"] < 4.0  # the wake word at its time in the file, after the pause
    assert "1 wake(s), 1 clip(s)" in err and len(run_cli("clips", "list").stdout.splitlines()) == 1


def test_simulate_realtime_exits_non_zero_when_the_file_cannot_be_read_to_the_end(
    with_models: Path, tmp_path: Path
) -> None:
    """A read error on the pacing thread (a FLAC whose middle is damaged: "lost sync") ends
    simulate with one line and exit 1. Before: the thread died, simulate said it had simulated
    the whole file and returned 0."""
    flac = tmp_path / "damaged.flac"
    noise = np.random.default_rng(0).normal(0, 3000, 3 * 16000).astype(np.int16)
    soundfile.write(str(flac), noise, 16000)
    data = bytearray(flac.read_bytes())
    data[len(data) // 3:len(data) // 3 + 2000] = b"\xff" * 2000
    flac.write_bytes(bytes(data))
    proc = run_cli("simulate", str(flac), "--realtime", timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    [error] = [ln for ln in proc.stderr.splitlines() if ln.startswith("edge-recorder: error:")]
    assert f"cannot read audio file '{flac}'" in error and "simulated" not in proc.stderr
