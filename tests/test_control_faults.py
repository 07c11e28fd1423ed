"""The control plane on a bad day (issue 24, items 4-8): a flooded broker, huge messages and replies,
the shipped broker configuration, remote sensitivity and replayed settings, absurd numbers. Each
test injects the fault with real parts (mosquitto, the loopback HTTPS server, SQLite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device.control.commands import Controller, Signing, parse
from device.control.mute import MuteState
from device.control.save_mode import SaveState
from device.control.sensitivity import SensitivityState
from device.core.config import WakeSettings
from device.core.errors import CommandError
from device.storage.clips import ClipStore
from tests.test_commands import SECRET, add_clip, indexed, run, signed

# -- 7. remote sensitivity and replayed settings ----------------------------------------------------


def controller_with_settings(store: ClipStore) -> Controller:
    sensitivity = SensitivityState(WakeSettings(sensitivity="balanced"), store.setting,
                                   store.set_setting)
    save = SaveState("audio", store.setting, store.set_setting)
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
    assert controller.sensitivity.level() == store.setting("wake.sensitivity", "") == "strict"
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
    assert store.setting(setting, kept) == kept


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
