"""Home Assistant MQTT device discovery: one payload that makes the speaker appear as one device.

Pure data: the payload is built from settings and topics and published by device/integrations/mqtt.py on
connect and whenever Home Assistant announces itself (`<prefix>/status` = `online`). The device
block carries the random device id only: no serial number, no MAC, no host name (P2).

Every entity reads the retained `status` topic (republished after every change) or an event topic;
whether the speaker is there at all is the retained `availability` topic (`online` on connect,
`offline` on a clean stop and as the broker's last will), so a disconnect never puts anything but
state where the entities' templates read. Every command entity sends a command that can only reduce
what is kept or sent (P5), with a request id made by Home Assistant's template at each press
(`ha-<timestamp>`), so a second press is a new command, never a replay of the first.
"""

from __future__ import annotations

import re
from typing import Any

from device import __version__
from device.control.save_mode import SAVE_MODES
from device.core.config import SENSITIVITY_LEVELS, VOICE_COMMANDS, MqttSettings

PRESS_ID = "ha-{{ now().timestamp() }}"
"""A request id per press: Home Assistant renders it when the button is pressed."""
AVAILABILITY = "availability"
"""<prefix>/<device id>/availability, retained: ONLINE (the birth) or OFFLINE (a clean stop or the
last will). Home Assistant's default availability payloads."""
ONLINE, OFFLINE = "online", "offline"


def discovery_topic(settings: MqttSettings, device_id: str) -> str:
    return f"{settings.discovery_prefix}/device/{device_id}/config"


class _Entities:
    """Builds the discovery components of the speaker at topic `base`."""

    def __init__(self, base: str) -> None:
        self.base, self.status = base, f"{base}status"

    def sensor(self, name: str, template: str, **extra: Any) -> dict[str, Any]:
        return {"p": "sensor", "name": name, "stat_t": self.status, "val_tpl": template, **extra}

    def binary(self, name: str, condition: str, **extra: Any) -> dict[str, Any]:
        return {"p": "binary_sensor", "name": name, "stat_t": self.status,
                "val_tpl": "{{ 'ON' if " + condition + " else 'OFF' }}", **extra}

    def daily(self, name: str, counter: str, **extra: Any) -> dict[str, Any]:
        """A count since the device's local midnight: `total` with `last_reset` at that midnight,
        so Home Assistant's long-term sum keeps counting across the daily reset."""
        return self.sensor(name, "{{ value_json.today." + counter + " | default(0) }}",
                           stat_cla="total", lrst_val_tpl="{{ value_json.today.since }}", **extra)

    def button(self, name: str, command: str, body: str, **extra: Any) -> dict[str, Any]:
        return {"p": "button", "name": name, "cmd_t": f"{self.base}cmd/{command}",
                "cmd_tpl": '{"request_id": "' + PRESS_ID + '", ' + body + "}", **extra}

    def select(self, name: str, template: str, options: list[str], command: str, field: str,
               **extra: Any) -> dict[str, Any]:
        return {"p": "select", "name": name, "stat_t": self.status, "val_tpl": template,
                "options": options, "cmd_t": f"{self.base}cmd/{command}",
                "cmd_tpl": '{"request_id": "' + PRESS_ID + '", "' + field + '": "{{ value }}"}',
                "ent_cat": "config", **extra}

    def event(self, name: str, kind: str, types: list[str], template: str) -> dict[str, Any]:
        return {"p": "event", "name": name, "stat_t": f"{self.base}evt/{kind}", "evt_typ": types,
                "val_tpl": template}


def _state_entities(e: _Entities) -> dict[str, dict[str, Any]]:
    """What Home Assistant shows: the light, the mutes, what is kept, today's counts, consent."""
    return {
        "recording": e.binary("Recording", "value_json.recording", ic="mdi:record-rec"),
        "muted": {"p": "switch", "name": "Muted", "stat_t": e.status, "cmd_t": f"{e.base}cmd/mute",
                  "val_tpl": "{{ 'ON' if value_json.muted.software else 'OFF' }}",
                  "cmd_tpl": '{"request_id": "' + PRESS_ID + '", "muted": '
                             "{{ 'true' if value == 'ON' else 'false' }}}",
                  "ic": "mdi:microphone-off"},
        "hardware_mute": e.binary("Hardware mute", "value_json.muted.hardware",
                                  ic="mdi:microphone-off"),
        "clips": e.sensor("Clips stored", "{{ value_json.clips }}", stat_cla="measurement",
                          ic="mdi:file-music"),
        "storage": e.sensor("Storage used", "{{ value_json.bytes_used }}", unit_of_meas="B",
                            dev_cla="data_size", stat_cla="measurement"),
        "waiting": e.sensor("Waiting to upload", "{{ value_json.waiting_uploads }}",
                            stat_cla="measurement", ic="mdi:cloud-upload"),
        "wakes_today": e.daily("Wakes today", "wakes", ic="mdi:account-voice"),
        "false_wakes_today": e.daily("False wakes today", "false_wakes", ic="mdi:account-voice-off"),
        "upload_consent": e.binary("Upload consent", "value_json.consent.state == 'on'",
                                   ic="mdi:handshake"),
    }


def _command_entities(e: _Entities, wake_words: list[str]) -> dict[str, dict[str, Any]]:
    """What Home Assistant can do (only ever less is kept or sent, P5), and the events it hears."""
    return {
        "revoke_consent": e.button("Revoke consent", "consent", '"action": "revoke"', ic="mdi:cancel"),
        "delete_last": e.button("Delete last clip", "delete", '"newest": 1', ic="mdi:delete"),
        "delete_hour": e.button("Delete the last hour", "delete", '"last": "1h"',
                                ic="mdi:delete-clock"),
        "delete_today": e.button("Delete today's clips", "delete", '"today": true',
                                 ic="mdi:delete-sweep"),
        "delete_all": e.button("Delete all clips", "delete", '"all": true', ic="mdi:delete-forever"),
        "wake": e.event("Wake", "wake", wake_words,
                        '{"event_type": "{{ value_json.wake_word }}", "score": {{ value_json.score }}}'),
        "sensitivity": e.select("Sensitivity", "{{ value_json.sensitivity }}",
                                list(SENSITIVITY_LEVELS), "sensitivity", "level", ic="mdi:tune"),
        "save": e.select("Save", "{{ value_json.save.mode }}", list(SAVE_MODES), "save", "mode",
                         ic="mdi:content-save-off"),
        "pause_saving": e.button("Save nothing for an hour", "save", '"mode": "nothing", "for": "1h"',
                                 ic="mdi:timer-off"),
        "voice": e.event("Voice command", "voice", list(VOICE_COMMANDS),
                         '{"event_type": "{{ value_json.command }}"}'),
    }


def discovery_payload(settings: MqttSettings, device_id: str, base: str,
                      wake_words: list[str]) -> dict[str, Any]:
    """The device-based discovery payload (`dev`, `o`, `cmps`) for the speaker at topic `base`."""
    uid, e = f"edge_recorder_{device_id}", _Entities(base)
    cmps = {**_state_entities(e), **_command_entities(e, wake_words)}
    if settings.publish_transcripts:
        cmps["transcript"] = {"p": "sensor", "name": "Last transcript", "stat_t": f"{base}evt/clip",
                              "val_tpl": "{{ value_json.transcript }}", "ic": "mdi:text"}
    for key, component in cmps.items():
        component["unique_id"] = f"{uid}_{key}"
    return {
        "dev": {"ids": [uid], "name": f"edge-recorder {device_id}", "mf": "edge-recorder",
                "mdl": "privacy-first voice front end", "sw": __version__},
        "o": {"name": "edge-recorder", "sw": __version__},
        "avty_t": f"{base}{AVAILABILITY}",
        "qos": 1,
        "cmps": cmps,
    }


def status_paths(payload: dict[str, Any], status_topic: str) -> set[tuple[str, ...]]:
    """Every `value_json` path that an entity's template reads from the status topic. The status
    must always carry each one: a missing one is an error line in Home Assistant's log."""
    paths = set()
    for c in payload["cmps"].values():
        if c.get("stat_t") == status_topic:
            for template in (c.get("val_tpl", ""), c.get("lrst_val_tpl", "")):
                for m in re.finditer(r"value_json((?:\.\w+)+)", template):
                    paths.add(tuple(m.group(1).lstrip(".").split(".")))
    return paths


def renders(status: Any, paths: set[tuple[str, ...]]) -> bool:
    """Whether every template could render this status (a parsed status payload)."""
    for path in paths:
        node = status
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return False
            node = node[key]
    return True
