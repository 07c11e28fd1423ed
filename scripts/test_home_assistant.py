"""edge-recorder against a real Home Assistant, as a user sees it after a bad day (issues 14, 24).
Not part of the test suite.

    sudo EDGE_RECORDER_MODELS_DIR=<models> scripts/test-home-assistant

(`<models>`: where `edge-recorder models fetch` put the wake-word models; the daemon here runs on a
fresh temporary state directory, so it cannot use the ones in yours.)

Starts (or reuses) mosquitto and Home Assistant with the MQTT integration using the team's recipe
(HA_RECIPES, default ../shared/recipes: ha-up.sh) and runs the real daemon (`edge-recorder run`)
on a microphone this script speaks into: ALSA's file plugin reading a named pipe that is fed at real
time (silence, or a spoken wake word when a step asks for one), through PortAudio as on a Pi. The
device's local midnight is put a few minutes ahead (its time zone), so its daily counters reset
during the run. Then, through Home Assistant's own REST and websocket APIs:

- the device and its entities appear with the expected entity ids, named without the random id;
- mute comes first; unmuted, the same daemon hears, records, fires the wake event, deletes;
- SIGKILL: unavailable by the last will, back after a restart; SIGSTOP past the broker's
  keepalive: unavailable, and after SIGCONT back and listening;
- the daily counters reset at the device's midnight and the long-term statistics keep the sum;
- a Home Assistant restart: its birth message brings discovery again and the entities back;
- the status topic only ever carried whole state, the availability topic only online/offline;
- no warning or error in Home Assistant's log concerns this device (its id, entities, topics or
  templates), from any part of Home Assistant, not only MQTT.

Prints a line per check, then one JSON line (checks, timings, Home Assistant's version).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device.integrations import ha

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speech import speak  # type: ignore[import-not-found]  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPES = Path(os.environ.get("HA_RECIPES", ROOT.parent / "shared" / "recipes"))
HA_BASE = Path(os.environ.get("HA_BASE", "/tmp/ha"))
URL = f"http://127.0.0.1:{os.environ.get('HA_PORT', '8123')}"
MQTT_PORT = int(os.environ.get("MQTT_PORT", "1883"))
CLI = [str(ROOT / ".venv" / "bin" / "edge-recorder")]
KEEPALIVE_S = 5
"""The daemon's MQTT keepalive: a frozen daemon's will is sent after 1.5 times this."""
MIDNIGHT_AFTER_S = float(os.environ.get("HA_TEST_MIDNIGHT_S", "90"))
"""The device's local midnight, at least this long after the start (see midnight_zone)."""
WAKE = "hey jarvis, turn on the kitchen light"
RATE, BLOCK_S = 16000, 0.08
LEVELS = ("WARNING", "ERROR", "CRITICAL")
ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ (\w+) ")


def until(check: Callable[[], object], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def slug(text: str) -> str:
    """Home Assistant's entity id slug for ASCII names."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


class HomeAssistant:
    def __init__(self) -> None:
        self.token = (HA_BASE / "token").read_text().strip()

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
        except (urllib.error.URLError, OSError):
            return {"state": "missing", "attributes": {}}

    def value(self, entity: str) -> str:
        return str(self.state(entity)["state"])

    def press(self, domain: str, service: str, entity: str) -> None:
        self.call("POST", f"/api/services/{domain}/{service}", {"entity_id": entity})

    def ws(self, command: dict[str, Any]) -> Any:
        """One websocket command through the recipe's client (inside the chroot)."""
        out = subprocess.run(["/usr/sbin/chroot", str(HA_BASE / "root"), "/opt/hass/bin/python",
                              "/opt/ha-tools/ws.py", URL, self.token, json.dumps(command)],
                             env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise SystemExit(f"Home Assistant refused {command['type']}: {out.stderr.strip()}")
        return json.loads(out.stdout)

    def statistics(self, ids: list[str], since: datetime) -> dict[str, list[dict[str, Any]]]:
        return dict(self.ws({"type": "recorder/statistics_during_period", "period": "5minute",
                             "start_time": since.isoformat(), "statistic_ids": ids,
                             "types": ["sum", "state", "last_reset"]}))

    def restart(self) -> None:
        """Stop Home Assistant (SIGTERM, as a service manager does) and start it again."""
        pid = int((HA_BASE / "run" / "hass.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        if not until(lambda: not Path(f"/proc/{pid}").exists(), 120):
            raise SystemExit("Home Assistant did not stop within 120 s")
        up()


def up() -> None:
    subprocess.run(["bash", str(RECIPES / "ha-up.sh")], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def with_recorder() -> HomeAssistant:
    """Home Assistant with its recorder (statistics): the recipe's config leaves it out, and its
    packages folder is where extra YAML goes. Restarts Home Assistant once if it was missing."""
    up()
    home = HomeAssistant()
    if "recorder" not in home.call("GET", "/api/config")["components"]:
        package = HA_BASE / "root" / "config" / "packages" / "edge_recorder_test.yaml"
        package.write_text("# scripts/test-home-assistant: long-term statistics\nrecorder:\n")
        home.restart()
    return home


class HaLog:
    """Home Assistant's log from now on, across its restarts (it renames the old file at start)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.text: list[str] = []
        self._file = self._open(at_end=True)

    def _open(self, at_end: bool) -> TextIO:
        f = self.path.open(errors="replace")
        if at_end:
            f.seek(0, os.SEEK_END)
        return f

    def collect(self) -> None:
        self.text.append(self._file.read())

    def reopen(self) -> None:
        """After a restart: the rest of the old file (still open), then the new one."""
        self.collect()
        self._file.close()
        self._file = self._open(at_end=False)

    def entries(self) -> list[str]:
        """Warnings and errors, each with its continuation lines (a traceback)."""
        self.collect()
        found: list[list[str]] = []
        for line in "".join(self.text).splitlines():
            head = ENTRY.match(line)
            if head:
                found.append([line] if head.group(1) in LEVELS else [])
            elif found and found[-1]:
                found[-1].append(line)
        return ["\n".join(e) for e in found if e]


class Microphone:
    """The daemon's microphone: a named pipe that ALSA's file plugin reads as device `filemic`, fed
    in real time with silence or with what say() queued. The daemon opens it again after a mute,
    a restart or a thaw; every open is counted."""

    BLOCK = int(RATE * BLOCK_S) * 2

    def __init__(self, folder: Path) -> None:
        self.fifo = folder / "mic.fifo"
        os.mkfifo(self.fifo)
        self.alsa_conf = folder / "asound.conf"
        self.alsa_conf.write_text(
            "</usr/share/alsa/alsa.conf>\n"
            f'pcm.filemic {{ type file; slave.pcm "null"; file "/dev/null"; infile "{self.fifo}"; '
            'format "raw" }\n')
        self.opens = 0
        self.reading = False
        self._speech = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def say(self, pcm: bytes) -> None:
        with self._lock:
            self._speech += pcm

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while (fd := self._open()) is not None:
            self.opens, self.reading = self.opens + 1, True
            try:
                self._feed(fd)
            except BrokenPipeError:  # the daemon closed the device (mute, exit)
                pass
            finally:
                self.reading = False
                os.close(fd)

    def _open(self) -> int | None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody is reading yet
                time.sleep(0.02)
                continue
            os.set_blocking(fd, True)
            return fd
        return None

    def _feed(self, fd: int) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                chunk = bytes(self._speech[:self.BLOCK])
                del self._speech[:self.BLOCK]
            os.write(fd, chunk + bytes(self.BLOCK - len(chunk)))
            next_at = max(next_at + BLOCK_S, time.monotonic() - 0.5)  # no burst after a freeze
            time.sleep(max(0.0, next_at - time.monotonic()))


class Tap:
    """Every message on the speaker's topics and Home Assistant's, as a broker client sees it."""

    def __init__(self, base: str) -> None:
        self.messages: list[tuple[float, str, bytes]] = []
        self._lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ha-test-tap-{os.getpid()}")
        c.on_connect = lambda cl, *_: cl.subscribe([(base + "#", 1), ("homeassistant/#", 1)])
        c.on_message = self._on_message
        c.connect("127.0.0.1", MQTT_PORT)
        c.loop_start()
        self.client = c

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((time.time(), msg.topic, bytes(msg.payload)))

    def on(self, topic: str, since: float = 0.0) -> list[tuple[float, bytes]]:
        with self._lock:
            return [(t, p) for t, top, p in self.messages if top == topic and t >= since]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def speech_pcm(folder: Path, text: str, tail_s: float) -> bytes:
    """espeak-ng's TEXT as raw 16 kHz mono S16_LE, what the named-pipe microphone is fed."""
    return speak(folder / f"{slug(text)}.wav", text, "en", 0.3, tail_s).astype("<i2").tobytes()


def midnight_zone(after_s: float) -> tuple[str, datetime]:
    """A POSIX time zone whose midnight comes at least `after_s` from now, and when: a minute into
    one of Home Assistant's 5-minute statistics periods, so that the counts before midnight are
    compiled in an earlier period than the reset."""
    at = (datetime.now(UTC) + timedelta(seconds=after_s)).replace(second=0, microsecond=0)
    at += timedelta(minutes=(1 - at.minute) % 5 or 5)
    return f"EDG+{at.hour:02d}:{at.minute:02d}", at  # local = UTC - offset: 00:00 at `at`


class Daemon:
    """`edge-recorder run` as the service runs it, in its own process."""

    def __init__(self, env: dict[str, str], cfg: Path, log: Path) -> None:
        self.env, self.cfg, self.log = env, cfg, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen([*CLI, "run", "--config", str(self.cfg)], env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def cli_json(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    out = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def whole(payload: bytes, paths: set[tuple[str, ...]]) -> bool:
    try:
        return ha.renders(json.loads(payload), paths)
    except ValueError:
        return False


def templates_of(discovery: dict[str, Any]) -> set[str]:
    return {v for c in discovery["cmps"].values() for v in c.values()
            if isinstance(v, str) and "{{" in v}


class Run:
    """The checks, in the order a user meets them."""

    def __init__(self, folder: Path) -> None:
        self.results: dict[str, bool] = {}
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        self.ha = with_recorder()
        self.log = HaLog(HA_BASE / "root" / "config" / "home-assistant.log")
        self.device = os.urandom(6).hex()
        self.base = f"edge-recorder/{self.device}/"
        self.e = f"edge_recorder_{self.device}"
        self.tap = Tap(self.base)
        self.mic = Microphone(folder)
        state = folder / "state"
        state.mkdir(mode=0o700)
        (state / "device_id").write_text(self.device)
        cfg = folder / "ha.toml"
        cfg.write_text(f'[audio]\ndevice = "filemic"\nsample_rate_hz = {RATE}\nqueue_s = 2.0\n'
                       '[indicator]\npin_factory = "mock"\n'
                       f'[mqtt]\nhost = "127.0.0.1"\nport = {MQTT_PORT}\nkeepalive_s = {KEEPALIVE_S}\n'
                       'reconnect_min_s = 0.5\nreconnect_max_s = 2.0\n')
        self.cfg = cfg
        zone, self.midnight_at = midnight_zone(MIDNIGHT_AFTER_S)
        self.env = {**os.environ, "EDGE_RECORDER_STATE_DIR": str(state), "TZ": zone,
                    "ALSA_CONFIG_PATH": str(self.mic.alsa_conf)}
        self.daemon = Daemon(self.env, cfg, folder / "daemon.log")
        self.wake_pcm = speech_pcm(folder, WAKE, 1.5)
        self.false_wake_pcm = speech_pcm(folder, "hey jarvis", 0.5)
        self.discovery: dict[str, Any] = {}
        self.last_wake_at = 0.0

    def check(self, name: str, ok: object, detail: str = "") -> bool:
        self.results[name] = bool(ok)
        print(f"{'PASS' if ok else 'FAIL'}  {name}{f'  ({detail})' if detail and not ok else ''}",
              flush=True)
        return bool(ok)

    def entity(self, platform: str, name: str) -> str:
        return f"{platform}.{self.e}_{slug(name)}"

    @property
    def entities(self) -> list[str]:
        return [self.entity(c["p"], c["name"]) for c in self.discovery["cmps"].values()]

    def all_are(self, wanted: Callable[[str], bool]) -> bool:
        return all(wanted(self.ha.value(e)) for e in self.entities)

    def timed(self, key: str, check: Callable[[], object], timeout_s: float) -> bool:
        started = time.monotonic()
        ok = until(check, timeout_s)
        self.timings[key] = round(time.monotonic() - started, 1)
        return ok

    def clips_are(self, n: int) -> Callable[[], bool]:
        return lambda: self.count("Clips stored") == str(n)

    def count(self, name: str) -> str:
        return self.ha.value(self.entity("sensor", name))

    # -- the steps ------------------------------------------------------------------------------
    def appears(self) -> None:
        self.daemon.start()
        topic = f"homeassistant/device/{self.device}/config"
        ok = until(lambda: self.tap.on(topic), 60)
        self.discovery = json.loads(self.tap.on(topic)[-1][1]) if ok else {"cmps": {}}
        ok = ok and until(lambda: self.all_are(lambda s: s not in ("missing", "unavailable")), 60)
        registry = [r for r in self.ha.ws({"type": "config/entity_registry/list"})
                    if str(r.get("unique_id", "")).startswith(self.e)]
        named = {r["entity_id"]: r for r in registry}
        wrong = [e for e in self.entities if e not in named or not named[e]["has_entity_name"]
                 or self.device in (named[e]["original_name"] or "")]
        self.check("device and entities appear: <platform>.edge_recorder_<id>_<name>, names "
                   "without the id", ok and not wrong and len(registry) == len(self.entities),
                   f"missing or misnamed: {wrong}")
        wakes = self.ha.state(self.entity("sensor", "Wakes today"))["attributes"]
        self.check("daily counters: state class total with last_reset; consent a binary sensor",
                   wakes.get("state_class") == "total" and wakes.get("last_reset")
                   and self.ha.value(self.entity("binary_sensor", "Upload consent")) == "off"
                   and self.ha.value(self.entity("binary_sensor", "Recording")) == "off",
                   f"wakes today: {wakes}")

    def mute_first(self) -> None:
        muted = self.entity("switch", "Muted")
        opens = self.mic.opens
        self.ha.press("switch", "turn_on", muted)
        on = until(lambda: self.ha.value(muted) == "on")
        closed = until(lambda: not self.mic.reading, 10)
        time.sleep(1.0)
        closed = closed and self.mic.opens == opens and not self.mic.reading
        self.ha.press("switch", "turn_off", muted)
        off = until(lambda: self.ha.value(muted) == "off")
        reopened = until(lambda: self.mic.opens > opens, 20)
        self.check("mute first, from Home Assistant: the microphone closes, and unmuting opens it "
                   "again", on and closed and off and reopened,
                   f"on={on} closed={closed} off={off} reopened={reopened}")

    def say_wake(self, name: str, clips: int, watch_light: bool = False) -> None:
        """Speak the wake word and a sentence; Home Assistant must count it and see the clip."""
        wakes = int(self.count("Wakes today"))
        seen: list[str] = []
        light = self.entity("binary_sensor", "Recording")
        self.mic.say(self.wake_pcm)

        def done() -> bool:
            if watch_light:
                seen.append(self.ha.value(light))
            return (self.count("Wakes today") == str(wakes + 1)
                    and self.count("Clips stored") == str(clips)
                    and (not watch_light or ("on" in seen and seen[-1] == "off")))

        ok = until(done, 40)
        self.last_wake_at = time.time()
        detail = f"wakes {self.count('Wakes today')}, clips {self.count('Clips stored')}"
        if watch_light:
            event = self.ha.state(self.entity("event", "Wake"))["attributes"].get("event_type")
            ok = ok and event == "hey_jarvis"
            detail += f", light {seen[-5:]}, event {event}"
        self.check(name, ok, detail)

    def false_wake(self) -> None:
        before = int(self.count("False wakes today"))
        self.mic.say(self.false_wake_pcm)
        ok = until(lambda: self.count("False wakes today") == str(before + 1), 40)
        self.last_wake_at = time.time()
        self.check("a false wake (the wake word alone) counts as one", ok,
                   self.count("False wakes today"))

    def delete(self, name: str, presses: int) -> None:
        button = self.entity("button", "Delete last clip")
        clips = int(self.count("Clips stored"))
        ok = True
        for left in range(clips - 1, clips - presses - 1, -1):
            self.ha.press("button", "press", button)
            ok = ok and until(self.clips_are(left))
            time.sleep(1.1)  # a new press id (Home Assistant renders it from the time)
        listed = cli_json(self.env, "clips", "list")
        self.check(name, ok and len(listed) == clips - presses,
                   f"{clips} -> {self.count('Clips stored')}")

    def killed(self) -> None:
        clips = self.count("Clips stored")
        self.daemon.kill()
        gone = self.timed("unavailable_after_sigkill_s",
                          lambda: self.all_are(lambda s: s == "unavailable"), 30)
        self.daemon.start()
        back = self.timed("available_after_restart_s",
                          lambda: self.all_are(lambda s: s != "unavailable"), 60)
        self.check("SIGKILL: every entity unavailable (the will), back after a restart",
                   gone and back and self.count("Clips stored") == clips)

    def frozen(self) -> None:
        self.daemon.signal(signal.SIGSTOP)
        limit = KEEPALIVE_S * 1.5 + 15
        gone = self.timed("unavailable_after_sigstop_s",
                          lambda: self.all_are(lambda s: s == "unavailable"), limit)
        self.daemon.signal(signal.SIGCONT)
        back = self.timed("available_after_sigcont_s",
                          lambda: self.all_are(lambda s: s != "unavailable"), 60)
        self.check(f"SIGSTOP: unavailable once the keepalive ({KEEPALIVE_S} s x 1.5) expires; "
                   "SIGCONT: back", gone and back)

    def midnight(self) -> None:
        wait_s = (self.midnight_at - datetime.now(UTC)).total_seconds()
        if not self.check("the steps before the device's midnight ended before it", wait_s > 0,
                          f"{-wait_s:.0f} s late: raise HA_TEST_MIDNIGHT_S"):
            return
        sensor = self.entity("sensor", "Wakes today")
        before = self.ha.state(sensor)["attributes"].get("last_reset")
        time.sleep(wait_s)
        reset = self.timed("counters_reset_after_midnight_s",
                           lambda: self.count("Wakes today") == "0"
                           and self.count("False wakes today") == "0", 60)
        after = self.ha.state(sensor)["attributes"].get("last_reset")
        self.check("the daily counters reset at the device's midnight, with a new last_reset",
                   reset and after and after != before, f"last_reset {before} -> {after}")

    def ha_restart(self) -> None:
        clips, wakes = self.count("Clips stored"), self.count("Wakes today")
        topic = f"homeassistant/device/{self.device}/config"
        self.log.collect()
        started = time.time()
        t0 = time.monotonic()
        self.ha.restart()
        self.log.reopen()
        birth = until(lambda: [t for t, p in self.tap.on("homeassistant/status", started)
                               if p == b"online"], 120)
        born = min((t for t, p in self.tap.on("homeassistant/status", started) if p == b"online"),
                   default=time.time())
        again = until(lambda: self.tap.on(topic, born), 30)
        back = until(lambda: self.all_are(lambda s: s not in ("missing", "unavailable")), 60)
        self.timings["ha_restart_until_entities_back_s"] = round(time.monotonic() - t0, 1)
        self.check("Home Assistant restarted: its birth message, discovery again, entities back "
                   "with their states", birth and again and back
                   and self.count("Clips stored") == clips and self.count("Wakes today") == wakes,
                   f"birth={birth} discovery_again={again} back={back}")

    def statistics(self) -> None:
        """The 5-minute statistics compiled after the last wake: the sum counts every wake."""
        ids = [self.entity("sensor", "Wakes today"), self.entity("sensor", "False wakes today")]
        period = datetime.fromtimestamp(self.last_wake_at, UTC).replace(second=0, microsecond=0)
        period -= timedelta(minutes=period.minute % 5)
        since = period - timedelta(hours=1)
        t0 = time.monotonic()

        def compiled() -> bool:
            rows = self.ha.statistics(ids, since)
            return all(rows.get(i) and rows[i][-1]["start"] >= period.timestamp() * 1000 for i in ids)

        ok = until(compiled, 420)
        self.timings["statistics_wait_s"] = round(time.monotonic() - t0, 1)
        days = cli_json(self.env, "stats")
        expected = {ids[0]: sum(d["wakes"] for d in days),
                    ids[1]: sum(sum(d["discarded"].values()) + d["rejected"] for d in days)}
        rows = self.ha.statistics(ids, since) if ok else {}
        sums = {i: [r["sum"] for r in rows.get(i, [])] for i in ids}
        grew = all(a <= b for i in ids for a, b in zip(sums[i], sums[i][1:], strict=False))
        last = {i: sums[i][-1] if sums[i] else None for i in ids}
        # The reset in a later period than counts before it: the sum carried over a new cycle.
        across = all(any(a["last_reset"] != b["last_reset"] and a["state"] > 0 and a["sum"] > 0
                         for a, b in zip(rows[i], rows[i][1:], strict=False)) for i in rows)
        self.notes.append(f"5-minute statistics of {ids[0]}: " + ", ".join(
            f"{datetime.fromtimestamp(r['start'] / 1000, UTC):%H:%M} state {r['state']:g} sum "
            f"{r['sum']:g}" for r in rows.get(ids[0], [])))
        self.check("long-term statistics: the sum carries over the daily reset, never drops, and "
                   "counts every wake", ok and grew and across and len(days) == 2
                   and last == expected, f"sums {sums}, expected {expected}, days {days}")

    def topics(self) -> None:
        paths = ha.status_paths(self.discovery, self.base + "status")
        statuses = [p for _, p in self.tap.on(self.base + "status")]
        avail = [p for _, p in self.tap.on(self.base + "availability")]
        broken = [p[:80] for p in statuses if not whole(p, paths)]
        self.check("the status topic only ever carried whole state; availability only "
                   "online/offline", statuses and not broken and set(avail) == {b"online", b"offline"}
                   and len(paths) >= 10, f"{len(broken)} broken: {broken[:3]}, availability "
                   f"{sorted(set(avail))}")

    def stopped(self) -> None:
        code = self.daemon.stop()
        gone = until(lambda: self.all_are(lambda s: s == "unavailable"), 30)
        self.check("a clean stop (SIGTERM): exit 0 and unavailable", code == 0 and gone,
                   f"exit {code}")

    def forgotten(self) -> None:
        subprocess.run([*CLI, "mqtt", "forget", "--config", str(self.cfg)], env=self.env,
                       capture_output=True, check=False)
        gone = until(lambda: self.all_are(lambda s: s == "missing"), 30)
        left = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(MQTT_PORT), "-t",
                               self.base + "#", "-t", f"homeassistant/device/{self.device}/#",
                               "--retained-only", "-W", "2", "-v"], capture_output=True, text=True)
        self.check("mqtt forget removes the device and leaves nothing retained",
                   gone and not left.stdout.strip(), left.stdout[:200])

    def log_is_clean(self) -> None:
        time.sleep(2)  # the last removals reach the log
        needles = {self.device, self.base, *self.entities, *templates_of(self.discovery)}
        entries = self.log.entries()
        ours = [e for e in entries if any(n in e for n in needles)]
        others = [e for e in entries if e not in ours]
        self.timings["other_warnings_in_log"] = len(others)
        for entry in ours[:10]:
            print("   ", entry.splitlines()[0][:300])
        for entry in others[:5]:
            self.notes.append(f"not this device: {entry.splitlines()[0][:200]}")
        self.check("no warning or error in Home Assistant's log concerns this device",
                   not ours, f"{len(ours)} entries")

    def close(self) -> None:
        if self.daemon.proc and self.daemon.proc.poll() is None:
            self.daemon.kill()
        self.mic.close()
        self.tap.close()


def steps(run: Run) -> Iterator[Callable[[], None]]:
    yield run.appears
    yield run.mute_first
    yield lambda: run.say_wake("unmuted, it hears: the light on and off in Home Assistant, the wake "
                               "event, a clip", clips=1, watch_light=True)
    yield lambda: run.say_wake("a second wake, a second clip", clips=2)
    yield run.false_wake
    yield lambda: run.delete("delete last clip, pressed twice, deletes two", 2)
    yield run.killed
    yield run.midnight
    yield lambda: run.say_wake("after midnight it counts from zero", clips=1)
    yield run.frozen
    yield lambda: run.say_wake("after SIGCONT it still listens and records", clips=2)
    yield run.ha_restart
    yield lambda: run.delete("after all that, a press still deletes", 1)
    yield run.statistics
    yield run.topics
    yield run.stopped
    yield run.forgotten
    yield run.log_is_clean


def main() -> int:
    if not (RECIPES / "ha-up.sh").exists():
        print(f"no Home Assistant recipe at {RECIPES} (set HA_RECIPES)", file=sys.stderr)
        return 2
    models = os.environ.get("EDGE_RECORDER_MODELS_DIR")
    if not models or not Path(models).is_dir():
        print("set EDGE_RECORDER_MODELS_DIR to a folder of wake-word models (`edge-recorder models "
              "fetch` makes one): the daemon runs on a fresh state directory", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(Path(tmp))
        try:
            for step in steps(run):
                step()
        finally:
            run.close()
            if not all(run.results.values()):
                print("daemon log tail:\n" + (Path(tmp) / "daemon.log").read_text()[-2000:])
    for note in run.notes:
        print("   ", note)
    version = str(run.ha.call("GET", "/api/config")["version"])
    print(json.dumps({"home_assistant": version, "passed": sum(run.results.values()),
                      "checks": len(run.results), "elapsed_s": round(time.monotonic() - started, 1),
                      "timings": run.timings, "results": run.results}))
    return 0 if run.results and all(run.results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
