"""Control commands, one code path for the CLI and MQTT: validate (schema), authenticate (optional
HMAC), execute against the store, and build the reply event.

Remote commands can only reduce (P5): delete, revoke consent, mute. Granting consent or lifting a
hardware mute is refused whatever the payload says.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    model_validator,
)

from device.control import consent
from device.control.mute import MuteState
from device.control.save_mode import SaveState
from device.control.sensitivity import SensitivityState
from device.core import events
from device.core.config import (
    DURATION_PATTERN,
    Duration,
    Settings,
    VoiceSettings,
    at_most_max,
    describe_validation_error,
    duration_s,
)
from device.core.errors import CommandError, StoreError, describe
from device.core.events import DeleteReason
from device.storage.clips import ClipStore
from device.wake.verifier import VerifierFiles, retrain_in_child

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_IDS = 10_000
MIN_YEAR, MAX_YEAR = 1970, 9998
MAX_TS = 253_402_300_799
"""The last second of the year 9999: a signed command's `ts` lies between 0 and this."""
SIGNATURE_FIELDS = ("ts", "nonce", "sig")

RequestId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\w.:@-]+$")]
CLIP_ID_PATTERN = r"^[0-9a-f]{32}$"
ClipId = Annotated[str, StringConstraints(pattern=CLIP_ID_PATTERN)]
LastDuration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN),
                         at_most_max("; to delete everything, use all")]


def error_event(exc: CommandError) -> events.Error:
    return events.Error(t=None, code=exc.code, request_id=exc.request_id, message=str(exc))


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True,
                              defer_build=True)
    request_id: RequestId
    ts: int | None = Field(default=None, ge=0, le=MAX_TS)
    nonce: str | None = Field(default=None, min_length=8, max_length=128)
    sig: str | None = Field(default=None, max_length=128)
    reply: ClassVar[type[events.Event] | None] = None
    """The event type the command is answered with (on MQTT: evt/<type>)."""
    _body_hash: str = PrivateAttr(default="")
    _signed_nonce: str | None = PrivateAttr(default=None)

    @property
    def body_hash(self) -> str:
        """What the request id names: the command without its signature fields. The same id with
        another body is refused (a stored result is never handed out for a different command)."""
        return self._body_hash or body_hash(self.model_dump(mode="json", by_alias=True,
                                                            exclude_none=True))

    @property
    def signed_nonce(self) -> str | None:
        """The nonce of a verified signed command: recorded in the same commit as its effect."""
        return self._signed_nonce


class DeleteCommand(_Command):
    """Exactly one of: ids, from + to, last (a duration), newest (the N most recent clips),
    today (since local midnight on the device), all."""

    reply = events.Deleted

    ids: list[ClipId] | None = Field(default=None, min_length=1, max_length=MAX_IDS)
    from_: AwareDatetime | None = Field(default=None, alias="from")
    to: AwareDatetime | None = None
    last: LastDuration | None = None
    newest: int | None = Field(default=None, ge=1, le=MAX_IDS)
    today: Literal[True] | None = None
    all: Literal[True] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> DeleteCommand:
        forms = [self.ids is not None, self.from_ is not None or self.to is not None,
                 self.last is not None, self.all is not None, self.newest is not None,
                 self.today is not None]
        if sum(forms) != 1:
            raise ValueError("give exactly one of: ids, from+to, last, newest, today, all")
        if forms[1] and (self.from_ is None or self.to is None or self.from_ >= self.to):
            raise ValueError("a time range needs both 'from' and 'to', with from < to")
        for when in (self.from_, self.to):
            try:
                utc = when.astimezone(UTC) if when else None
            except OverflowError:
                utc = None
            if when is not None and (utc is None or not MIN_YEAR <= utc.year <= MAX_YEAR):
                raise ValueError(f"times must lie between the years {MIN_YEAR} and {MAX_YEAR}")
        return self

    def window(self, now: datetime) -> tuple[datetime | None, datetime | None]:
        if self.last is not None:
            return now - timedelta(seconds=duration_s(self.last)), None
        if self.today:
            local = now.astimezone()
            return local.replace(hour=0, minute=0, second=0, microsecond=0), None
        return self.from_, self.to


class ConsentCommand(_Command):
    """Revoke upload consent: uploads stop now and the queue is purged. Granting is only possible
    on the device."""

    reply = events.Consent

    action: Literal["revoke"]


class MuteCommand(_Command):
    """The software mute: muted closes the input stream. A hardware mute is lifted only by its
    button."""

    reply = events.Mute

    muted: bool


class RejectCommand(_Command):
    """"That wasn't for you": delete the clip(s) exactly as delete does and count a false wake.
    Exactly one of: ids, last (the most recent clip)."""

    reply = events.Deleted

    ids: list[ClipId] | None = Field(default=None, min_length=1, max_length=100)
    last: Literal[True] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> RejectCommand:
        if (self.ids is None) == (self.last is None):
            raise ValueError("give exactly one of: ids, last")
        return self


class SensitivityCommand(_Command):
    """The wake sensitivity: remotely only less sensitive than the level in force."""

    reply = events.Sensitivity

    level: Literal["sensitive", "balanced", "strict"]


class SaveCommand(_Command):
    """Save less: "transcript" or "nothing" (or "audio" when that is already in force), optionally
    `for` a while, after which the configured mode returns by itself."""

    reply = events.Save

    mode: Literal["audio", "transcript", "nothing"]
    for_: Duration | None = Field(default=None, alias="for")


SCHEMAS: dict[str, type[_Command]] = {
    "delete": DeleteCommand, "consent": ConsentCommand, "mute": MuteCommand,
    "reject": RejectCommand, "sensitivity": SensitivityCommand, "save": SaveCommand,
}


@dataclass(frozen=True)
class Signing:
    secret: bytes
    max_skew_s: float


def body_hash(payload: dict[str, Any]) -> str:
    body = {k: v for k, v in payload.items() if k not in SIGNATURE_FIELDS}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode()).hexdigest()


def canonical(kind: str, payload: dict[str, Any]) -> bytes:
    """What is signed: the command name and the payload without `sig`, as sorted compact JSON."""
    body = {k: v for k, v in payload.items() if k != "sig"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{kind}\n{text}".encode()


def sign(kind: str, payload: dict[str, Any], secret: bytes) -> str:
    return hmac.new(secret, canonical(kind, payload), hashlib.sha256).hexdigest()


LOCAL_DELETE_FORMS = ("clip ids (`edge-recorder clips list` shows them), --last DURATION, "
                      "--from ISO8601 --to ISO8601, or --all")


def local_delete_payload(ids: list[str], everything: bool, since: str | None, until: str | None,
                         last: str | None, request_id: str | None) -> bytes:
    """`clips delete` arguments as the same JSON an MQTT client would send, checked first in the
    CLI's own terms (its options, what an id looks like): CommandError says what to type."""
    given = [form for form, on in (("ids", bool(ids)), ("--all", everything), ("--last", last),
                                   ("--from/--to", since or until)) if on]
    if len(given) != 1:
        raise CommandError("bad_request", f"say which clips to delete: {LOCAL_DELETE_FORMS}"
                           + (f" (one of them, not {' and '.join(given)})" if given else ""))
    payload: dict[str, Any] = {"request_id": request_id or f"cli-{uuid.uuid4().hex}"}
    if ids:
        payload["ids"] = local_clip_ids(ids)
    if everything:
        payload["all"] = True
    if since or until:
        payload["from"], payload["to"] = _local_range(since, until)
    if last is not None:
        if not re.fullmatch(DURATION_PATTERN, last):
            raise CommandError("bad_request", f"--last takes a duration such as 15m, 24h or 7d "
                               f"(a number and s, m, h or d), not {last!r}")
        payload["last"] = last
    return json.dumps(payload).encode()


def local_clip_ids(ids: list[str]) -> list[str]:
    """Clip ids typed on the command line, or CommandError naming the first that is not one."""
    for cid in ids:
        if not re.fullmatch(CLIP_ID_PATTERN, cid):
            raise CommandError("bad_request", f"{cid!r} is not a clip id: an id is 32 hex "
                               "characters (0-9, a-f); `edge-recorder clips list` shows them")
    return ids


def _local_range(since: str | None, until: str | None) -> tuple[str, str]:
    """--from and --to as ISO 8601 times with their zone, from before to."""
    if not since or not until:
        raise CommandError("bad_request", "--from and --to go together: give both")
    times = []
    for option, text in (("--from", since), ("--to", until)):
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            raise CommandError("bad_request", f"{option} takes an ISO 8601 time with its zone, "
                               f"such as 2026-03-01T08:00:00+01:00 or ...Z, not {text!r}")
        times.append(when)
    if times[0] >= times[1]:
        raise CommandError("bad_request", "--from must be before --to")
    return times[0].isoformat(), times[1].isoformat()


def parse(kind: str, raw: bytes, signing: Signing | None, store: ClipStore) -> _Command:
    """Bytes from the network to a validated, authenticated command, or CommandError."""
    if kind not in SCHEMAS:
        raise CommandError("unknown_command", f"unknown command {kind!r}; use {', '.join(SCHEMAS)}",
                           request_id_in(raw))
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise CommandError("too_large", f"payload is {len(raw)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CommandError("bad_json", f"payload is not JSON: {describe(exc)}") from None
    if not isinstance(payload, dict):
        raise CommandError("bad_request", "payload must be a JSON object")
    request_id = _request_id(payload)
    if kind == "consent" and payload.get("action") == "grant":
        raise CommandError("refused", "consent can only be granted on the device", request_id)
    digest = body_hash(payload)
    nonce = verify(kind, payload, signing, store, request_id, digest) if signing else None
    try:
        command = SCHEMAS[kind].model_validate_json(raw)  # strict: "yes" is not a boolean
    except (ValidationError, RecursionError) as exc:
        reason = describe_validation_error(exc) if isinstance(exc, ValidationError) else "too deep"
        raise CommandError("bad_request", reason, request_id) from None
    command._body_hash, command._signed_nonce = digest, nonce
    return command


def request_id_in(raw: bytes) -> str | None:
    """The request id of a payload, when one can be read (for error replies), else None."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        return None
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return _request_id(payload) if isinstance(payload, dict) else None


def _request_id(payload: dict[str, Any]) -> str | None:
    rid = payload.get("request_id")
    return rid if isinstance(rid, str) and re.fullmatch(r"[\w.:@-]{1,128}", rid) else None


def parse_delete(raw: bytes, store: ClipStore) -> DeleteCommand:
    """`clips delete` on the device: the same validation as cmd/delete, without signing."""
    command = parse("delete", raw, None, store)
    assert isinstance(command, DeleteCommand)
    return command


def verify(kind: str, payload: dict[str, Any], signing: Signing, store: ClipStore,
           request_id: str | None, digest: str) -> str:
    """Check the signature and its time; return the nonce, which the command's own commit records
    (so a crash before the effect leaves it unused, and the broker's redelivery still runs)."""
    ts, nonce, sig = (payload.get(f) for f in SIGNATURE_FIELDS)
    if not isinstance(sig, str) or not isinstance(ts, int) or not isinstance(nonce, str):
        raise CommandError("unsigned", "signed commands are required: add ts, nonce and sig",
                           request_id)
    if not 0 <= ts <= MAX_TS:
        raise CommandError("bad_request", f"ts: must be unix seconds, 0 to {MAX_TS} (got a "
                           f"{len(str(abs(ts)))}-digit number)", request_id)
    if not hmac.compare_digest(sig, sign(kind, payload, signing.secret)):
        raise CommandError("bad_signature", "the signature does not match", request_id)
    if abs(time.time() - ts) > signing.max_skew_s:
        raise CommandError("stale", f"ts is more than {signing.max_skew_s:.0f} s from the device's "
                           "clock", request_id)
    requests = store.state.requests
    if requests.nonce_used(nonce) and not (request_id and requests.known(request_id, digest)):
        raise CommandError("replayed", "this nonce was already used", request_id)
    return nonce


class Controller:
    """Executes validated commands. Each reply is the event to publish."""

    def __init__(self, store: ClipStore, mute: MuteState,
                 sensitivity: SensitivityState | None = None, save: SaveState | None = None,
                 voice: VoiceSettings | None = None, wait_for_training: bool = False) -> None:
        """`wait_for_training`: a reject returns only when the owner verifier it taught has been
        trained again (the CLI); the daemon does not wait (the training runs in a child process)."""
        self.store = store
        self.wait_for_training = wait_for_training
        self.mute = mute
        self.sensitivity = sensitivity
        self.save = save
        self.voice_settings = voice or VoiceSettings()

    @classmethod
    def wired(cls, store: ClipStore, mute: MuteState, settings: Settings,
              wait_for_training: bool = False) -> tuple[Controller, SensitivityState, SaveState]:
        """The controller with the sensitivity and save-mode states it reads and sets, kept in the
        store's preferences through it: one wiring for the daemon, the web page and the CLI."""
        controller = cls(store, mute, voice=settings.voice, wait_for_training=wait_for_training)
        sensitivity = SensitivityState(settings.wake, controller.preference, controller.set_preference)
        save = SaveState(settings.recorder.save, controller.preference, controller.set_preference)
        controller.sensitivity, controller.save = sensitivity, save
        return controller, sensitivity, save

    # -- what the store keeps for the control plane (the CLI, MQTT and the status ask here) --------
    def parse(self, kind: str, raw: bytes, signing: Signing | None) -> _Command:
        """A command from the network, validated and authenticated (nonces are the store's)."""
        return parse(kind, raw, signing, self.store)

    def preference(self, name: str, default: str) -> str:
        """A setting kept across restarts (what SensitivityState and SaveState read)."""
        return self.store.state.preferences.get(name, default)

    def set_preference(self, name: str, value: str) -> None:
        self.store.state.preferences.set(name, value)

    def stats(self, days: int = 7) -> list[dict[str, Any]]:
        """Per local day, newest first (`edge-recorder stats`, the status's `today`)."""
        return self.store.state.stats.days(days)

    def count(self, counts: dict[str, int]) -> None:
        """Add to today's counters."""
        self.store.state.stats.add(counts)

    def execute(self, command: _Command, local: bool = False) -> events.Event:
        """`local`: the command comes from the device itself (the CLI's rights: sensitivity and
        the save mode may go back up to the configured level); otherwise it may only reduce (P5)."""
        if isinstance(command, DeleteCommand):
            return self.delete(command)
        if isinstance(command, ConsentCommand):
            return self.revoke_consent(command.request_id, command.signed_nonce)
        if isinstance(command, MuteCommand):
            return self.set_mute(command)
        if isinstance(command, RejectCommand):
            return self.reject(command)
        if isinstance(command, SensitivityCommand) and self.sensitivity is not None:
            level = self.sensitivity.set(command.level, remote=not local,
                                         request_id=command.request_id)
            self._spend_nonce(command)
            return events.Sensitivity(request_id=command.request_id, level=level,
                                      configured=self.sensitivity.configured)
        if isinstance(command, SaveCommand) and self.save is not None:
            for_s = duration_s(command.for_) if command.for_ else None
            saved = self.set_save(command.mode, remote=not local, for_s=for_s,
                                  request_id=command.request_id)
            self._spend_nonce(command)
            return saved
        raise CommandError("unknown_command", type(command).__name__, command.request_id)

    def set_save(self, mode: str, remote: bool, for_s: float | None = None,
                 request_id: str | None = None) -> events.Save:
        assert self.save is not None
        now = self.save.set(mode, remote=remote, for_s=for_s, request_id=request_id)
        log.info("save mode %s (%s)", now.mode, request_id)
        return events.Save(request_id=request_id, mode=now.mode, until=now.until_iso(),
                           configured=self.save.configured)

    def voice(self, command: str, t: float, request_id: str | None = None,
              outcome: events.VoiceOutcome = "done") -> list[events.Event]:
        """A spoken privacy command: the `voice` event, then what it did (deleted, save).
        `request_id`: the id its `waiting` event had, when it was confirmed first."""
        rid = request_id or f"voice-{uuid.uuid4().hex[:16]}"
        done: list[events.Event] = [events.Voice(t=t, command=command, request_id=rid,
                                                 outcome=outcome)]
        newest = self.store.newest_since(
            datetime.now(UTC) - timedelta(seconds=duration_s(self.voice_settings.delete_last_within))
        ) if command in ("delete_last", "reject") else []
        if command in ("delete_last", "reject") and not newest:
            log.info("voice %s: no clip recorded in the last %s", command,
                     self.voice_settings.delete_last_within)
            done.append(events.Deleted(request_id=rid, ids=(), not_found=(),
                                       reason="reject" if command == "reject" else "voice",
                                       remote=events.Remote("none_uploaded")))
        elif command == "delete_last":
            done.append(self.delete(DeleteCommand.model_validate({"request_id": rid, "ids": newest}),
                                    reason="voice"))
        elif command == "delete_today":
            done.append(self.delete(DeleteCommand.model_validate({"request_id": rid, "today": True}),
                                    reason="voice"))
        elif command == "reject":
            done.append(self.reject(RejectCommand.model_validate({"request_id": rid, "ids": newest})))
        elif self.save is not None:
            mode = self.save.configured if command == "start_saving" else "nothing"
            pause = duration_s(self.voice_settings.pause_for) if command == "pause_saving" else None
            done.append(self.set_save(mode, remote=False, for_s=pause, request_id=rid))
        return done

    def delete(self, cmd: DeleteCommand, reason: DeleteReason = "command") -> events.Deleted:
        since, until = cmd.window(datetime.now(UTC))
        ids = self.store.latest_ids(cmd.newest) if cmd.newest is not None else cmd.ids
        result = self.store.delete(ids=ids, since=since, until=until,
                                   everything=bool(cmd.all), request_id=cmd.request_id,
                                   body_hash=cmd.body_hash, nonce=cmd.signed_nonce)
        if result["replayed"]:
            log.info("delete %s was already done; replying with its result", cmd.request_id)
        log.info("delete %s: %d clip(s) deleted", cmd.request_id, len(result["ids"]))
        self._count_deleted(result)
        return events.Deleted(
            request_id=cmd.request_id, ids=tuple(result["ids"]), not_found=tuple(result["not_found"]),
            reason=reason, remote=events.Remote.for_pending(result.get("remote_pending", [])),
            replayed=result["replayed"],
        )

    def reject(self, cmd: RejectCommand) -> events.Deleted:
        ids = cmd.ids if cmd.ids is not None else self.store.latest_ids(1)
        seen = self._wake_features(ids)
        result = self.store.delete(ids=ids, request_id=cmd.request_id, body_hash=cmd.body_hash,
                                   nonce=cmd.signed_nonce, reason="reject")
        log.info("reject %s: %d clip(s) deleted as false wakes", cmd.request_id, len(result["ids"]))
        if not result["replayed"]:
            self._teach([seen[i] for i in result["ids"] if i in seen])
        self._count_deleted(result)
        return events.Deleted(
            request_id=cmd.request_id, ids=tuple(result["ids"]), not_found=tuple(result["not_found"]),
            reason="reject", remote=events.Remote.for_pending(result.get("remote_pending", [])),
            replayed=result["replayed"],
        )

    def _count_deleted(self, result: dict[str, Any]) -> None:
        """The owner's deletions per day (`stats`, the web page's day view); a replay is not one."""
        if result["ids"] and not result["replayed"]:
            try:
                self.count({"deleted": len(result["ids"])})
            except (StoreError, sqlite3.Error) as exc:  # a count is never worth failing a delete
                log.warning("could not count a delete: %s", exc)

    def _wake_features(self, ids: list[str]) -> dict[str, tuple[str, np.ndarray]]:
        """Read before the delete (which destroys the keys): each clip's wake features, if its
        wake word has an owner verifier."""
        files = VerifierFiles(self.store.state_dir)
        enrolled = set(files.enrolled())
        seen: dict[str, tuple[str, np.ndarray]] = {}
        if not enrolled:
            return seen
        for cid in ids:
            try:
                clip = self.store.get(cid)
            except StoreError:
                continue
            if clip.wake_word in enrolled and (f := self.store.wake_features(clip)) is not None:
                seen[cid] = (clip.wake_word, f)
        return seen

    def _teach(self, rejected: list[tuple[str, np.ndarray]]) -> None:
        """A rejected wake becomes a negative example of the owner verifier, trained again."""
        files = VerifierFiles(self.store.state_dir)
        taught = {name for name, features in rejected if files.add_negative(name, features)}
        for name in sorted(taught):
            log.info("the owner verifier for %s learns from %d rejected wake(s)", name,
                     sum(n == name for n, _ in rejected))
            retrain_in_child(self.store.state_dir, name, wait=self.wait_for_training)

    def revoke_consent(self, request_id: str, nonce: str | None = None) -> events.Consent:
        _, purged = consent.revoke(self.store, nonce)
        return events.Consent(request_id=request_id, state="off", purged=len(purged))

    def set_mute(self, cmd: MuteCommand) -> events.Mute:
        if not cmd.muted and self.mute.hardware:
            raise CommandError("refused", "a hardware mute can only be lifted by the mute button",
                               cmd.request_id)
        self.mute.set(software=cmd.muted)  # idempotent: a redelivery sets the same state
        if not self.mute.save():  # in force, but a restart would undo it: not acknowledged yet
            raise StoreError(f"the mute is {'on' if cmd.muted else 'off'} but could not be kept "
                             "in the store; it is tried again")
        self._spend_nonce(cmd)
        log.info("software mute %s (%s)", "on" if cmd.muted else "off", cmd.request_id)
        return events.Mute(request_id=cmd.request_id, muted=self.mute.muted,
                           software=self.mute.software, hardware=self.mute.hardware)

    def _spend_nonce(self, cmd: _Command) -> None:
        """After a setting took effect: its signed message cannot be replayed. (Setting it again is
        idempotent, so a crash between the two only lets the broker's redelivery set it again.)"""
        if cmd.signed_nonce:
            self.store.state.requests.use_nonce(cmd.signed_nonce)
