"""`edge-recorder web`: build the page's parts and serve them with uvicorn (h11, one process,
no reload), on the address the binding rules allow (device/web/policy.py)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path

import uvicorn

from device.control.commands import Controller
from device.control.mute import MuteState
from device.core.config import Settings, WebSettings
from device.core.errors import ConfigError, describe
from device.storage.clips import ClipStore
from device.web import policy
from device.web.actions import Commands
from device.web.app import WebApp

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
"""Past this many at once, uvicorn answers 503: a flood cannot grow the process without bound."""


def build(settings: Settings, store: ClipStore, binding: policy.Binding) -> WebApp:
    """The page over an open store: the same Controller as the CLI (it waits for nothing: a
    reject's training runs in a child process)."""
    controller, sensitivity, save = Controller.wired(store, MuteState(), settings)
    return WebApp(settings, store, Commands(controller), sensitivity, save, binding)


def check_certificate(web: WebSettings) -> None:
    """Load the certificate and key once, so a wrong path or file is one clear line."""
    if web.cert_file is None or web.key_file is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(web.cert_file,
                                                                            web.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"web.cert_file '{web.cert_file}' and web.key_file '{web.key_file}': "
                          f"cannot load them: {describe(exc)}") from None


def serve(settings: Settings, state_dir: Path, insecure_lan: bool,
          on_ready: Callable[[str], None] = lambda url: None) -> None:
    binding = policy.binding(settings.web, state_dir, insecure_lan)
    check_certificate(settings.web)
    if binding.warning:
        log.warning("%s", binding.warning)
    store = ClipStore(state_dir)
    try:
        app = build(settings, store, binding)
        config = uvicorn.Config(
            app.asgi(), host=binding.host, port=binding.port, http="h11", loop="asyncio",
            lifespan="off", ws="none", interface="asgi3", access_log=False, server_header=False,
            log_level="warning", limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=5,
            ssl_certfile=settings.web.cert_file, ssl_keyfile=settings.web.key_file)
        server = uvicorn.Server(config)
        log.info("web: the page is at %s (%s)", binding.url, binding.protection)
        on_ready(binding.url)
        try:
            server.run()
        except SystemExit:  # uvicorn's answer to a port it cannot bind (it logged why)
            raise ConfigError(f"cannot listen on {binding.host}:{binding.port}: is another "
                              "program using it? (web.host, web.port)") from None
    finally:
        store.close()
