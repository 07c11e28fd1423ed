"""The event stream: one JSON object per line, `type` first (contract in ARCHITECTURE.md)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from device.errors import EdgeRecorderError

Event = dict[str, Any]


def event(type_: str, **fields: Any) -> Event:
    return {"type": type_, **fields}


class EventSink:
    """Thread-safe JSON-lines writer to a file or stdout, plus in-process subscribers."""

    def __init__(self, target: str | None = None) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[Event], None]] = []
        self._out: IO[str] | None = None
        self._owned = False
        if target == "-":
            self._out = sys.stdout
        elif target:
            try:
                self._out = Path(target).open("a", encoding="utf-8")  # noqa: SIM115 (see close())
            except OSError as exc:
                raise EdgeRecorderError(f"cannot write events to '{target}': {exc.strerror}") from None
            self._owned = True

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        self._subscribers.append(callback)

    def emit(self, ev: Event) -> None:
        with self._lock:
            if self._out is not None:
                self._out.write(json.dumps(ev, ensure_ascii=False) + "\n")
                self._out.flush()
            for callback in self._subscribers:
                callback(ev)

    def close(self) -> None:
        with self._lock:
            if self._owned and self._out is not None:
                self._out.close()
            self._out = None
