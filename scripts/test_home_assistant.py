"""Check edge-recorder against a real Home Assistant (issue 14). Not part of the test suite.

    sudo scripts/test-home-assistant

Starts (or reuses) mosquitto and Home Assistant with the MQTT integration using the team's recipe
(HA_RECIPES, default ../shared/recipes: ha-up.sh), then runs edge-recorder with discovery on and
checks through Home Assistant's own REST API that the device and its entities appear with the
right states, that pressing "Delete last clip" twice deletes two clips, that the recording sensor
turns on and off around a simulated wake, that the wake event fires, that the mute switch mutes,
and that Home Assistant's log holds no discovery error. Prints a table and one JSON line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECIPES = Path(os.environ.get("HA_RECIPES", ROOT.parent / "shared" / "recipes"))
HA_BASE = Path(os.environ.get("HA_BASE", "/tmp/ha"))
URL = f"http://127.0.0.1:{os.environ.get('HA_PORT', '8123')}"
MQTT_PORT = int(os.environ.get("MQTT_PORT", "1883"))
CLI = [str(ROOT / ".venv" / "bin" / "edge-recorder")]


class HomeAssistant:
    def __init__(self, token: str) -> None:
        self.token = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(f"{URL}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=20) as resp:
            return json.loads(resp.read() or b"null")

    def state(self, entity: str) -> dict[str, Any]:
        try:
            return dict(self.call("GET", f"/api/states/{entity}"))
        except urllib.error.HTTPError:
            return {"state": "missing"}

    def press(self, domain: str, service: str, entity: str) -> None:
        self.call("POST", f"/api/services/{domain}/{service}", {"entity_id": entity})

    def version(self) -> str:
        return str(self.call("GET", "/api/config")["version"])


def until(check: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def speech(out: Path, text: str, lead: float, tail: float) -> Path:
    subprocess.run([str(ROOT / "scripts" / "make-test-audio"), str(out), text, "en", str(lead),
                    str(tail)], check=True)
    return out


def main() -> int:
    if not (RECIPES / "ha-up.sh").exists():
        print(f"no Home Assistant recipe at {RECIPES} (set HA_RECIPES)", file=sys.stderr)
        return 2
    started = time.monotonic()
    subprocess.run(["bash", str(RECIPES / "ha-up.sh")], check=True, stdout=subprocess.DEVNULL)
    ha = HomeAssistant((HA_BASE / "token").read_text().strip())
    results: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        device = os.urandom(6).hex()
        state = d / "state"
        state.mkdir(mode=0o700)
        (state / "device_id").write_text(device)
        cfg = d / "ha.toml"
        cfg.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {MQTT_PORT}\nreconnect_min_s = 0.5\n'
                       'reconnect_max_s = 2.0\n[upload]\nhold_s = 0.0\n')
        env = {**os.environ, "EDGE_RECORDER_STATE_DIR": str(state)}
        sentence = speech(d / "s.wav", "hey jarvis, turn on the kitchen light", 1.2, 1.5)
        for _ in range(2):  # two clips to delete
            subprocess.run([*CLI, "simulate", str(sentence), "--events", "/dev/null"], env=env,
                           check=True, stderr=subprocess.DEVNULL)
        long = speech(d / "long.wav", "hey jarvis, turn on the kitchen light", 25.0, 30.0)
        daemon = subprocess.Popen([*CLI, "simulate", str(long), "--realtime", "--config", str(cfg),
                                   "--events", str(d / "events.jsonl")], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        e = f"edge_recorder_{device}"
        try:
            results["device and entities appear"] = until(
                lambda: ha.state(f"sensor.{e}_clips_stored")["state"] == "2", 60)
            results["recording sensor off, muted off"] = (
                ha.state(f"binary_sensor.{e}_recording")["state"] == "off"
                and ha.state(f"switch.{e}_muted")["state"] == "off")
            results["consent sensor reads off"] = ha.state(f"sensor.{e}_upload_consent")["state"] == "off"
            ha.press("button", "press", f"button.{e}_delete_last_clip")
            one = until(lambda: ha.state(f"sensor.{e}_clips_stored")["state"] == "1")
            time.sleep(1.1)
            ha.press("button", "press", f"button.{e}_delete_last_clip")
            two = until(lambda: ha.state(f"sensor.{e}_clips_stored")["state"] == "0")
            listed = subprocess.run([*CLI, "clips", "list"], env=env, capture_output=True, text=True)
            results["delete last clip, pressed twice, deletes two"] = one and two and listed.stdout == ""
            seen: list[str] = []

            def light_went_on_and_off() -> bool:
                seen.append(ha.state(f"binary_sensor.{e}_recording")["state"])
                return "on" in seen and seen[-1] == "off" and seen.index("on") > 0

            results["recording sensor turns on and off around the wake"] = until(
                light_went_on_and_off, 60)
            wake = ha.state(f"event.{e}_wake")
            results["wake event fired"] = wake.get("attributes", {}).get("event_type") == "hey_jarvis"
            ha.press("switch", "turn_on", f"switch.{e}_muted")
            muted = until(lambda: ha.state(f"switch.{e}_muted")["state"] == "on")
            ha.press("switch", "turn_off", f"switch.{e}_muted")
            results["mute switch mutes and unmutes"] = muted and until(
                lambda: ha.state(f"switch.{e}_muted")["state"] == "off")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.communicate(timeout=60)
            subprocess.run([*CLI, "mqtt", "forget", "--config", str(cfg)], env=env,
                           capture_output=True)
        results["removed by mqtt forget"] = until(
            lambda: ha.state(f"sensor.{e}_clips_stored")["state"] == "missing")
        log = (HA_BASE / "root" / "config" / "home-assistant.log").read_text(errors="replace")
        bad = [ln for ln in log.splitlines() if ("ERROR" in ln or "WARNING" in ln)
               and "mqtt" in ln.lower() and ("discovery" in ln.lower() or device in ln)]
        results["no discovery error in Home Assistant's log"] = not bad
        for line in bad[:5]:
            print("   ", line[:200])
    version = ha.version()
    for name, ok in results.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(json.dumps({"home_assistant": version, "passed": sum(results.values()),
                      "checks": len(results), "elapsed_s": round(time.monotonic() - started, 1),
                      "results": results}))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
