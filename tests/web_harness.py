"""The web page served for a test: the real app, on a real uvicorn server on a free loopback port,
in a thread of the test process (as `edge-recorder web` runs it, without a process start)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import uvicorn

from device.core.config import Settings
from device.storage.clips import Clip, ClipStore
from device.web import auth, policy, server
from tests.helpers import free_port, port_open, wait_until

TONE_S = 1.5


def tone(seconds: float = TONE_S) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)


def add_clip(store: ClipStore, transcript: str | None = "turn on the light",
             seconds: float = TONE_S, audio: bool = True) -> Clip:
    return store.add(tone(seconds) if audio else None, 0.0, seconds, "hey_jarvis", 0.97, transcript)


class WebServer:
    def __init__(self, state_dir: Path, password: str | None = None,
                 settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        if password is not None:
            ClipStore(state_dir).close()
            auth.set_password(policy.password_path(state_dir), password)
        self.store = ClipStore(state_dir)
        self.port = free_port()
        web = self.settings.web.model_copy(update={"port": self.port})
        binding = policy.binding(web, state_dir)
        self.app = server.build(self.settings, self.store, binding)
        tls = {"ssl_certfile": web.cert_file, "ssl_keyfile": web.key_file}
        self.server = uvicorn.Server(uvicorn.Config(
            self.app.asgi(), host="127.0.0.1", port=self.port, http="h11", lifespan="off",
            log_level="warning", access_log=False, **tls))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: port_open(self.port), 10, "the web server did not start")
        self.url = f"{'https' if web.cert_file else 'http'}://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.server.should_exit:
            return
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.store.close()
