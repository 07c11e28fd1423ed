"""One error root. Library errors are converted at the boundary and name the offending value."""

from __future__ import annotations

from typing import Literal

ErrorCode = Literal[
    # a command refused (MQTT, the CLI, a spoken command): nothing changed
    "bad_json", "bad_request", "too_large", "unknown_command", "unsigned", "bad_signature", "stale",
    "replayed", "request_id_reused", "refused", "rate_limited", "internal",
    # the listening loop: nothing was kept
    "indicator_failed", "store_unavailable", "store_failed", "writer_failed", "mic_lost",
    "voice_failed",
    # a second look's weights file cannot be used: the wakes it would judge are discarded
    "weights_damaged",
]
"""Every `code` an `error` event can carry (docs/architecture.md lists them from here)."""


class EdgeRecorderError(Exception):
    """Base class: a problem the user can fix; the CLI prints it as one line."""

    exit_code = 1


class ConfigError(EdgeRecorderError, ValueError):
    """The configuration file is missing, malformed or has a bad value."""

    exit_code = 2


class ModelError(EdgeRecorderError, LookupError):
    """A model is missing, fails its checksum, or cannot be loaded."""


class DownloadError(ModelError):
    """A model download failed (offline, HTTP error, checksum mismatch)."""


class AudioError(EdgeRecorderError, IOError):
    """An audio input (WAV file or device) cannot be opened or read."""


class IndicatorError(EdgeRecorderError, RuntimeError):
    """The recording light could not be set or confirmed."""


class StoreError(EdgeRecorderError, IOError):
    """The clip store cannot be opened, written or read."""


class StoreBusy(StoreError):
    """Another process holds one of the store's databases locked: nothing was changed; try again."""

    exit_code = 75  # EX_TEMPFAIL: a temporary failure, the same command can simply be repeated


class CommandError(EdgeRecorderError):
    """A refused command: becomes an `error` event with the request id when one could be read."""

    exit_code = 2

    def __init__(self, code: ErrorCode, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


MAX_REASON = 200


def describe(exc: BaseException, with_type: bool = False) -> str:
    """A library error as one short line: an OSError's strerror (and file), else the first line of
    its text (or its class name). `with_type` prefixes the class name (e.g. `SSLError: ...`)."""
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    else:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        text = lines[0] if lines else type(exc).__name__
    text = text[:MAX_REASON]
    return f"{type(exc).__name__}: {text}" if with_type else text
