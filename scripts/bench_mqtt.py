"""Delete latency through a real mosquitto, publish -> acknowledgement, next to a bare paho echo.

    scripts/bench-mqtt [--rounds 30] [--clips 10000] [--down-s 10] [--flood-per-s 150]

Starts mosquitto on a free loopback port (plain TCP, persistence on), runs the control plane as
the daemon wires it (ClipStore + MqttControl), and measures from the owner's publish to the
evt/deleted reply: one clip at a time, and `all` over N clips. The floor is a bare paho round trip
(publish -> an echo client -> reply) through the same broker. Then, with the broker down (a
loopback port that refuses), what the speaker's client spends reconnecting for --down-s seconds:
connects tried and CPU seconds, at the tests' reconnect delays (0.2-1 s) and the defaults (1-60 s),
next to a bare paho client at paho's own defaults. Then a flood: another client publishes junk
(unsigned deletes, not JSON, unknown keys) on cmd/delete at --flood-per-s while the owner sends
signed deletes, one clip each, from 1 s into the flood (past any burst allowance): how many were
done, and their publish -> reply latency, beside a bare paho round trip under the same flood.
Prints tables and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from device.control.commands import Controller, sign  # noqa: E402
from device.control.mute import MuteState  # noqa: E402
from device.core.config import MqttSettings  # noqa: E402
from device.core.events import EventSink  # noqa: E402
from device.integrations.mqtt import MqttControl, make_client, set_nodelay  # noqa: E402
from device.storage.clips import Clip, ClipStore, wav_bytes  # noqa: E402

TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(workdir: Path, nodelay: bool) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"user root\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
                    f"persistence true\npersistence_location {workdir}/\n"
                    f"set_tcp_nodelay {'true' if nodelay else 'false'}\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


def subscriber(topic: str) -> Any:
    """An on_connect that turns Nagle off (as the speaker does) and subscribes."""

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        set_nodelay(client)
        client.subscribe(topic, qos=1)

    return on_connect


class Waiter:
    """An MQTT client that publishes and waits for the reply carrying a given request id."""

    def __init__(self, port: int, name: str, subscribe: str) -> None:
        self._lock = threading.Condition()
        self._seen: dict[str, float] = {}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
        c.on_connect = subscriber(subscribe)
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c
        time.sleep(0.5)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        rid = json.loads(msg.payload).get("request_id")
        with self._lock:
            self._seen[rid] = time.perf_counter()
            self._lock.notify_all()

    def round_trip(self, topic: str, payload: dict[str, Any]) -> float:
        start = time.perf_counter()
        self.client.publish(topic, json.dumps(payload), qos=1)
        with self._lock:
            if not self._lock.wait_for(lambda: payload["request_id"] in self._seen, TIMEOUT_S):
                raise SystemExit(f"no reply to {payload['request_id']}")
            return self._seen[payload["request_id"]] - start


def bare_echo(port: int, rounds: int) -> list[float]:
    echo = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="echo")
    echo.on_connect = subscriber("bench/ping")
    echo.on_message = lambda cl, u, m: None if cl.publish("bench/pong", m.payload, qos=1) else None
    echo.connect("127.0.0.1", port)
    echo.loop_start()
    owner = Waiter(port, "bare-owner", "bench/pong")
    times = [owner.round_trip("bench/ping", {"request_id": f"p{i}"}) for i in range(rounds)]
    echo.loop_stop()
    return times


def while_down(client: mqtt.Client, seconds: float) -> dict[str, Any]:
    """Connects tried and CPU seconds (this process, where nothing else runs meanwhile) while
    `client` keeps reconnecting to a port that refuses."""
    down = socket.socket()
    down.bind(("127.0.0.1", 0))
    tries: list[int] = []
    client.on_connect_fail = lambda *_: tries.append(1)
    cpu = time.process_time()
    client.connect_async("127.0.0.1", down.getsockname()[1])
    client.loop_start()
    time.sleep(seconds)
    client.loop_stop()
    cpu = time.process_time() - cpu
    down.close()
    return {"connects": len(tries), "cpu_s": round(cpu, 2)}


def broker_down(seconds: float) -> dict[str, Any]:
    sides = {"speaker_fast": (0.2, 1.0), "speaker_default": (1.0, 60.0)}
    out = {}
    for label, (low, high) in sides.items():
        settings = MqttSettings(host="127.0.0.1", reconnect_min_s=low, reconnect_max_s=high)
        out[label] = while_down(make_client(settings, f"bench-{label}", persistent=False), seconds)
    out["bare_paho"] = while_down(mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bare"), seconds)
    return out


def fill(store: ClipStore, n: int) -> None:
    """Bench-only bulk setup: files and rows in one transaction, without a per-clip fsync."""
    audio = wav_bytes(np.zeros(1280, dtype=np.int16))
    rows = []
    for i in range(n):
        cid = uuid.uuid4().hex
        (store.clips_dir / f"{cid}.wav").write_bytes(audio)
        rows.append(Clip(cid, f"2026-01-01T00:00:{i % 60:02d}.000+00:00", 0.0, 0.08, "hey_jarvis",
                         0.9, None, 16000, f"{cid}.wav"))
    with store.state.atomically():  # the clip rows' owner, without a key per clip (no transcript)
        for clip in rows:
            store.state.rows.insert(clip, b"")


def measure(rounds: int, clips: int, nodelay: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        broker, port = start_broker(tmp, nodelay)
        try:
            bare = bare_echo(port, rounds)
            store = ClipStore(tmp / "state")
            settings = MqttSettings(host="127.0.0.1", port=port)
            control = MqttControl(settings, store, Controller(store, MuteState()),
                                  lambda: {"clips": store.count()}, EventSink())
            control.start()
            owner = Waiter(port, "owner", control.topic("evt/#"))
            one = []
            for i in range(rounds):
                fill(store, 1)
                [clip] = [c.id for c in store.all()]
                one.append(owner.round_trip(control.topic("cmd/delete"),
                                            {"request_id": f"one-{i}", "ids": [clip]}))
            fill(store, clips)
            all_s = owner.round_trip(control.topic("cmd/delete"), {"request_id": "all", "all": True})
            left = store.count()
            control.close()
        finally:
            broker.terminate()
            broker.wait(timeout=10)
    return {"bare_echo_ms": round(1000 * statistics.median(bare), 2),
            "delete_one_ms": round(1000 * statistics.median(one), 2),
            "delete_one_max_ms": round(1000 * max(one), 2),
            "delete_all_s": round(all_s, 3), "clips_left": left}


FLOOD_SECRET = "bench-secret-0123456789"
JUNK = [b'{"request_id": "junk-%d", "all": true}', b'{not json %d',
        b'{"request_id": "junk-%d", "everything": true}']


def flood(port: int, topic: str, per_s: float, stop: threading.Event) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flood")
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start, i = time.monotonic(), 0
    while not stop.is_set():
        time.sleep(max(0.0, start + i / per_s - time.monotonic()))
        client.publish(topic, JUNK[i % len(JUNK)] % i, qos=1)
        i += 1
    client.disconnect()
    client.loop_stop()


def under_flood(per_s: float, deletes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        broker, port = start_broker(tmp, nodelay=True)
        stop = threading.Event()
        try:
            (tmp / "secret").write_text(FLOOD_SECRET)
            store = ClipStore(tmp / "state")
            settings = MqttSettings(host="127.0.0.1", port=port,
                                    signing={"secret_file": str(tmp / "secret")})  # type: ignore[arg-type]
            control = MqttControl(settings, store, Controller(store, MuteState()),
                                  lambda: {"clips": store.count()}, EventSink())
            control.start()
            owner = Waiter(port, "owner", control.topic("evt/#"))
            echo = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="echo")
            echo.on_connect = subscriber("bench/ping")
            echo.on_message = lambda cl, u, m: None if cl.publish("bench/pong", m.payload, qos=1) \
                else None
            echo.connect("127.0.0.1", port)
            echo.loop_start()
            bare_owner = Waiter(port, "bare-owner", "bench/pong")
            flooding = threading.Thread(target=flood, args=(port, control.topic("cmd/delete"),
                                                            per_s, stop), daemon=True)
            flooding.start()
            time.sleep(1.0)
            times, done, bare = [], 0, []
            for i in range(deletes):
                fill(store, 1)
                [clip] = [c.id for c in store.all()]
                body = {"request_id": f"owner-{i}", "ids": [clip], "ts": int(time.time()),
                        "nonce": f"nonce-{i:04d}"}
                body["sig"] = sign("delete", body, FLOOD_SECRET.encode())
                times.append(owner.round_trip(control.topic("cmd/delete"), body))
                if store.count() == 0:
                    done += 1
                else:
                    store.delete(everything=True, request_id=f"cleanup-{i}")
                bare.append(bare_owner.round_trip("bench/ping", {"request_id": f"p{i}"}))
                time.sleep(0.2)
            stop.set()
            flooding.join()
            echo.loop_stop()
            control.close()
        finally:
            stop.set()
            broker.terminate()
            broker.wait(timeout=10)
    return {"per_s": per_s, "owner_deletes": deletes, "done": done,
            "delete_ms": round(1000 * statistics.median(times), 2),
            "delete_max_ms": round(1000 * max(times), 2),
            "bare_echo_ms": round(1000 * statistics.median(bare), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--clips", type=int, default=10_000)
    parser.add_argument("--down-s", type=float, default=10.0)
    parser.add_argument("--flood-per-s", type=float, default=150.0)
    parser.add_argument("--flood-deletes", type=int, default=20)
    args = parser.parse_args()
    result: dict[str, Any] = {"rounds": args.rounds, "delete_all_clips": args.clips}
    for label, nodelay in (("default", False), ("nodelay", True)):
        result[label] = measure(args.rounds, args.clips, nodelay)
    d, n = result["default"], result["nodelay"]
    rows = [
        ("broker setting", "default", "tcp_nodelay", ""),
        ("bare paho round trip (owner->echo->owner), median ms", d["bare_echo_ms"], n["bare_echo_ms"], ""),
        ("delete 1 clip, publish -> ack, median ms", d["delete_one_ms"], n["delete_one_ms"], "<= 100"),
        ("  max ms", d["delete_one_max_ms"], n["delete_one_max_ms"], ""),
        (f"delete all over {args.clips} clips, publish -> ack, s", d["delete_all_s"],
         n["delete_all_s"], "<= 2"),
        ("clips left afterwards", d["clips_left"], n["clips_left"], "0"),
    ]
    width = max(len(str(r[0])) for r in rows)
    for name, a, b, target in rows:
        print(f"{name:<{width}}  {a!s:>10}  {b!s:>11}  {target}")
    result["broker_down_s"] = args.down_s
    result["broker_down"] = down = broker_down(args.down_s)
    print(f"\n{f'broker down for {args.down_s:g} s':<28}  {'connects':>8}  {'CPU s':>6}")
    for label, got in down.items():
        print(f"{label:<28}  {got['connects']:>8}  {got['cpu_s']:>6}")
    result["flood"] = f = under_flood(args.flood_per_s, args.flood_deletes)
    print(f"\njunk flood at {f['per_s']:g}/s: signed deletes done {f['done']} of "
          f"{f['owner_deletes']}, publish -> reply median {f['delete_ms']} ms (max "
          f"{f['delete_max_ms']}); bare paho round trip meanwhile {f['bare_echo_ms']} ms")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
