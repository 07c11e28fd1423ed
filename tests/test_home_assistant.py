"""Home Assistant sees the speaker (issue 14), through a real mosquitto: device discovery, the birth
message, fresh status, buttons that work on every press, and events; availability on its own topic,
so a killed, frozen or stopped speaker never puts anything but state where the entities' templates
read (issue 24). scripts/test-home-assistant checks the same against a real Home Assistant."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from device.app import run_pipeline
from device.control.commands import Controller, parse
from device.control.mute import MuteState
from device.control.save_mode import SaveState
from device.core.config import Settings
from device.core.errors import CommandError
from device.core.events import EventSink
from device.core.frames import Frame
from device.integrations import ha
from device.storage.clips import ClipStore
from tests.helpers import ENTRY_POINT, Broker, add_clip, indexed, run_cli, wait_until
from tests.test_mqtt import (
    BASE,
    DEVICE,
    Owner,
    owner,  # noqa: F401  (the fixture)
)

WAIT_S = 20
DISCOVERY = f"homeassistant/device/{DEVICE}/config"
AVAILABILITY = "availability"


class QuietMic:
    """An endless silent input, as a speaker in a quiet room hears."""

    overflows = 0

    def __init__(self) -> None:
        self.at = 0

    def frames(self, stop: Any) -> Iterator[Frame]:
        while not stop.is_set():
            self.at += 1280
            time.sleep(0.01)
            yield Frame(self.at - 1280, np.zeros(1280, dtype=np.int16))

    def clock(self) -> int:
        return self.at

    def close(self) -> None:
        pass


@pytest.fixture
def daemon(with_models: Path, broker: Broker, state_dir: Path) -> Iterator[dict[str, Any]]:
    """The whole pipeline with the control plane, as `run` wires it, on a quiet input."""
    state_dir.mkdir(mode=0o700)
    (state_dir / "device_id").write_text(DEVICE)
    toml = broker.config_toml() + "\n"
    settings = Settings.model_validate({
        **tomllib.loads(toml),
        "mute": {"button_pin": "GPIO27"},
        "retention": {"max_age": "7d", "sweep_interval_s": 0.5},
        "asr": {"enabled": False},
    })
    factory, stop = MockFactory(), threading.Event()
    sink = EventSink()
    thread = threading.Thread(target=run_pipeline, args=(settings, state_dir, QuietMic, sink, factory,
                                                         stop), kwargs={"control_plane": True})
    thread.start()

    def stop_daemon() -> None:
        stop.set()
        thread.join(timeout=30)

    yield {"factory": factory, "state_dir": state_dir, "stop": stop_daemon}
    stop_daemon()
    sink.close()


def discovery(owner: Owner) -> dict[str, Any]:  # noqa: F811
    wait_until(lambda: owner.replies_on(DISCOVERY), WAIT_S, "no discovery payload")
    payload = owner.replies_on(DISCOVERY)[-1]
    assert isinstance(payload, dict), payload
    return payload


def test_the_speaker_announces_itself_as_one_device_with_nothing_that_identifies_you(
    daemon: dict[str, Any], owner: Owner  # noqa: F811
) -> None:
    payload = discovery(owner)
    assert set(payload) >= {"dev", "o", "cmps", "avty_t"}
    assert payload["dev"]["ids"] == [f"edge_recorder_{DEVICE}"]
    assert set(payload["dev"]) == {"ids", "name", "mf", "mdl", "sw"}  # no serial, no connections
    text = json.dumps(payload).lower()
    for canary in {socket.gethostname(), socket.getfqdn()} | macs():
        if len(canary) >= 6:
            assert canary.lower() not in text, canary
    cmps = payload["cmps"]
    assert {c["p"] for c in cmps.values()} >= {"binary_sensor", "switch", "sensor", "button",
                                               "event", "select"}
    assert all(c["unique_id"].startswith(f"edge_recorder_{DEVICE}_") for c in cmps.values())
    assert cmps["wake"]["evt_typ"] == ["hey_jarvis"]
    assert "transcript" not in cmps  # only with publish_transcripts


def macs() -> set[str]:
    found = set()
    for iface in Path("/sys/class/net").glob("*/address"):
        mac = iface.read_text().strip()
        if mac and mac != "00:00:00:00:00:00":
            found |= {mac, mac.replace(":", "")}
    return found


def render(template: str, value: str = "ON") -> bytes:
    """What Home Assistant sends for a press: its template, with a fresh press id."""
    out = template.replace("{{ now().timestamp() }}", f"{time.time():.6f}")
    out = out.replace("{{ 'true' if value == 'ON' else 'false' }}",
                      "true" if value == "ON" else "false").replace("{{ value }}", value)
    assert "{{" not in out, out
    return out.encode()


def test_nothing_in_discovery_can_widen_what_is_kept_or_sent(
    daemon: dict[str, Any], owner: Owner, state_dir: Path  # noqa: F811
) -> None:
    cmps = discovery(owner)["cmps"]
    commands = {k: c for k, c in cmps.items() if "cmd_t" in c}
    assert {c["cmd_t"].removeprefix(BASE) for c in commands.values()} == {
        "cmd/mute", "cmd/consent", "cmd/delete", "cmd/sensitivity", "cmd/save"}
    store = ClipStore(state_dir)
    for key, c in commands.items():
        for value in ("ON", "OFF", "strict", "balanced", "audio"):
            if key != "sensitivity" and value in ("strict", "balanced"):
                continue
            if key in ("sensitivity", "save") and value in ("ON", "OFF"):
                continue
            if key != "save" and value == "audio":
                continue
            command = parse(c["cmd_t"].removeprefix(BASE + "cmd/"), render(c["cmd_tpl"], value),
                            None, store)
            body = command.model_dump(by_alias=True, exclude_none=True)
            assert body.get("action", "revoke") == "revoke"  # consent: revoke only
            assert body.get("level", "strict") in ("strict", "balanced")  # never more sensitive
            if key == "save":  # Home Assistant may ask for more; the device refuses it remotely
                save = SaveState("audio", store.state.preferences.get, store.state.preferences.set)
                save.set("nothing", remote=True)
                with pytest.raises(CommandError, match="only be reduced"):
                    Controller(store, MuteState(), save=save).execute(command)


def test_discovery_is_published_again_when_home_assistant_starts(
    daemon: dict[str, Any], owner: Owner  # noqa: F811
) -> None:
    discovery(owner)
    before = len(owner.replies_on(DISCOVERY))
    owner.client.publish("homeassistant/status", b"online", qos=1)
    wait_until(lambda: len(owner.replies_on(DISCOVERY)) > before, WAIT_S, "not republished")


def test_delete_buttons_delete_on_every_press(daemon: dict[str, Any], owner: Owner,  # noqa: F811
                                              state_dir: Path) -> None:
    cmps = discovery(owner)["cmps"]
    store = ClipStore(state_dir)
    older, newer = add_clip(store, timedelta(minutes=2)), add_clip(store, timedelta(minutes=1))
    newest_first = [newer, older]
    button = cmps["delete_last"]
    for expected in newest_first:  # two presses, two clips: each press is a new command
        payload = render(button["cmd_tpl"])
        rid = json.loads(payload)["request_id"]
        owner.client.publish(button["cmd_t"], payload, qos=1)
        assert owner.reply("evt/deleted", rid)["ids"] == [expected]
        time.sleep(0.01)
    assert indexed(store) == set()


def last_status(owner: Owner) -> dict[str, Any]:  # noqa: F811
    seen = owner.replies_on("status")
    return seen[-1] if seen and isinstance(seen[-1], dict) else {}


def test_status_stays_true_after_a_sweep_and_a_hardware_mute_press(
    daemon: dict[str, Any], owner: Owner, state_dir: Path  # noqa: F811
) -> None:
    wait_until(lambda: last_status(owner), WAIT_S, "no status")
    store = ClipStore(state_dir)
    add_clip(store, timedelta(days=30))  # too old: the next sweep takes it
    wait_until(lambda: owner.replies("evt/deleted"), WAIT_S, "no sweep")
    assert owner.replies("evt/deleted")[0]["reason"] == "retention"
    wait_until(lambda: last_status(owner).get("clips") == 0, WAIT_S, "the sweep left the count stale")
    button = daemon["factory"].pin("GPIO27")
    button.drive_low()
    button.drive_high()
    wait_until(lambda: last_status(owner).get("muted", {}).get("hardware") is True, WAIT_S,
               "the hardware mute did not reach the status")
    status = last_status(owner)
    assert status["sensitivity"] == "balanced"
    assert re.fullmatch(r"\d+", str(status["bytes_used"]))


def test_wake_indicator_and_discarded_events_reach_mqtt(
    with_models: Path, broker: Broker, owner: Owner, state_dir: Path, tmp_path: Path,  # noqa: F811
    speech: Any,
) -> None:
    from tests.helpers import run_cli

    state_dir.mkdir(mode=0o700)
    (state_dir / "device_id").write_text(DEVICE)
    cfg = tmp_path / "c.toml"
    cfg.write_text(broker.config_toml())
    proc = run_cli("simulate", str(speech("hey jarvis", tail_s=4.0)), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    wait_until(lambda: owner.replies("evt/discarded"), WAIT_S, "no evt/discarded")
    assert owner.replies("evt/wake")[0]["wake_word"] == "hey_jarvis"
    assert [e["state"] for e in owner.replies("evt/indicator")] == ["recording", "idle"]
    assert owner.replies("evt/discarded")[0]["reason"] == "no_speech"


# -- availability: its own topic, so the status topic carries state and nothing else (issue 24) --

def not_whole_state(owner: Owner, discovery_payload: dict[str, Any]) -> list[Any]:  # noqa: F811
    """The payloads on the status topic that some entity's template could not render."""
    paths = ha.status_paths(discovery_payload, BASE + "status")
    assert len(paths) >= 10, paths
    return [s for s in owner.replies_on("status") if not ha.renders(s, paths)]


def availability(owner: Owner) -> list[bytes]:  # noqa: F811
    return list(owner.replies_on(AVAILABILITY))


def test_discovery_reads_availability_from_its_own_topic_announced_before_the_device(
    daemon: dict[str, Any], owner: Owner  # noqa: F811
) -> None:
    payload = discovery(owner)
    assert payload["avty_t"] == BASE + AVAILABILITY
    assert not {"avty_tpl", "pl_avail", "pl_not_avail"} & set(payload)  # the defaults: online/offline
    with owner._lock:
        order = [t for t, _ in owner.messages if t in (AVAILABILITY, DISCOVERY)]
    assert order[:2] == [AVAILABILITY, DISCOVERY]  # the birth first: no unavailable flash
    assert availability(owner) == [b"online"]
    owner.client.publish("homeassistant/status", b"online", qos=1)  # Home Assistant restarted
    wait_until(lambda: len(availability(owner)) == 2, WAIT_S, "no birth after Home Assistant's")
    assert availability(owner) == [b"online", b"online"]


def test_a_clean_stop_says_offline_and_leaves_whole_state_on_the_status_topic(
    daemon: dict[str, Any], owner: Owner  # noqa: F811
) -> None:
    payload = discovery(owner)
    wait_until(lambda: last_status(owner), WAIT_S, "no status")
    daemon["stop"]()
    wait_until(lambda: availability(owner)[-1:] == [b"offline"], WAIT_S, "no offline on a clean stop")
    assert availability(owner) == [b"online", b"offline"]
    assert owner.replies_on("status") and not not_whole_state(owner, payload)


def test_the_daily_counters_start_a_new_cycle_at_the_devices_midnight(
    daemon: dict[str, Any], owner: Owner, state_dir: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    cmps = discovery(owner)["cmps"]
    for key in ("wakes_today", "false_wakes_today"):  # a sum that survives the daily reset
        assert cmps[key]["stat_cla"] == "total"
        assert cmps[key]["lrst_val_tpl"] == "{{ value_json.today.since }}"
    try:
        with monkeypatch.context() as clock:  # the device's clock (its time zone), moved below
            clock.setenv("TZ", "UTC0")
            time.tzset()
            ClipStore(state_dir).state.stats.add({"wakes": 3, "discarded_no_speech": 1})
            owner.send("mute", {"request_id": "m1", "muted": True})  # republishes the status
            wait_until(lambda: last_status(owner).get("today", {}).get("wakes") == 3, WAIT_S,
                       "no count")
            before = last_status(owner)["today"]
            assert before["false_wakes"] == 1
            assert datetime.fromisoformat(before["since"]) == datetime.combine(
                date.today(), datetime.min.time(), UTC)
            # The device's clock passes midnight: a minute into tomorrow (a zone further east).
            utc = datetime.now(UTC).replace(tzinfo=None)
            east = datetime.combine(utc.date() + timedelta(days=1), datetime.min.time()) - utc
            hours, rest = divmod(int(east.total_seconds()) + 60, 3600)
            clock.setenv("TZ", f"XXX-{hours:02d}:{rest // 60:02d}")
            time.tzset()
            assert date.today() == utc.date() + timedelta(days=1)
            owner.send("mute", {"request_id": "m2", "muted": False})
            wait_until(lambda: last_status(owner)["today"]["wakes"] == 0, WAIT_S, "no reset")
            after = last_status(owner)["today"]
            assert after["false_wakes"] == 0
            assert datetime.fromisoformat(after["since"]) > datetime.fromisoformat(before["since"])
    finally:
        time.tzset()  # back to the test run's own zone


def quiet_wav(path: Path, seconds: float) -> Path:
    import soundfile

    soundfile.write(str(path), np.zeros(int(seconds * 16000), dtype=np.int16), 16000,
                    subtype="PCM_16")
    return path


@pytest.mark.slow
def test_a_killed_speaker_is_offline_by_its_will_and_the_status_keeps_whole_state(
    with_models: Path, broker: Broker, owner: Owner, state_dir: Path, tmp_path: Path  # noqa: F811
) -> None:
    """SIGKILL of the real daemon: the broker publishes the will on the availability topic, and
    nothing but state ever lands on the status topic; a restart announces itself again (birth),
    and a clean stop (SIGTERM) says offline itself."""
    state_dir.mkdir(mode=0o700)
    (state_dir / "device_id").write_text(DEVICE)
    cfg = tmp_path / "c.toml"
    cfg.write_text(broker.config_toml())
    quiet = quiet_wav(tmp_path / "quiet.wav", 120)
    start: Callable[[], subprocess.Popen[str]] = lambda: subprocess.Popen(  # noqa: E731
        [str(ENTRY_POINT), "simulate", str(quiet), "--realtime", "--config", str(cfg)],
        env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc = start()
    try:
        wait_until(lambda: availability(owner) == [b"online"] and owner.replies_on("status"),
                   60, "the daemon did not come online")
        payload = discovery(owner)
        proc.kill()
        proc.wait(timeout=30)
        wait_until(lambda: availability(owner) == [b"online", b"offline"], WAIT_S, "no last will")
        assert not not_whole_state(owner, payload)

        proc = start()
        wait_until(lambda: len(availability(owner)) == 3, 60, "no birth after the restart")
        assert availability(owner)[-1] == b"online"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        wait_until(lambda: len(availability(owner)) == 4, WAIT_S, "no offline on a clean stop")
        assert availability(owner) == [b"online", b"offline", b"online", b"offline"]
        assert len(owner.replies_on("status")) >= 2 and not not_whole_state(owner, payload)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def retained(broker: Broker, topic: str) -> list[str]:
    out = subprocess.run(["mosquitto_sub", *broker.client_args(), "-t", topic, "-v",
                          "--retained-only", "-W", "1"], capture_output=True, text=True, timeout=20)
    return out.stdout.splitlines()


@pytest.mark.slow
def test_mqtt_forget_clears_discovery_status_and_availability(
    daemon: dict[str, Any], owner: Owner, broker: Broker, tmp_path: Path  # noqa: F811
) -> None:
    discovery(owner)
    wait_until(lambda: last_status(owner), WAIT_S, "no status")
    daemon["stop"]()
    assert {line.split()[0] for line in retained(broker, "#")} == {
        DISCOVERY, BASE + "status", BASE + AVAILABILITY}
    cfg = tmp_path / "forget.toml"
    cfg.write_text(broker.config_toml())
    proc = run_cli("mqtt", "forget", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert retained(broker, "#") == []


def test_the_shipped_acl_lets_the_speaker_say_online_and_offline(
    tmp_path: Path, tls_material: dict[str, Path], state_dir: Path
) -> None:
    """The example ACL (config/mosquitto-edge-recorder.acl) allows the availability topic: mosquitto
    checks a will's topic at connect, so without it the speaker could not even log in."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from tests.test_mqtt import Speaker, settings_for

    workdir = tmp_path / "acl-broker"
    workdir.mkdir()
    broker = Broker(workdir, tls_material)
    subprocess.run(["mosquitto_passwd", "-b", str(workdir / "passwd"), "homeassistant", "ha-pw"],
                   check=True, capture_output=True, timeout=30)
    acl = Path(__file__).resolve().parent.parent / "config" / "mosquitto-edge-recorder.acl"
    broker.conf.write_text(broker.conf.read_text() + f"acl_file {acl}\n")
    broker.start()
    seen: list[tuple[str, bytes]] = []
    ha_client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="acl-ha")
    ha_client.username_pw_set("homeassistant", "ha-pw")
    ha_client.tls_set(ca_certs=str(tls_material["ca"]))
    ha_client.on_connect = lambda c, *_: c.subscribe("edge-recorder/#", qos=1)
    ha_client.on_message = lambda c, u, m: seen.append((m.topic.removeprefix(BASE), m.payload))
    ha_client.connect("127.0.0.1", broker.port)
    ha_client.loop_start()
    try:
        speaker = Speaker(state_dir, settings_for(broker))
        wait_until(lambda: ("availability", b"online") in seen
                   and any(t == "status" for t, _ in seen), WAIT_S, f"not online: {seen}")
        speaker.close()
        wait_until(lambda: seen[-1] == ("availability", b"offline"), WAIT_S, "no offline")
    finally:
        ha_client.disconnect()
        ha_client.loop_stop()
        broker.stop()
