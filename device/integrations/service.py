"""systemd integration: readiness and a watchdog fed only while the audio loop is alive.

sd_notify is one datagram to $NOTIFY_SOCKET; the python-systemd binding needs libsystemd headers
to build and sdnotify is unmaintained, so this is the few lines it takes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Notifier:
    """Does nothing when not started by systemd (no $NOTIFY_SOCKET)."""

    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET")
        self._addr = "\0" + addr[1:] if addr and addr.startswith("@") else addr
        usec = os.environ.get("WATCHDOG_USEC")
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() else None

    def send(self, message: str) -> None:
        if not self._addr:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(message.encode(), self._addr)
            except OSError as exc:
                log.warning("sd_notify failed: %s", exc)


class Watchdog:
    """Sends WATCHDOG=1 every interval/2 while `alive_since()` is recent; otherwise stays silent
    so that systemd restarts a loop that is stuck."""

    def __init__(self, notifier: Notifier, alive_since: Callable[[], float]) -> None:
        self._notifier = notifier
        self._alive_since = alive_since
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> None:
        if self._notifier.watchdog_s:
            self._thread.start()

    def _run(self) -> None:
        period = (self._notifier.watchdog_s or 0) / 2
        stalled = False
        while not self._stop.wait(period / 2):
            if time.monotonic() - self._alive_since() < period:
                self._notifier.send("WATCHDOG=1")
                stalled = False
            elif not stalled:
                log.error("the audio loop has stalled; no longer feeding the watchdog")
                stalled = True

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
