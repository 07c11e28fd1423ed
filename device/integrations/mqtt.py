"""All paho-mqtt use: the control plane's one adapter.

MQTT 5 (or 3.1.1 where a broker cannot speak 5). Persistent session (MQTT 5: clean_start=False and a
Session Expiry Interval that never ends; 3.1.1: clean_session=False), a client id made from the
random device id, and QoS 1, so a command sent while the speaker is offline is delivered when it
reconnects. With MQTT 5 the broker is told the largest packet the speaker takes (Maximum Packet
Size) and drops bigger messages for it, and how many unacknowledged commands it may hand over at
once (Receive Maximum). Messages are acknowledged
by hand, only after the command is executed and durable: a crash before the ack makes the broker
deliver it again, and request-id idempotency keeps it from running twice. paho's callbacks run on its
network thread and only hand messages over; one worker executes them in order.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device import __version__
from device.control.commands import (
    MAX_PAYLOAD_BYTES,
    CommandError,
    Controller,
    Signing,
    error_event,
    request_id_in,
)
from device.core import events
from device.core.config import MqttSettings
from device.core.errors import ConfigError, StoreError, describe
from device.core.events import Event, EventSink
from device.core.files import atomic_write, read_secret
from device.integrations import ha
from device.storage.clips import ClipStore

log = logging.getLogger(__name__)

QOS = 1
MAX_PACKET_BYTES = MAX_PAYLOAD_BYTES + 4096
"""MQTT 5 Maximum Packet Size: the largest command payload plus room for its topic and headers.
The broker drops bigger messages for this client: they never reach the speaker's memory."""
RECEIVE_MAXIMUM = 20
"""MQTT 5 Receive Maximum: QoS 1 commands the broker hands over before the speaker acknowledges
(the rest wait at the broker, in the persistent session). MQTT 3.1.1 brokers have their own limit
(mosquitto: max_inflight_messages, 20)."""
SESSION_NEVER_EXPIRES = 0xFFFFFFFF
"""MQTT 5 Session Expiry Interval: as MQTT 3.1.1's clean_session=False, commands wait for a
speaker that is off however long it is off."""
CLOSE_WAITS_FOR_BROKER_S = 5.0
"""A stop before the broker has answered (a short `simulate`, a slow first connect) waits this
long for it, so the events and replies queued meanwhile are delivered, not dropped with the
client. Only then: a stop while connected waits for its offline message alone; one that has
nothing unsent does not wait."""
RETRY_INITIAL_S, RETRY_MAX_S = 0.2, 10.0
"""Backoff while a command cannot complete yet (it stays unacknowledged meanwhile)."""
RATE_PER_S, BURST = 20.0, 100
"""Authenticated commands beyond this rate wait their turn: paced, never refused. They stay
unacknowledged meanwhile, so the broker holds the rest (Receive Maximum) in the session."""
REFUSALS_PER_S, REFUSAL_BURST = 5.0, 20
"""Error replies to messages that fail authentication or validation. Beyond this rate they are
acknowledged without a reply (one `rate_limited` notice per flood): a flood is not echoed onto the
broker, and it never takes the turn of an authenticated command."""
MAX_WAITING_QOS0 = 1000
"""QoS 0 messages ("at most once") waiting for the worker beyond this are dropped on arrival, so a
QoS 0 flood cannot grow memory; QoS 1 ones are bounded by Receive Maximum and never dropped."""


class TransientError(Exception):
    """A command could not take effect now (e.g. the store is locked or the disk is full)."""


class Closing(Exception):
    """The control plane is closing: the message in hand stays unacknowledged (redelivered)."""


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._rate, self._burst = rate_per_s, float(burst)
        self._tokens, self._at = float(burst), time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now

    def take(self) -> bool:
        self._refill()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def next_in_s(self) -> float:
        """Seconds until a token is there."""
        self._refill()
        return max(0.0, (1 - self._tokens) / self._rate)

    def full(self) -> bool:
        self._refill()
        return self._tokens >= self._burst
DEVICE_ID_FILE = "device_id"
FORWARDED = (events.Upload, events.Deleted, events.Wake, events.Indicator, events.Discarded,
             events.Audio, events.Sensitivity, events.Save, events.Voice, events.Heard)
"""Events published as they are (evt/<type>); each is followed by a fresh status."""
PUBLISHED: list[tuple[str, str, str]] = [
    ("status", "JSON object, retained",
     "the speaker's state (version, listening/recording, clips, bytes used, consent, mute, uploads "
     "waiting, sensitivity, save mode, today's counts and the local midnight they count from), "
     "republished on every change; state only, every field always present"),
    (ha.AVAILABILITY, f"`{ha.ONLINE}` or `{ha.OFFLINE}`, retained",
     f"`{ha.ONLINE}` on connect and when Home Assistant starts; `{ha.OFFLINE}` on a clean stop and "
     "as the last will (the broker publishes it when the connection dies)"),
    ("evt/<type>", "one event as a JSON object (docs/architecture.md, events)",
     "every event of the listening loop, each command's reply, and `error` for refused commands"),
]
"""What the speaker publishes under <prefix>/<device id>/ (docs/mqtt.md is generated from it)."""
STATUS_REFRESH_S = 30.0
"""The status is also republished this often when it changed (e.g. consent granted by the CLI)."""


def device_id(state_dir: Path) -> str:
    """Random, made on first use and kept; never derived from hardware."""
    path = state_dir / DEVICE_ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = secrets.token_hex(6)
        atomic_write(path, value.encode())
        return value


def set_nodelay(client: mqtt.Client) -> None:
    """paho leaves Nagle's algorithm on: small replies would wait ~40 ms for a delayed ACK."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttControl:
    def __init__(self, settings: MqttSettings, store: ClipStore, controller: Controller,
                 status: Callable[[], dict[str, Any]], events: EventSink,
                 wake_words: list[str] | None = None) -> None:
        assert settings.host, "MqttControl needs mqtt.host"
        self.settings = settings
        self.device_id = device_id(store.state_dir)
        self.base = f"{settings.prefix}/{self.device_id}/"
        self._controller = controller
        self._status = status
        self._signing = signing_of(settings)
        self._inbox: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue()
        self._stopping = threading.Event()
        self._authenticated = TokenBucket(RATE_PER_S, BURST)
        """The one authenticated sender: with signing, whoever holds the secret; without, whoever
        the broker lets publish on cmd/# (MQTT does not tell a receiver who published)."""
        self._refusals = TokenBucket(REFUSALS_PER_S, REFUSAL_BURST)
        self._flooded = False
        """Refusals beyond their rate are going unanswered (announced once, logged once)."""
        self._pacing = False
        self._wake_words = wake_words or []
        self._birth_topic = f"{settings.discovery_prefix}/status"
        self._last_status = ""
        self._light = "idle"
        """The recording light as the last indicator event showed it (in event order)."""
        self._connected = threading.Event()
        """Set once a connection has said online (so a stop's offline comes after it)."""
        self._reported_down = False
        self._closing = False
        self._queued_while_down = False
        """Something was published while the broker was out of reach: paho keeps it (QoS 1) and
        sends it once connected, unless the client is closed first."""
        self._worker = threading.Thread(target=self._work, name="mqtt-commands", daemon=True)
        self._client = self._make_client()
        events.subscribe(self._on_event)

    def _make_client(self) -> mqtt.Client:
        client = make_client(self.settings, f"edge-recorder-{self.device_id}", persistent=True)
        client.will_set(self.topic(ha.AVAILABILITY), ha.OFFLINE, qos=QOS, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def topic(self, suffix: str) -> str:
        return self.base + suffix

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        port = port_of(s)
        log.info("mqtt: connecting to %s:%d as %s", s.host, port, self.base)
        self._worker.start()
        self._client.connect_async(str(s.host), port, keepalive=s.keepalive_s,
                                   **connect_options(s, persistent=True))
        self._client.loop_start()

    def close(self) -> None:
        if not self._worker.is_alive():
            return
        self._closing = True
        self._stopping.set()
        self._inbox.put(None)
        self._worker.join()
        self._wait_for_a_broker_that_has_not_answered()
        if self._connected.is_set():  # the will is for a crash; a clean stop says so itself
            said = self.publish_availability(ha.OFFLINE)
            if said.rc == mqtt.MQTT_ERR_SUCCESS:  # not if the connection went a moment ago
                said.wait_for_publish(timeout=5)
        self._client.disconnect()
        self._client.loop_stop()

    def _wait_for_a_broker_that_has_not_answered(self) -> None:
        if self._queued_while_down and not self._connected.wait(CLOSE_WAITS_FOR_BROKER_S):
            log.warning("mqtt: stopping before %s answered (waited %.0f s); events and replies "
                        "not yet sent are dropped", self.settings.host, CLOSE_WAITS_FOR_BROKER_S)

    def _publish(self, topic: str, payload: str | bytes, retain: bool = False
                 ) -> mqtt.MQTTMessageInfo:
        info = self._client.publish(topic, payload, qos=QOS, retain=retain)
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            self._queued_while_down = True
        return info

    # -- paho callbacks (network thread: hand over, log transitions, nothing else) ---------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            log.error("mqtt: broker refused the connection: %s", reason_code)
            return
        self._reported_down = False
        set_nodelay(client)
        log.info("mqtt: connected (session present: %s)", flags.session_present)
        client.subscribe(self.topic("cmd/#"), qos=QOS)
        if self.settings.discovery:
            client.subscribe(self._birth_topic, qos=QOS)
        self.announce()
        # Connected once online is queued: a stop that saw it earlier could say offline first.
        # What was kept while down goes out right after this callback, before the stop's offline
        # is acknowledged.
        self._queued_while_down = False
        self._connected.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._reported_down:  # once per transition, not once per retry
            log.warning("mqtt: cannot reach %s; retrying with backoff", self.settings.host)
            self._reported_down = True

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        if self._closing:
            log.info("mqtt: disconnected")
        elif self._connected.is_set():
            log.warning("mqtt: disconnected (%s); reconnecting with backoff", reason_code)
        self._connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self._birth_topic:  # Home Assistant (re)started: announce again
            client.ack(message.mid, message.qos)
            if message.payload == ha.ONLINE.encode():
                self.announce()
            return
        if message.qos == 0 and self._inbox.qsize() >= MAX_WAITING_QOS0:
            return  # at most once: a QoS 0 flood is shed here, before it takes memory
        self._inbox.put(message)

    # -- the worker -------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            try:
                message = self._inbox.get(timeout=STATUS_REFRESH_S)
            except queue.Empty:
                self.publish_status(only_if_changed=True)
                continue
            if message is None:
                return
            try:
                reply = self._until_done(message)
            except Closing:
                return  # the message stays unacknowledged: the broker delivers it again
            if reply is not None:
                self.reply(reply)
            self._client.ack(message.mid, message.qos)  # only now: done (or refused for good)

    def reply(self, event: Event) -> None:
        """A command's reply on evt/<type> and, unless it was refused, the state it left on the
        status topic: for a command from MQTT and one handed over by the web page alike."""
        self.publish_event(event)
        if not isinstance(event, events.Error):
            self.publish_status()

    def _until_done(self, message: mqtt.MQTTMessage) -> Event | None:
        """Run a command; while the store cannot complete it (a lock held by another process, a
        full disk), retry in-process with backoff and do not acknowledge. Raises Closing."""
        delay_s, reported = RETRY_INITIAL_S, False
        while True:
            try:
                return self.handle(message.topic, bytes(message.payload))
            except TransientError as exc:
                if not reported:
                    log.error("mqtt: %s; retrying before acknowledging", exc)
                    reported = True
                if self._stopping.wait(delay_s):
                    raise Closing from None
                delay_s = min(RETRY_MAX_S, delay_s * 2)

    def handle(self, topic: str, payload: bytes) -> Event | None:
        """One command to its reply event. The signature and the schema are checked first
        (cheap); what fails them is refused, and only within REFUSALS_PER_S answered (None: no
        reply). What passes is paced per sender, never refused for its rate. Raises
        TransientError when it could not take effect now but may later (then it must not be
        acknowledged), Closing when the control plane closes while it waits its turn."""
        kind = topic.removeprefix(self.topic("cmd/"))
        try:
            command = self._controller.parse(kind, payload, self._signing)
        except CommandError as exc:
            return self._refused(kind, exc)
        except (StoreError, sqlite3.OperationalError) as exc:
            raise TransientError(f"{kind} command could not be checked: {exc}") from exc
        except Exception as exc:  # the control plane must outlive any one message
            log.exception("mqtt: %s command could not be read", kind)
            return self._refused(kind, CommandError("internal", str(exc), request_id_in(payload)))
        self._take_turn()
        try:
            return self._controller.execute(command)
        except CommandError as exc:  # authenticated: always answered
            log.warning("mqtt: refused %s command: %s", kind, exc)
            return error_event(exc)
        except (StoreError, sqlite3.OperationalError) as exc:
            raise TransientError(f"{kind} command could not complete: {exc}") from exc
        except Exception as exc:  # the control plane must outlive any one command
            log.exception("mqtt: %s command failed", kind)
            return events.Error(t=None, code="internal", request_id=command.request_id,
                                message=str(exc))

    def _take_turn(self) -> None:
        """Wait until the authenticated sender may run another command (RATE_PER_S)."""
        if self._pacing and self._authenticated.full():
            self._pacing = False
        while not self._authenticated.take():
            if not self._pacing:
                log.warning("mqtt: more than %.0f commands a second; running them in turn (the "
                            "broker holds the rest)", RATE_PER_S)
                self._pacing = True
            if self._stopping.wait(self._authenticated.next_in_s()):
                raise Closing

    def _refused(self, kind: str, exc: CommandError) -> Event | None:
        """The reply to a message that failed authentication or validation, or None beyond
        REFUSALS_PER_S (announced once per flood, which ends when no refusal came for a while)."""
        if self._flooded and self._refusals.full():
            self._flooded = False
        if self._refusals.take():
            log.warning("mqtt: refused %s command: %s", kind, exc)
            return error_event(exc)
        if self._flooded:
            return None
        self._flooded = True
        log.warning("mqtt: more than %.0f refused commands a second; refusing further ones "
                    "without a reply until they stop", REFUSALS_PER_S)
        return events.Error(t=None, code="rate_limited", request_id=None, message=(
            f"more than {REFUSALS_PER_S:.0f} invalid or unauthenticated commands a second: "
            "further ones are refused without a reply until they stop; valid commands still run"))

    # -- publishing -------------------------------------------------------------------------------
    def announce(self) -> None:
        """Online (the birth), then discovery, then the state: on connect and when Home Assistant
        starts. The availability topic is the only one that ever says online or offline."""
        self.publish_availability(ha.ONLINE)
        self.publish_discovery()
        self.publish_status()

    def publish_availability(self, payload: str) -> mqtt.MQTTMessageInfo:
        return self._publish(self.topic(ha.AVAILABILITY), payload, retain=True)

    def publish_event(self, ev: Event) -> None:
        self._publish(self.topic(f"evt/{ev.type}"), ev.to_json())

    def _on_event(self, ev: Event) -> None:
        """On the event sink's thread: publishing only queues in paho."""
        if isinstance(ev, events.Clip):
            self.publish_event(ev if self.settings.publish_transcripts else replace(ev, transcript=None))
            self.publish_status()
        elif isinstance(ev, FORWARDED):
            if isinstance(ev, events.Indicator):
                self._light = ev.state
            self.publish_event(ev)
            self.publish_status()  # clip count, light, waiting uploads: sweeps change them too

    def publish_status(self, only_if_changed: bool = False) -> None:
        """The status, retained. One that cannot be read now (the store busy or failing) is left
        for the next refresh: a command's ack and the worker never wait on it."""
        try:
            payload = self._status_payload()
        except Exception as exc:
            log.error("mqtt: the status could not be read (%s); it is sent again at the next "
                      "refresh", describe(exc))
            return
        if only_if_changed and payload == self._last_status:
            return
        self._last_status = payload
        self._publish(self.topic("status"), payload, retain=True)

    def publish_discovery(self) -> None:
        if self.settings.discovery:
            payload = ha.discovery_payload(self.settings, self.device_id, self.base, self._wake_words)
            self._publish(ha.discovery_topic(self.settings, self.device_id), json.dumps(payload),
                          retain=True)

    def _status_payload(self) -> str:
        """State only, always whole: every template Home Assistant applies to it can render."""
        return json.dumps({"version": __version__, **self._status(),
                           "recording": self._light == "recording"})


MIN_SECRET_BYTES = 16


def signing_of(settings: MqttSettings) -> Signing | None:
    """The signing secret, when configured. An empty or short one is a configuration error: it
    must never quietly turn signing off."""
    path = settings.signing.secret_file
    if path is None:
        return None
    secret = (read_secret(path, "mqtt.signing.secret") or "").encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"mqtt.signing.secret_file '{path}' holds {len(secret)} bytes; a signing "
                          f"secret needs at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)")
    return Signing(secret, settings.signing.max_skew_s)


def make_client(settings: MqttSettings, client_id: str, persistent: bool) -> mqtt.Client:
    """A paho client with the owner's protocol, login, TLS and reconnect settings (daemon and
    doctor). Connect it with `connect_options` (MQTT 5 sets the session there)."""
    s = settings
    if s.protocol == "5":
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5, manual_ack=persistent)
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=not persistent,
                             manual_ack=persistent)
    password = s.password or read_secret(s.password_file, "mqtt.password")
    if s.username:
        client.username_pw_set(s.username, password)
    if s.tls.enabled:
        try:
            client.tls_set(ca_certs=s.tls.ca_file, certfile=s.tls.cert_file,
                           keyfile=s.tls.key_file, cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"mqtt.tls: cannot load certificates: {exc}") from None
        client.tls_insecure_set(not s.tls.verify)
    # paho annotates the delays as int but only sleeps and doubles them: seconds as configured.
    # Rounding made 0.2 into 0, and a delay of 0 doubles to 0: a busy loop of connects while the
    # broker is down.
    client.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)  # type: ignore[arg-type]
    return client


def connect_options(settings: MqttSettings, persistent: bool) -> dict[str, Any]:
    """MQTT 5's session and limits, for every connect and reconnect (paho keeps them). A persistent
    session must not start clean: paho's default cleans it on the first connect of every process,
    which would drop the commands sent while the speaker was off."""
    if settings.protocol != "5":
        return {}
    props = Properties(PacketTypes.CONNECT)
    props.MaximumPacketSize = MAX_PACKET_BYTES
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    if persistent:
        props.SessionExpiryInterval = SESSION_NEVER_EXPIRES
    return {"clean_start": not persistent, "properties": props}


def port_of(settings: MqttSettings) -> int:
    return settings.port or (8883 if settings.tls.enabled else 1883)


def probe(settings: MqttSettings, timeout_s: float) -> tuple[bool, str]:
    """For `doctor`: connect and log in with a throwaway session; publish and subscribe nothing."""
    result: dict[str, Any] = {}
    done = threading.Event()
    client = make_client(settings, client_id="", persistent=False)

    def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        result["reason"] = reason
        done.set()

    client.on_connect = on_connect
    host, port = str(settings.host), port_of(settings)
    try:
        client.connect(host, port, keepalive=10, **connect_options(settings, persistent=False))
    except (OSError, ssl.SSLError) as exc:
        return False, f"cannot reach {host}:{port}: {exc}"
    client.loop_start()
    done.wait(timeout_s)
    client.disconnect()
    client.loop_stop()
    reason = result.get("reason")
    if reason is None or reason.is_failure:
        return False, f"{host}:{port} refused the login: {reason}"
    return True, f"connected to {host}:{port} and logged in"


def forget(settings: MqttSettings, state_dir: Path, timeout_s: float = 10.0) -> str:
    """Remove the speaker from Home Assistant and clear its retained status and availability
    (empty retained payloads), e.g. before uninstalling. Returns the topics cleared."""
    did = device_id(state_dir)
    base = f"{settings.prefix}/{did}/"
    topics = [ha.discovery_topic(settings, did), base + "status", base + ha.AVAILABILITY]
    client = make_client(settings, client_id="", persistent=False)
    done = threading.Event()
    client.on_connect = lambda *args: done.set()
    try:
        client.connect(str(settings.host), port_of(settings), keepalive=10,
                       **connect_options(settings, persistent=False))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot reach {settings.host}:{port_of(settings)}: {exc}") from None
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            raise ConfigError(f"{settings.host} did not accept the login; check mqtt.username")
        for topic in topics:
            client.publish(topic, b"", qos=QOS, retain=True).wait_for_publish(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return ", ".join(topics)
