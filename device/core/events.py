"""The event stream: one typed definition per event type, one JSON object per line, `type` first.

Each event is a frozen dataclass and the only way that event is built, so it has one shape
everywhere: the events file, MQTT (`evt/<type>`) and tests. The contract is in ARCHITECTURE.md.

`EventSink.emit` only hands the event over: a thread of the sink's own writes the JSON lines and
calls the subscribers (the MQTT adapter), so a slow stdout, file or broker never holds up the
listener that emitted it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

from device.core.errors import EdgeRecorderError, ErrorCode

IndicatorState = Literal["recording", "idle", "muted"]
"""The recording light: on while audio is kept; idle; muted (the input is closed). A light that
cannot be switched on is an `error` event (`indicator_failed`), and nothing is kept."""
DiscardReason = Literal["no_speech", "muted", "superseded", "not_owner", "not_phrase",
                        "verifier_damaged", "phrase_check_damaged", "not_confirmed",
                        "near_command"]
"""Why a wake kept nothing: no speech followed; muted while recording; a new wake word started a
new recording; the owner verifier or the phrase check turned the wake away before the light; or
that second look's weights file cannot be used (a `weights_damaged` error said why), so the wake
was discarded before the light rather than kept without it; or one of two detectors that must
agree (wake.confirm) heard it alone (`not_confirmed`); or what was said came close to a spoken
command without surely being one (`near_command`: dropped, the feedback LED said "didn't catch
that")."""
DeleteReason = Literal["command", "retention", "voice", "reject"]
"""Who deleted: a command (CLI, MQTT), the retention sweep, a spoken command, or a reject
("that wasn't for you", which also counts a false wake)."""
UploadStatus = Literal["uploaded", "retrying", "failed", "withheld"]
RemoteStatus = Literal["none_uploaded", "pending", "confirmed", "not_requested"]
AudioState = Literal["mic_back"]
ConsentState = Literal["on", "off"]

log = logging.getLogger(__name__)


class Event:
    """Base of every event type: `to_dict()` puts `type` first, then the fields in order."""

    type: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **{f.name: _plain(getattr(self, f.name))
                                      for f in dataclasses.fields(self)}}  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Wake(Event):
    """A wake word crossed its threshold (before any second look)."""

    type: ClassVar[str] = "wake"
    t: float
    wake_word: str
    score: float


@dataclass(frozen=True)
class Indicator(Event):
    """The recording light changed: recording, idle, or muted (the input is closed)."""

    type: ClassVar[str] = "indicator"
    t: float
    state: IndicatorState


@dataclass(frozen=True)
class Clip(Event):
    """A clip was stored. Over MQTT the transcript is only sent with `publish_transcripts`.
    `audio` is false when only the transcript was saved (recorder.save = "transcript")."""

    type: ClassVar[str] = "clip"
    t: float
    id: str
    start: float
    end: float
    wake_word: str
    transcript: str | None
    audio: bool = True


@dataclass(frozen=True)
class Heard(Event):
    """An utterance ended and nothing was saved (recorder.save = "nothing"): automations still hear
    of it. The transcript is only here when mqtt.publish_transcripts is on."""

    type: ClassVar[str] = "heard"
    t: float
    start: float
    end: float
    wake_word: str
    transcript: str | None


VoiceOutcome = Literal["done", "waiting", "confirmed", "not_confirmed"]
"""What became of a spoken command: carried out at once (`done`); asking for a spoken yes before
it acts (`waiting`: the feedback LED blinks slowly); carried out after that yes (`confirmed`);
dropped because no yes came in time (`not_confirmed`: nothing was done)."""


@dataclass(frozen=True)
class Voice(Event):
    """A privacy command was spoken (its name only: what was said is never in an event). The
    events it caused (deleted, save) follow with the same request id; a command that waits for a
    yes has one `voice` event for the wait and one for its end (confirmed or not), same id."""

    type: ClassVar[str] = "voice"
    t: float
    command: str
    request_id: str
    outcome: VoiceOutcome = "done"


@dataclass(frozen=True)
class Discarded(Event):
    """A recording ended without storing anything (no_speech, muted, ...)."""

    type: ClassVar[str] = "discarded"
    t: float
    reason: DiscardReason


@dataclass(frozen=True)
class Audio(Event):
    """The input came back after being lost (`mic_back`), after `away_s` seconds."""

    type: ClassVar[str] = "audio"
    t: float
    state: AudioState
    away_s: float


@dataclass(frozen=True)
class Upload(Event):
    """An upload ended: uploaded, failed (with a reason) or withheld (consent does not cover it)."""

    type: ClassVar[str] = "upload"
    id: str
    status: UploadStatus
    reason: str | None = None


@dataclass(frozen=True)
class Remote:
    """What happens to copies on the owner's upload server: `none_uploaded`, `pending` (remote
    deletes queued for `pending`), `confirmed` (the server deleted `confirmed`) or
    `not_requested` (retention never touches remote copies)."""

    status: RemoteStatus
    pending: tuple[str, ...] = ()
    confirmed: tuple[str, ...] = ()

    @classmethod
    def for_pending(cls, pending: list[str]) -> Remote:
        return cls("pending", tuple(pending)) if pending else cls("none_uploaded")


@dataclass(frozen=True)
class Deleted(Event):
    """Clips were deleted (reason: command, retention, voice, reject), or a remote delete that was
    pending is now confirmed (ids empty, remote.confirmed set)."""

    type: ClassVar[str] = "deleted"
    request_id: str | None
    ids: tuple[str, ...]
    not_found: tuple[str, ...]
    reason: DeleteReason
    remote: Remote
    replayed: bool = False


@dataclass(frozen=True)
class Consent(Event):
    """Upload consent changed (a revoke over MQTT answers with this); `purged`: uploads it removed
    from the queue."""

    type: ClassVar[str] = "consent"
    request_id: str | None
    state: ConsentState
    purged: int


@dataclass(frozen=True)
class Mute(Event):
    """The mute state after a mute command: muted if either the software or the hardware mute is on."""

    type: ClassVar[str] = "mute"
    request_id: str | None
    muted: bool
    hardware: bool
    software: bool


@dataclass(frozen=True)
class Sensitivity(Event):
    """The wake sensitivity in force changed (or was confirmed)."""

    type: ClassVar[str] = "sensitivity"
    request_id: str | None
    level: str
    configured: str


@dataclass(frozen=True)
class Save(Event):
    """What is saved changed (or was confirmed): mode in force, when a timed switch ends, and the
    configured mode it returns to."""

    type: ClassVar[str] = "save"
    request_id: str | None
    mode: str
    until: str | None
    configured: str


@dataclass(frozen=True)
class Error(Event):
    """Something was refused or failed; `request_id` names the command when one could be read."""

    type: ClassVar[str] = "error"
    t: float | None
    code: ErrorCode
    request_id: str | None
    message: str


Subscriber = Callable[[Event], None]


@dataclass
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)


class EventSink:
    """JSON lines to a file or stdout, plus in-process subscribers, on the sink's own thread."""

    def __init__(self, target: str | None = None) -> None:
        self._subscribers: list[Subscriber] = []
        self._out: IO[str] | None = None
        self._owned = False
        self._queue: queue.SimpleQueue[Event | _Flush | None] = queue.SimpleQueue()
        self._closed = False
        if target == "-":
            self._out = sys.stdout
        elif target:
            try:
                self._out = Path(target).open("a", encoding="utf-8")  # noqa: SIM115 (see close())
            except OSError as exc:
                raise EdgeRecorderError(f"cannot write events to '{target}': {exc.strerror}") from None
            self._owned = True
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.append(callback)

    def emit(self, ev: Event) -> None:
        """Hand the event over; never blocks and never does I/O on the caller's thread."""
        self._queue.put(ev)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until everything emitted so far is written and delivered."""
        if self._thread.is_alive():
            marker = _Flush()
            self._queue.put(marker)
            marker.done.wait(timeout_s)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if isinstance(item, _Flush):
                item.done.set()
                continue
            self._deliver(item)

    def _deliver(self, ev: Event) -> None:
        if self._out is not None:
            try:
                self._out.write(ev.to_json() + "\n")
                self._out.flush()
            except (OSError, ValueError) as exc:
                log.error("cannot write events any more: %s", exc)
                self._out = None
        for callback in self._subscribers:
            try:
                callback(ev)
            except Exception:  # a subscriber's bug must not silence the others
                log.exception("event subscriber failed on a %s event", ev.type)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        if self._owned and self._out is not None:
            self._out.close()
        self._out = None
