"""The control plane through a real mosquitto (TLS, password file, persistence), with a paho
client playing the owner's Home Assistant."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device.control.commands import Controller, sign
from device.control.mute import MuteState
from device.core import events
from device.core.config import MqttSettings, Settings
from device.core.errors import StoreError
from device.core.events import EventSink
from device.integrations.mqtt import MqttControl
from device.storage.clips import ClipStore
from tests.helpers import MQTT_PASSWORD, MQTT_USER, Broker, add_clip, indexed, on_disk, wait_until

DEVICE = "a1b2c3d4e5f6"
BASE = f"edge-recorder/{DEVICE}/"
WAIT_S = 20


class Owner:
    """An outside MQTT client: publishes commands with QoS 1 and records what it receives. Ready
    once subscribed (its persistent session then keeps what arrives while it is away), not merely
    connected: a broker stopped in between kept a session that subscribed to nothing."""

    def __init__(self, broker: Broker, name: str = "owner") -> None:
        self.messages: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{name}", clean_session=False)
        c.username_pw_set(MQTT_USER, MQTT_PASSWORD)
        c.tls_set(ca_certs=str(broker.tls["ca"]))
        c.reconnect_delay_set(1, 1)
        c.on_connect = lambda cl, *_: cl.subscribe([(BASE + "#", 1), ("homeassistant/#", 1)])
        c.on_subscribe = lambda *_: subscribed.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        self.client = c
        wait_until(subscribed.is_set, WAIT_S, "owner could not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            body: Any = json.loads(msg.payload)
        except ValueError:
            body = msg.payload
        with self._lock:
            self.messages.append((msg.topic.removeprefix(BASE), body))

    def send(self, command: str, payload: dict[str, Any] | bytes) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(BASE + f"cmd/{command}", raw, qos=1)

    def replies(self, topic: str, request_id: str | None = None) -> list[Any]:
        with self._lock:
            return [b for t, b in self.messages
                    if t == topic and (request_id is None or b.get("request_id") == request_id)]

    def replies_on(self, topic: str) -> list[Any]:
        """Every payload seen on one topic (full name, or relative to the speaker's base)."""
        with self._lock:
            return [b for t, b in self.messages if t == topic]

    def reply(self, topic: str, request_id: str) -> Any:
        wait_until(lambda: self.replies(topic, request_id), WAIT_S, f"no {topic} for {request_id}")
        return self.replies(topic, request_id)[0]

    def status(self) -> Any:
        with self._lock:
            return [b for t, b in self.messages if t == "status"][-1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def settings_for(broker: Broker, extra: str = "") -> MqttSettings:
    return Settings.model_validate(tomllib.loads(broker.config_toml(extra))).mqtt


class Speaker:
    """The control plane as the daemon wires it, without audio."""

    def __init__(self, state_dir: Path, settings: MqttSettings,
                 status_fails: Callable[[], bool] = lambda: False) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (state_dir / "device_id").write_text(DEVICE)
        self.store = ClipStore(state_dir)
        self.mute = MuteState()
        self.events = EventSink()

        def status() -> dict[str, object]:
            if status_fails():
                raise StoreError("the index is in use by another process")
            return {"clips": self.store.count()}

        self.control = MqttControl(settings, self.store, Controller(self.store, self.mute), status,
                                   self.events)
        self.control.start()

    def close(self) -> None:
        self.control.close()
        self.store.close()


@pytest.fixture
def owner(broker: Broker) -> Iterator[Owner]:
    o = Owner(broker)
    yield o
    o.close()


@pytest.fixture
def speaker(broker: Broker, state_dir: Path, owner: Owner) -> Iterator[Speaker]:
    """A speaker that is listening: it subscribes before it says it is online, so a command sent
    after that is not published into a broker that has nobody to give it to (a CI run lost one)."""
    s = Speaker(state_dir, settings_for(broker))
    wait_until(lambda: b"online" in owner.replies_on("availability"), WAIT_S,
               "the speaker never came online")
    yield s
    s.close()


def test_delete_is_acknowledged_after_it_is_done_and_status_follows(
    speaker: Speaker, owner: Owner
) -> None:
    a, b = add_clip(speaker.store), add_clip(speaker.store)
    wait_until(lambda: [t for t, _ in owner.messages if t == "status"], WAIT_S, "no status")
    owner.send("delete", {"request_id": "r1", "ids": [a]})
    reply = owner.reply("evt/deleted", "r1")
    assert reply["ids"] == [a] and reply["remote"]["status"] == "none_uploaded"
    assert indexed(speaker.store) == on_disk(speaker.store) == {b}
    wait_until(lambda: owner.status().get("clips") == 1, WAIT_S, "status did not follow")
    assert owner.replies_on("availability") == [b"online"]


def test_a_status_that_cannot_be_read_costs_no_command_its_ack(
    broker: Broker, owner: Owner, state_dir: Path
) -> None:
    """The status reads the store; while that fails, commands are still done, answered and acked,
    and the worker goes on (it died, and the command went unacknowledged)."""
    failing = [True]
    speaker = Speaker(state_dir, settings_for(broker), status_fails=lambda: failing[0])
    try:
        a, b = add_clip(speaker.store), add_clip(speaker.store)
        wait_until(lambda: owner.replies_on("availability"), WAIT_S, "the speaker never came online")
        owner.send("delete", {"request_id": "s1", "ids": [a]})
        assert owner.reply("evt/deleted", "s1")["ids"] == [a]
        owner.send("delete", {"request_id": "s2", "ids": [b]})
        assert owner.reply("evt/deleted", "s2")["ids"] == [b]
        failing[0] = False
        owner.send("delete", {"request_id": "s3", "all": True})
        owner.reply("evt/deleted", "s3")
        wait_until(lambda: [s["clips"] for s in owner.replies_on("status")][-1:] == [0], WAIT_S,
                   "the status never came back")  # it follows the reply: none may be here yet
    finally:
        speaker.close()


def test_remote_can_only_reduce(speaker: Speaker, owner: Owner) -> None:
    owner.send("consent", {"request_id": "g1", "action": "grant"})
    assert owner.reply("evt/error", "g1")["code"] == "refused"
    speaker.mute.set(hardware=True)
    owner.send("mute", {"request_id": "u1", "muted": False})
    assert owner.reply("evt/error", "u1")["code"] == "refused"
    assert speaker.mute.hardware and speaker.mute.muted
    owner.send("consent", {"request_id": "r1", "action": "revoke"})
    assert owner.reply("evt/consent", "r1")["state"] == "off"


def test_bad_input_gets_an_error_reply_and_changes_nothing(speaker: Speaker, owner: Owner) -> None:
    keep = add_clip(speaker.store)
    owner.send("delete", b"{not json")
    owner.send("delete", {"request_id": "big", "ids": ["a" * 66_000]})  # bigger: the broker drops it
    owner.send("delete", {"request_id": "typo", "all": True, "everything": True})
    owner.send("reboot", {"request_id": "rb"})
    assert owner.reply("evt/error", "typo")["code"] == "bad_request"
    wait_until(lambda: len(owner.replies("evt/error")) == 4, WAIT_S, "missing error replies")
    codes = sorted(e["code"] for e in owner.replies("evt/error"))
    assert codes == ["bad_json", "bad_request", "too_large", "unknown_command"]
    assert indexed(speaker.store) == {keep}
    owner.send("delete", {"request_id": "ok", "ids": [keep]})  # still serving
    assert owner.reply("evt/deleted", "ok")["ids"] == [keep]


def test_clip_announcements_carry_metadata_only(speaker: Speaker, owner: Owner) -> None:
    speaker.events.emit(events.Clip(t=3.9, id="c" * 32, start=1.9, end=3.9,
                                    wake_word="hey_jarvis", transcript="my bank pin is 1234"))
    wait_until(lambda: owner.replies("evt/clip"), WAIT_S, "no evt/clip")
    [clip] = owner.replies("evt/clip")
    assert clip == {"type": "clip", "t": 3.9, "id": "c" * 32, "start": 1.9, "end": 3.9,
                    "wake_word": "hey_jarvis", "transcript": None, "audio": True}  # no transcript


def test_what_a_stop_before_the_first_connect_had_queued_is_still_delivered(
    broker: Broker, owner: Owner, state_dir: Path
) -> None:
    """A short `simulate`, or a daemon stopped in its first second: the broker answers after the
    events were raised. The stop waits for it (a while) instead of dropping them with the client."""
    broker.stop()
    speaker = Speaker(state_dir, settings_for(broker))
    speaker.events.emit(events.Discarded(t=1.0, reason="no_speech"))
    speaker.events.flush()  # as the pipeline does before its services stop
    comes_up = threading.Timer(1.5, broker.start)
    comes_up.start()
    try:
        speaker.close()
    finally:
        comes_up.join()
    wait_until(lambda: owner.replies("evt/discarded"), WAIT_S, "the event was dropped at the stop")
    assert owner.replies_on("availability")[-1:] == [b"offline"]  # and the stop was said


@pytest.mark.parametrize(("protocol", "logged"), [("5", "(p5, c0,"), ("3.1.1", "(p2, c0,")])
def test_a_delete_sent_while_the_speaker_is_offline_runs_when_it_returns(
    broker: Broker, owner: Owner, state_dir: Path, protocol: str, logged: str
) -> None:
    """The persistent session, as the broker saw it: MQTT 5 with clean start off (paho's default
    would start clean on each process's first connect and drop what waited), or 3.1.1."""
    settings = settings_for(broker, f'protocol = "{protocol}"')
    first = Speaker(state_dir, settings)  # establishes the persistent session
    doomed = add_clip(first.store)
    wait_until(lambda: owner.replies("status"), WAIT_S, "speaker never came online")
    first.close()
    wait_until(lambda: owner.replies_on("availability")[-1:] == [b"offline"], WAIT_S, "not offline")
    owner.send("delete", {"request_id": "while-away", "ids": [doomed]})

    again = Speaker(state_dir, settings)
    try:
        assert owner.reply("evt/deleted", "while-away")["ids"] == [doomed]
        assert doomed not in on_disk(again.store) | indexed(again.store)
        connects = [ln for ln in (broker.workdir / "mosquitto.log").read_text().splitlines()
                    if f"as edge-recorder-{DEVICE}" in ln]
        assert len(connects) == 2 and all(logged in ln for ln in connects), connects
    finally:
        again.close()


@pytest.mark.slow
def test_broker_restart_mid_burst_loses_nothing_and_runs_nothing_twice(
    broker: Broker, speaker: Speaker, owner: Owner
) -> None:
    clips = [add_clip(speaker.store) for _ in range(30)]
    wait_until(lambda: owner.replies("status"), WAIT_S, "speaker never came online")
    for i, clip in enumerate(clips):
        owner.send("delete", {"request_id": f"burst-{i}", "ids": [clip]})
        if i == 14:
            broker.restart()
    wait_until(lambda: not indexed(speaker.store) and not on_disk(speaker.store), 60,
               "not every clip was deleted")
    for i, clip in enumerate(clips):
        replies = owner.replies("evt/deleted", f"burst-{i}")
        if not replies:  # the reply itself may have been in flight during the restart
            continue
        assert all(r["ids"] == [clip] for r in replies)  # a redelivery replays, never re-runs
    index = sqlite3.connect(speaker.store.state_dir / "index.sqlite")  # the evidence on disk
    rows = index.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    assert rows == len(clips) and on_disk(speaker.store) == set()


@pytest.mark.slow
def test_reconnects_back_off_by_the_configured_sub_second_delays(state_dir: Path) -> None:
    """A broker that takes the connection and drops it at once (as one that is restarting or
    refuses the login may): the speaker comes back after 0.2, 0.4, 0.8, 1, 1 s, not in a busy
    loop (a rounded 0.2 s delay was 0, and 0 doubles to 0: about 10,000 connects a second)."""
    dropper = socket.create_server(("127.0.0.1", 0))
    dropper.settimeout(0.1)
    settings = Settings.model_validate({"mqtt": {
        "host": "127.0.0.1", "port": dropper.getsockname()[1],
        "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}}).mqtt
    speaker = Speaker(state_dir, settings)
    connects, deadline = 0, time.monotonic() + 3.0
    try:
        while time.monotonic() < deadline:
            try:
                conn, _ = dropper.accept()
            except TimeoutError:
                continue
            connects += 1
            conn.close()
    finally:
        speaker.close()
        dropper.close()
    assert 3 <= connects <= 7, f"{connects} connects in 3 s"


def test_signed_commands_over_mqtt(broker: Broker, owner: Owner, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-for-tests\n")
    toml = broker.config_toml() + f'[mqtt.signing]\nsecret_file = "{secret}"\n'
    speaker = Speaker(tmp_path / "signed", Settings.model_validate(tomllib.loads(toml)).mqtt)
    try:
        a = add_clip(speaker.store)
        wait_until(lambda: owner.replies("status"), WAIT_S, "speaker never came online")
        owner.send("delete", {"request_id": "nosig", "ids": [a]})
        assert owner.reply("evt/error", "nosig")["code"] == "unsigned"
        body = {"request_id": "withsig", "ids": [a], "ts": int(time.time()), "nonce": "abcdef012"}
        owner.send("delete", {**body, "sig": sign("delete", body, b"s3cret-for-tests")})
        assert owner.reply("evt/deleted", "withsig")["ids"] == [a]
    finally:
        speaker.close()
