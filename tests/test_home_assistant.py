"""Home Assistant sees the speaker (issue 14), through a real mosquitto: device discovery, the birth
message, fresh status, buttons that work on every press, and events. scripts/test-home-assistant
checks the same against a real Home Assistant."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import tomllib
from collections.abc import Iterator
from datetime import timedelta
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
from device.storage.clips import ClipStore
from tests.conftest import Broker, wait_until
from tests.test_commands import add_clip, indexed
from tests.test_mqtt import (
    BASE,
    DEVICE,
    Owner,
    owner,  # noqa: F401  (the fixture)
)

WAIT_S = 20
DISCOVERY = f"homeassistant/device/{DEVICE}/config"


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
    yield {"factory": factory, "state_dir": state_dir}
    stop.set()
    thread.join(timeout=30)
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
    wait_until(lambda: last_status(owner).get("online"), WAIT_S, "no status")
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
    assert status["online"] is True and status["sensitivity"] == "balanced"
    assert re.fullmatch(r"\d+", str(status["bytes_used"]))


def test_wake_indicator_and_discarded_events_reach_mqtt(
    with_models: Path, broker: Broker, owner: Owner, state_dir: Path, tmp_path: Path,  # noqa: F811
    speech: Any,
) -> None:
    from tests.conftest import run_cli

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
