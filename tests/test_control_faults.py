"""The control plane on a bad day (issue 24, items 4-8): a flooded broker, huge messages and replies,
the shipped broker configuration, remote sensitivity and replayed settings, absurd numbers. Each
test injects the fault with real parts (mosquitto, the loopback HTTPS server, SQLite)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device.control import consent
from device.control.commands import Controller, Signing, parse
from device.control.mute import MuteState
from device.control.save_mode import SaveState
from device.control.sensitivity import SensitivityState
from device.core.config import MqttSettings, Settings, WakeSettings
from device.core.errors import CommandError
from device.storage.clips import ClipStore
from tests.helpers import (
    MQTT_PASSWORD,
    MQTT_USER,
    ROOT,
    Broker,
    add_clip,
    free_port,
    indexed,
    on_disk,
    port_open,
    run,
    wait_until,
)
from tests.test_commands import SECRET, signed
from tests.test_mqtt import (
    BASE,
    DEVICE,
    WAIT_S,
    Owner,
    Speaker,
    owner,  # noqa: F401  (the fixture)
    settings_for,
)
from tests.test_upload import Running, record
from tests.test_upload import settings as upload_settings
from tests.upload_server import UploadServer

# -- 7. remote sensitivity and replayed settings ----------------------------------------------------


def controller_with_settings(store: ClipStore) -> Controller:
    prefs = store.state.preferences
    sensitivity = SensitivityState(WakeSettings(sensitivity="balanced"), prefs.get, prefs.set)
    save = SaveState("audio", prefs.get, prefs.set)
    return Controller(store, MuteState(), sensitivity, save)


def execute(controller: Controller, kind: str, payload: bytes, signing: Signing | None = None
            ) -> dict[str, object]:
    try:
        return controller.execute(parse(kind, payload, signing, controller.store)).to_dict()
    except CommandError as exc:
        return {"type": "error", "code": exc.code, "message": str(exc)}


def test_remote_sensitivity_cannot_undo_what_the_owner_set_on_the_device(state_dir: Path) -> None:
    store = ClipStore(state_dir)
    controller = controller_with_settings(store)
    assert controller.sensitivity is not None
    controller.sensitivity.set("strict", remote=False)  # the owner, on the device (CLI)
    reply = execute(controller, "sensitivity", b'{"request_id": "s1", "level": "balanced"}')
    assert reply["code"] == "refused" and "'strict'" in str(reply["message"])
    assert controller.sensitivity.level() == store.state.preferences.get("wake.sensitivity", "") == "strict"
    controller.sensitivity.set("balanced", remote=False)  # the device itself may go back
    assert execute(controller, "sensitivity", b'{"request_id": "s2", "level": "strict"}')[
        "level"] == "strict"


@pytest.mark.parametrize(("kind", "body", "undo", "setting", "kept"), [
    ("sensitivity", {"level": "strict"}, ("sensitivity", "balanced"), "wake.sensitivity", "balanced"),
    ("save", {"mode": "nothing"}, ("save", "audio"), "recorder.save", "audio"),
])
def test_a_signed_setting_cannot_be_replayed(state_dir: Path, kind: str, body: dict[str, str],
                                             undo: tuple[str, str], setting: str, kept: str) -> None:
    """An eavesdropper who saw the owner's signed command sends it again after the owner changed
    the setting back on the device: it is refused as a replay within the skew window."""
    store = ClipStore(state_dir)
    controller = controller_with_settings(store)
    signing = Signing(SECRET, 300)
    message = json.dumps(signed(kind, {"request_id": "once", **body})).encode()
    assert execute(controller, kind, message, signing)["type"] == kind
    if undo[0] == "sensitivity":
        assert controller.sensitivity is not None
        controller.sensitivity.set(undo[1], remote=False)
    else:
        controller.set_save(undo[1], remote=False)
    again = execute(controller, kind, message, signing)
    assert again["code"] == "replayed"
    assert store.state.preferences.get(setting, kept) == kept


# -- 8. absurd numbers are bad requests, not internal errors ----------------------------------------


def test_an_absurd_duration_or_timestamp_is_a_bad_request_naming_the_field(state_dir: Path) -> None:
    store = ClipStore(state_dir)
    keep = add_clip(store)
    last = run(store, {"request_id": "l1", "last": "999999d"})
    assert (last["code"], last["request_id"]) == ("bad_request", "l1")
    assert last["message"].startswith("last: ") and "\n" not in last["message"]
    huge = 10**400
    unsigned_ts = run(store, {"request_id": "t1", "all": True, "ts": huge})
    signed_ts = run(store, signed("delete", {"request_id": "t2", "all": True}, ts=huge),
                    signing=Signing(SECRET, 300))
    for reply in (unsigned_ts, signed_ts):
        assert reply["code"] == "bad_request" and reply["message"].startswith("ts: ")
        assert len(reply["message"]) < 200
    assert indexed(store) == {keep}


# -- 6. the shipped broker configuration starts and keeps its promises -------------------------------

SHIPPED_CONF, SHIPPED_ACL = (ROOT / "config" / f"mosquitto-edge-recorder.{ext}" for ext in ("conf", "acl"))
PASSWORDS = {"homeassistant": "ha-password", "speaker": "speaker-password", "guest": "guest-password"}


class ShippedBroker(Broker):
    """mosquitto started on exactly the shipped conf and acl. Only what a test must change is
    changed: the listener's port (and loopback address), the paths of the TLS files, the password
    file and the acl file, and `user root` (mosquitto otherwise drops to its own user, which cannot
    read the test's files). Persistence goes to the working directory, as the conf leaves it."""

    def __init__(self, workdir: Path, tls: dict[str, Path]) -> None:
        self.workdir, self.tls, self.port, self.proc = workdir, tls, free_port(), None
        passwd = workdir / "passwd"
        for i, (user, password) in enumerate(PASSWORDS.items()):
            subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd), user,
                            password], check=True, capture_output=True, timeout=30)
        acl = workdir / "edge-recorder.acl"
        shutil.copyfile(SHIPPED_ACL, acl)
        rewrites = {"listener 8883": f"listener {self.port} 127.0.0.1",
                    "/etc/mosquitto/certs/ca.crt": str(tls["ca"]),
                    "/etc/mosquitto/certs/broker.crt": str(tls["cert"]),
                    "/etc/mosquitto/certs/broker.key": str(tls["key"]),
                    "/etc/mosquitto/passwd": str(passwd),
                    "/etc/mosquitto/edge-recorder.acl": str(acl)}
        text = SHIPPED_CONF.read_text()
        for shipped, here in rewrites.items():
            assert shipped in text, f"the shipped conf no longer has {shipped!r}"
            text = text.replace(shipped, here)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("user root\n" + text)
        self.log = workdir / "mosquitto.log"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], cwd=self.workdir,
                                         stdout=log, stderr=log)
        wait_until(lambda: port_open(self.port) or self.proc.poll() is not None, 10,  # type: ignore[union-attr]
                   "mosquitto did not start")
        assert self.proc.poll() is None, f"mosquitto exited: {self.log.read_text()[-500:]}"


class Watcher:
    """A plain MQTT 3.1.1 client logged in as one user: subscribes (again on every connect) and
    records what arrives."""

    def __init__(self, broker: Broker, user: str | None, topics: list[str],
                 password: str | None = None) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.refused: list[str] = []
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{user}")
        if user:
            c.username_pw_set(user, password or PASSWORDS[user])
        c.tls_set(ca_certs=str(broker.tls["ca"]))
        c.reconnect_delay_set(1, 1)
        c.on_connect = lambda cl, u, f, rc, p: (self.refused.append(str(rc)) if rc.is_failure else
                                                cl.subscribe([(t, 1) for t in topics]) if topics
                                                else None)
        c.on_message = lambda cl, u, m: self.got.append((m.topic, bytes(m.payload)))
        c.connect_async("127.0.0.1", broker.port)
        c.loop_start()
        self.client = c

    def topics(self) -> set[str]:
        return {t for t, _ in self.got}

    def replies(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.got if t == BASE + topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def shipped_broker(tmp_path: Path, tls_material: dict[str, Path]) -> Iterator[ShippedBroker]:
    with ShippedBroker.running(tmp_path / "shipped-broker", tls_material) as b:
        yield b


def speaker_settings(broker: Broker, user: str = "speaker") -> MqttSettings:
    return Settings.model_validate({"mqtt": {
        "host": "127.0.0.1", "port": broker.port, "username": user, "password": PASSWORDS[user],
        "reconnect_min_s": 0.2, "reconnect_max_s": 1.0,
        "tls": {"enabled": True, "ca_file": str(broker.tls["ca"])}}}).mqtt


@pytest.mark.slow
def test_the_shipped_broker_config_starts_and_keeps_its_promises(
    shipped_broker: ShippedBroker, state_dir: Path
) -> None:
    ha = Watcher(shipped_broker, "homeassistant", [BASE + "#", "homeassistant/#"])
    guest = Watcher(shipped_broker, "guest", ["edge-recorder/#", "homeassistant/#"])
    snoop = Watcher(shipped_broker, "speaker", [BASE + "evt/#", BASE + "status"])
    anonymous = Watcher(shipped_broker, None, [])
    speaker = Speaker(state_dir, speaker_settings(shipped_broker))
    try:
        # the speaker works as the user the ACL names: status, discovery, a command and its reply
        doomed, kept = add_clip(speaker.store), add_clip(speaker.store)
        wait_until(lambda: {BASE + "status", f"homeassistant/device/{DEVICE}/config"} <= ha.topics(),
                   WAIT_S, "Home Assistant never saw the speaker's status and discovery")
        ha.client.publish(BASE + "cmd/delete", json.dumps({"request_id": "d1", "ids": [doomed]}), 1)
        wait_until(lambda: BASE + "evt/deleted" in ha.topics(), WAIT_S, "no evt/deleted")
        assert indexed(speaker.store) == {kept}
        # the speaker cannot send itself (or any speaker) commands
        ha.got.clear()
        snoop.client.publish(BASE + "cmd/delete", json.dumps({"request_id": "d2", "all": True}), 1)
        # the size limit: 120,000 bytes pass; 140,000 (over max_packet_size 131072) never arrive
        for size in (120_000, 140_000):
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(shipped_broker.port),
                            "--cafile", str(shipped_broker.tls["ca"]), "-u", "homeassistant", "-P",
                            PASSWORDS["homeassistant"], "-q", "1", "-t", f"{BASE}size/{size}", "-s"],
                           input=b"x" * size, capture_output=True, timeout=30)
        ha.client.publish(BASE + "size/after", b"after", 1)
        wait_until(lambda: BASE + "size/after" in ha.topics(), WAIT_S, "no message after the big one")
        assert {t for t in ha.topics() if "/size/" in t} == {BASE + "size/120000", BASE + "size/after"}
        assert BASE + "cmd/delete" not in ha.topics()
        assert indexed(speaker.store) == {kept}
        # nobody else reads what the speaker says; the speaker reads no events; no anonymous login
        assert guest.got == [] and snoop.got == []  # (mosquitto grants, then filters delivery)
        wait_until(lambda: anonymous.refused, WAIT_S, "an anonymous client was not refused")
        assert not anonymous.client.is_connected()
        # commands wait for a speaker that is off, across a restart of the broker (persistence)
        speaker.close()
        ha.client.publish(BASE + "cmd/delete", json.dumps({"request_id": "d3", "ids": [kept]}),
                          1).wait_for_publish(WAIT_S)  # the broker has it
        shipped_broker.restart()
        speaker = Speaker(state_dir, speaker_settings(shipped_broker))
        wait_until(lambda: not indexed(speaker.store), WAIT_S, "the command sent while away was lost")
    finally:
        speaker.close()
        for watcher in (ha, guest, snoop, anonymous):
            watcher.close()


# -- 5. bounded reads: MQTT 5 Maximum Packet Size, persistent session -------------------------------


def rss_kb(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    assert match, field
    return int(match.group(1))


def publish_with_mosquitto_pub(broker: Broker, topic: str, payload: bytes) -> None:
    subprocess.run(["mosquitto_pub", *broker.client_args(), "-q", "1", "-t", topic, "-s"],
                   input=payload, capture_output=True, timeout=60, check=True)


def test_an_oversized_message_never_reaches_the_speaker_even_without_a_broker_limit(
    broker: Broker, state_dir: Path
) -> None:
    """The test broker has no max_packet_size (mosquitto then takes up to 256 MB). A 37 MB command
    must not reach the speaker's handler nor its memory: this process's peak RSS (the speaker runs
    in it; the sender is mosquitto_pub) stays within a few MB."""
    evt = Watcher(broker, MQTT_USER, [BASE + "evt/#", BASE + "status"], MQTT_PASSWORD)
    speaker = Speaker(state_dir, settings_for(broker))
    try:
        keep = add_clip(speaker.store)
        wait_until(lambda: BASE + "status" in evt.topics(), WAIT_S, "speaker never came online")
        huge = json.dumps({"request_id": "huge", "ids": ["a" * 32] * 1_000_000}).encode()
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS
        before_kb = rss_kb("VmRSS")
        publish_with_mosquitto_pub(broker, BASE + "cmd/delete", huge)
        publish_with_mosquitto_pub(broker, BASE + "cmd/delete",
                                   json.dumps({"request_id": "after", "ids": [keep]}).encode())
        wait_until(lambda: evt.replies("evt/deleted"), WAIT_S, "the next command was not served")
        growth_mb = (rss_kb("VmHWM") - before_kb) / 1024
        assert evt.replies("evt/error") == []  # the handler never saw it (it would say too_large)
        assert growth_mb < 8, f"peak RSS grew by {growth_mb:.0f} MB for a {len(huge) >> 20} MB message"
        assert "Dropping too large outgoing PUBLISH" in (broker.workdir / "mosquitto.log").read_text()
    finally:
        speaker.close()
        evt.close()


@pytest.mark.parametrize("request_kind", ["upload", "remote delete"])
def test_a_reply_that_never_ends_is_cut_off_after_a_few_kilobytes(
    state_dir: Path, https_server: UploadServer, tls_material: dict[str, Path], request_kind: str
) -> None:
    """The server answers 200 and then sends a body without end (a 1 TB Content-Length). The
    speaker takes the status, reads at most 64 KiB of the body and hangs up: done on the first
    request, and the server could write only a little before the connection was gone (read in
    full, the reply would be cut by the 3 s deadline, the request retried, and memory would grow
    with every byte)."""
    store = ClipStore(state_dir)
    consent.grant(store, ("audio",))
    running = Running(store, upload_settings(https_server, tls_material, timeout_s=3.0))
    try:
        if request_kind == "upload":
            https_server.script.append("endless")
        clip = record(store)
        wait_until(lambda: running.of("uploaded"), WAIT_S, "not uploaded")
        if request_kind == "remote delete":
            https_server.script.append("endless")
            store.delete(ids=[clip], request_id="gone")
            wait_until(lambda: [e for e in running.events if e["type"] == "deleted"
                                and e["remote"]["status"] == "confirmed"], WAIT_S, "not confirmed")
        method = "POST" if request_kind == "upload" else "DELETE"
        assert [r.method for r in https_server.requests].count(method) == 1  # the first did it
        assert https_server.reply_bytes < 1 << 20, f"{https_server.reply_bytes} bytes written"
    finally:
        running.close()


# -- 4. rate limits after authentication: a flood never costs the owner a command -------------------


class Flood:
    """Another client on the broker publishing `payloads` (QoS 1) at `per_s` on cmd topics, from
    a thread, as fast as a real flood would (not all at once). It hangs up only once the broker
    has every message: paho has at most 20 unacknowledged and holds the rest back, and a
    disconnect drops what it still holds."""

    def __init__(self, broker: Broker, payloads: list[tuple[str, bytes]], per_s: float) -> None:
        self.sent = 0
        self._published: list[mqtt.MQTTMessageInfo] = []
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-flood")
        c.username_pw_set(MQTT_USER, MQTT_PASSWORD)
        c.tls_set(ca_certs=str(broker.tls["ca"]))
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        wait_until(c.is_connected, WAIT_S, "the flood could not connect")
        self.client, self._payloads, self._per_s = c, payloads, per_s
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        for i, (command, payload) in enumerate(self._payloads):
            time.sleep(max(0.0, start + i / self._per_s - time.monotonic()))
            self._published.append(self.client.publish(BASE + f"cmd/{command}", payload, qos=1))
            self.sent += 1

    def join(self) -> None:
        self._thread.join(timeout=60)
        for info in self._published:
            info.wait_for_publish(WAIT_S)
        self.client.disconnect()
        self.client.loop_stop()


def junk(n: int, signing: bool) -> list[tuple[str, bytes]]:
    """What anyone who can publish can send that is not a valid command: not JSON, unknown keys,
    wrong types, unknown commands; with signing also unsigned and badly signed deletes."""
    forms = [("delete", b'{not json %d'), ("delete", b'{"request_id": "junk-%d", "everything": 1}'),
             ("delete", b'{"request_id": "junk-%d", "ids": "nope"}'), ("reboot", b'{"n": %d}')]
    if signing:
        forms += [("delete", b'{"request_id": "junk-%d", "all": true}'),
                  ("delete", b'{"request_id": "junk-%d", "all": true, "ts": 1, "nonce": '
                             b'"abcdefgh", "sig": "00"}')]
    return [(forms[i % len(forms)][0], forms[i % len(forms)][1] % i) for i in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("signing", [True, False], ids=["signed", "unsigned"])
def test_a_junk_flood_never_costs_the_owner_a_delete(
    broker: Broker, owner: Owner, tmp_path: Path, signing: bool  # noqa: F811
) -> None:
    """150 junk messages a second for 2 s; the owner's delete in the middle of it runs (it was
    refused as rate_limited, acknowledged, and the clip stayed). Junk is answered only up to its
    own rate, with one rate_limited notice, not echoed message for message."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET.decode())
    extra = f'[mqtt.signing]\nsecret_file = "{secret}"\n' if signing else ""
    toml = broker.config_toml() + extra
    speaker = Speaker(tmp_path / "state", Settings.model_validate(tomllib.loads(toml)).mqtt)
    try:
        doomed, kept = add_clip(speaker.store), add_clip(speaker.store)
        wait_until(lambda: owner.replies("status"), WAIT_S, "speaker never came online")
        flood = Flood(broker, junk(300, signing), per_s=150)
        time.sleep(1.2)  # 180 junk messages in: far past any burst allowance
        body = {"request_id": "owner-1", "ids": [doomed]}
        owner.send("delete", signed("delete", body) if signing else body)
        flood.join()
        assert owner.reply("evt/deleted", "owner-1")["ids"] == [doomed]
        assert indexed(speaker.store) == on_disk(speaker.store) == {kept}
        wait_until(lambda: speaker.control._inbox.empty(), WAIT_S, "the flood was not worked off")
        errors = owner.replies("evt/error")
        assert not [e for e in errors if e["request_id"] == "owner-1"]
        assert [e["request_id"] for e in errors if e["code"] == "rate_limited"] == [None]
        assert len(errors) < flood.sent / 4, f"{len(errors)} replies to {flood.sent} junk messages"
    finally:
        speaker.close()


@pytest.mark.slow
def test_a_flood_of_valid_commands_is_paced_and_each_one_is_done_before_its_ack(
    broker: Broker, owner: Owner, state_dir: Path, request: pytest.FixtureRequest  # noqa: F811
) -> None:
    """Without signing, whoever the broker lets publish is authenticated. 150 valid mute commands
    at 150 a second, and the owner's delete after 135 of them: none is refused; beyond 20 a second
    they wait their turn unacknowledged (the broker holds the rest), and each is answered once it
    is done (they were refused as rate_limited and acknowledged, the delete too)."""
    speaker = Speaker(state_dir, settings_for(broker))
    request.addfinalizer(speaker.close)
    doomed = add_clip(speaker.store)
    wait_until(lambda: owner.replies("status"), WAIT_S, "speaker never came online")
    mutes = [("mute", json.dumps({"request_id": f"m{i}", "muted": i % 2 == 0}).encode())
             for i in range(150)]
    started = time.monotonic()
    flood = Flood(broker, mutes, per_s=150)
    time.sleep(0.9)
    owner.send("delete", {"request_id": "owner-1", "ids": [doomed]})
    flood.join()
    assert owner.reply("evt/deleted", "owner-1")["ids"] == [doomed]
    assert doomed not in indexed(speaker.store) | on_disk(speaker.store)
    wait_until(lambda: len(owner.replies("evt/mute")) == 150, WAIT_S, "mute commands went unanswered")
    took_s = time.monotonic() - started
    assert owner.replies("evt/error") == []
    assert sorted(int(r["request_id"][1:]) for r in owner.replies("evt/mute")) == list(range(150))
    assert took_s >= (151 - 100) / 20 * 0.9, f"{took_s:.1f} s: not paced"
