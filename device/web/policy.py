"""Who may reach the page: the binding rules, checked before the server starts and by `doctor`.

Loopback needs nothing more. Any other address needs a password; and HTTPS (a certificate and
key), unless the owner starts it with --insecure-lan, which is said again at every start. Stdlib
only, so `doctor` can report on the page without the web extra installed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from device.core.config import WebSettings
from device.core.errors import ConfigError

PASSWORD_FILE = ".web-password"
"""In the state directory, owner-only: the argon2id hash of the page's password."""
LOOPBACK_NAMES = ("localhost",)


def password_path(state_dir: Path) -> Path:
    return state_dir / PASSWORD_FILE


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Binding:
    host: str
    port: int
    tls: bool
    password: bool
    warning: str | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    @property
    def protection(self) -> str:
        if is_loopback(self.host):
            who = "this device only (loopback)"
            return who + (", password required" if self.password else ", no password")
        if self.tls:
            return "the network, password required, HTTPS"
        return "the network, password required, plain HTTP (--insecure-lan: passwords and " \
               "recordings cross the network unencrypted)"


def binding(settings: WebSettings, state_dir: Path, insecure_lan: bool = False) -> Binding:
    """Where the page may listen with this configuration, or ConfigError saying what is missing."""
    tls = settings.cert_file is not None
    password = password_path(state_dir).exists()
    if is_loopback(settings.host):
        return Binding(settings.host, settings.port, tls, password)
    if not password:
        raise ConfigError(f"web.host {settings.host!r} is reachable from the network: set a "
                          "password first with `edge-recorder web passwd`")
    if tls:
        return Binding(settings.host, settings.port, tls, password)
    if not insecure_lan:
        raise ConfigError(f"web.host {settings.host!r} is reachable from the network: set "
                          "web.cert_file and web.key_file for HTTPS (or start with --insecure-lan "
                          "to send the password and recordings unencrypted)")
    return Binding(settings.host, settings.port, tls, password,
                   warning=f"the page listens on {settings.host}:{settings.port} over plain HTTP "
                           "(--insecure-lan): anyone on the network can read the password and "
                           "the recordings in transit; set web.cert_file and web.key_file")
