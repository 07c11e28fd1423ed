"""The local hand-off of commands from the web page to the running daemon.

The daemon owns the MQTT connection (one client per speaker, the only holder of the broker's
password). When it runs with MQTT, it listens on an owner-only Unix socket in the state directory;
the web process hands each command over, the daemon runs it through its own `Controller` and
announces the reply on MQTT (`evt/<type>` and a fresh status) exactly as for a command that came
over MQTT. When no daemon listens, the web process runs the same `Controller` itself (`send`
returns None): the store's locking makes that safe either way.

The socket is reached only by the speaker's own user (0600 in the 0700 state directory): the same
people who may run the CLI. So `local` (a request from the device itself, with the CLI's rights
for sensitivity and the save mode) is taken as given.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device.control.commands import MAX_PAYLOAD_BYTES, Controller, error_event
from device.core import events
from device.core.errors import CommandError, EdgeRecorderError, StoreError, describe

log = logging.getLogger(__name__)

SOCKET_NAME = ".commands.sock"
MAX_REQUEST_BYTES = MAX_PAYLOAD_BYTES + 1024
REPLY_TIMEOUT_S = 120.0
"""How long the web process waits for the daemon's reply (a delete of many clips on a slow card)."""
REQUEST_TIMEOUT_S = 5.0
"""How long the daemon waits for a request (all of it: a client trickling a byte at a time is cut
off too), and for its reply to be taken: the page sends and reads at once, so a client that stalls
(a frozen web process) never holds up the daemon's stop, which waits for the command in hand."""


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


def send(state_dir: Path, kind: str, payload: dict[str, Any], local: bool,
         timeout_s: float = REPLY_TIMEOUT_S) -> dict[str, Any] | None:
    """Hand a command to the daemon: its reply event as a dict, or None when no daemon listens."""
    request = json.dumps({"kind": kind, "payload": payload, "local": local}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(socket_path(state_dir)))
        except OSError:  # no daemon (or none this user may reach): the caller runs it itself
            return None
        try:
            sock.sendall(request)
            reply = _read_line(sock, limit=None)
        except OSError as exc:  # a daemon that hangs: the page says so and stays up
            raise StoreError(f"the daemon did not answer the command ({describe(exc)}); see "
                             "its log (journalctl -u edge-recorder)") from None
    if not reply:
        raise StoreError("the daemon closed the command socket without a reply; see its log")
    return dict(json.loads(reply))


def run(controller: Controller, kind: str, payload: dict[str, Any], local: bool) -> events.Event:
    """One command through the controller (daemon side, or the web process without a daemon)."""
    raw = json.dumps(payload).encode()
    try:
        return controller.execute(controller.parse(kind, raw, None), local=local)
    except CommandError as exc:
        return error_event(exc)


class HandoffServer:
    """The daemon's end: one thread, one command at a time, each announced by `announce`."""

    def __init__(self, state_dir: Path, controller: Controller,
                 announce: Callable[[events.Event], None]) -> None:
        self._path = socket_path(state_dir)
        self._controller = controller
        self._announce = announce
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="web-commands", daemon=True)

    def start(self) -> None:
        """Listen; if the socket cannot be made (a state directory path longer than a Unix socket
        allows), say so and go on: the page then runs its commands itself, unannounced."""
        self._path.unlink(missing_ok=True)  # left by a daemon that was killed
        old = os.umask(0o177)
        try:
            self._sock.bind(str(self._path))
            os.chmod(self._path, 0o600)
        except OSError as exc:
            log.warning("web commands: cannot listen on %s (%s); commands from the web page will "
                        "not reach MQTT", self._path, describe(exc))
            self._stop.set()
            return
        finally:
            os.umask(old)
        self._sock.listen(4)
        self._sock.settimeout(0.5)
        self._thread.start()
        log.info("web commands: listening on %s", self._path)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(REQUEST_TIMEOUT_S)
        try:
            request = json.loads(_read_line(conn, MAX_REQUEST_BYTES, REQUEST_TIMEOUT_S) or b"null")
            conn.settimeout(REQUEST_TIMEOUT_S)  # for the reply
            kind, payload, local = request["kind"], request["payload"], bool(request["local"])
            if not isinstance(kind, str) or not isinstance(payload, dict):
                raise TypeError("kind must be a string and payload an object")
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("web commands: a bad request was refused: %s", exc)
            return
        try:
            reply = run(self._controller, kind, payload, local)
        except Exception as exc:  # e.g. the store locked too long: the page says so, the daemon goes on
            if not isinstance(exc, EdgeRecorderError):
                log.exception("web commands: %s failed", kind)
            reply = events.Error(t=None, code="store_failed" if isinstance(exc, StoreError)
                                 else "internal", request_id=payload.get("request_id"),
                                 message=str(exc))
        try:
            self._announce(reply)
        except Exception:  # MQTT's trouble is not the page's: it gets its reply, the thread goes on
            log.exception("web commands: announcing the reply to %s failed", kind)
        with contextlib.suppress(OSError):  # the page gave up waiting: the effect stands
            conn.sendall(reply.to_json().encode() + b"\n")

    def close(self) -> None:
        if self._stop.is_set() and not self._thread.is_alive():
            self._sock.close()
            return
        self._stop.set()
        self._sock.close()
        if self._thread.is_alive():
            self._thread.join()
        self._path.unlink(missing_ok=True)


def _read_line(sock: socket.socket, limit: int | None, within_s: float | None = None) -> bytes:
    """One line, read to its end, or (with `limit`) to no more than about `limit` bytes: a request
    is bounded like an MQTT command; a reply is the daemon's own and may list thousands of clips.
    With `within_s`, the whole line must arrive in that time (TimeoutError)."""
    until = None if within_s is None else time.monotonic() + within_s
    data = bytearray()
    while not data.endswith(b"\n") and (limit is None or len(data) <= limit):
        if until is not None:
            sock.settimeout(max(0.001, until - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return bytes(data).strip()
