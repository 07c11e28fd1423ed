"""Command line: parse, load settings, hand over to device.app or the store. No logic of its own."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib import resources
from pathlib import Path
from typing import Any

from device import __version__
from device.core.config import Settings, load_settings, resolve_models_dir, resolve_state_dir
from device.core.errors import EdgeRecorderError, describe
from device.core.events import EventSink
from device.storage.models import VOSK_EN, ModelStore, describe_status

log = logging.getLogger("device")

EXIT_INTERRUPTED = 130
EXIT_FILE_ERROR = 1


def sample_wav() -> Path:
    """The bundled demo: espeak-ng saying "hey jarvis, turn on the kitchen light"."""
    return Path(str(resources.files("device") / "data" / "sample.wav"))


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a nested subcommand's default must not overwrite a value given before it.
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="TOML config (default: built-in defaults, see config/default.toml)")
    common.add_argument("--state-dir", default=argparse.SUPPRESS,
                        help="where clips live (default: $EDGE_RECORDER_STATE_DIR, else XDG data)")
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="-v info, -vv debug")

    parser = argparse.ArgumentParser(
        prog="edge-recorder",
        description="Privacy-first voice front end: wake word, recording light, on-device ASR.",
    )
    parser.add_argument("--version", action="version", version=f"edge-recorder {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_listening, _add_clips, _add_owner, _add_control, _add_web, _add_models):
        add(sub, common)
    return parser


def _add_listening(sub: Any, common: argparse.ArgumentParser) -> None:
    """run, simulate, listen, devices, doctor: the loop and its checks."""
    run = sub.add_parser("run", parents=[common], help="listen on the microphone")
    run.add_argument("--events", help="write events as JSON lines to PATH, or - for stdout")

    sim = sub.add_parser("simulate", parents=[common], help="run the pipeline on a WAV file")
    sim.add_argument("file", nargs="?", type=Path, help="audio file (default: bundled sample)")
    sim.add_argument("--events", default="-", help="JSON lines to PATH, or - (default)")
    sim.add_argument("--realtime", action="store_true", help="pace the file at real time")

    listen = sub.add_parser("listen", parents=[common],
                            help="show input level, voice activity and wake scores (keeps nothing)")
    listen.add_argument("--meter", action="store_true", required=True, help="the live meter")
    listen.add_argument("--seconds", type=float, help="stop after this much audio")
    listen.add_argument("--file", type=Path, help="meter an audio file (paced in real time)")

    sub.add_parser("devices", parents=[common], help="list audio input devices")
    sub.add_parser("doctor", parents=[common],
                   help="check microphone, models, GPIO, broker, upload endpoint and storage")


def _add_clips(sub: Any, common: argparse.ArgumentParser) -> None:
    """clips list, show, export, delete, reject: the store."""
    clips = sub.add_parser("clips", parents=[common], help="read the clip store")
    csub = clips.add_subparsers(dest="clips_command", required=True)
    clist = csub.add_parser("list", parents=[common], help="list clips as JSON lines")
    clist.add_argument("--quarantined", action="store_true",
                       help="list what was set aside because it could not be read instead")
    show = csub.add_parser("show", parents=[common], help="one clip's metadata")
    show.add_argument("id")
    export = csub.add_parser("export", parents=[common], help="copy a clip's WAV out")
    export.add_argument("id")
    export.add_argument("dest", type=Path, help="a file, or a folder for <id>.wav")
    export.add_argument("--force", action="store_true", help="replace the file if it exists")
    delete = csub.add_parser("delete", parents=[common],
                             help="delete clips (the same forms as MQTT cmd/delete)")
    delete.add_argument("ids", nargs="*", help="clip ids")
    delete.add_argument("--all", action="store_true", help="delete every clip")
    delete.add_argument("--from", dest="since", metavar="ISO8601", help="recorded at or after")
    delete.add_argument("--to", dest="until", metavar="ISO8601", help="recorded before")
    delete.add_argument("--last", metavar="DURATION", help="recorded in the last 15m, 24h, 7d...")
    delete.add_argument("--request-id", help="repeat a request safely (idempotent)")
    delete.add_argument("--quarantined", action="store_true",
                        help="destroy everything quarantined (--all includes it)")
    reject = csub.add_parser("reject", parents=[common],
                             help='"that wasn\'t for you": delete a clip and count it as a false wake')
    reject.add_argument("which", nargs="+", help="clip ids, or `last` for the most recent clip")


def _add_owner(sub: Any, common: argparse.ArgumentParser) -> None:
    """enroll, stats, sensitivity, save: what the owner tunes on the device."""
    enroll = sub.add_parser(
        "enroll", parents=[common],
        help="teach the second look your voice (openWakeWord's custom verifier): a wake that does "
             "not sound like you is discarded before the light")
    enroll.add_argument("wake_word", nargs="?", help="a configured wake word (default: the first)")
    enroll.add_argument("samples", nargs="*", type=Path,
                        help="audio files of you saying the wake word, one utterance each (3 or more)")
    enroll.add_argument("--other", nargs="+", type=Path, default=[], metavar="FILE",
                        help="audio files of you saying anything else (5 s or more in all)")
    enroll.add_argument("--record", type=int, metavar="N",
                        help="record N samples and 10 s of other speech from the microphone "
                             "(the recording light is on meanwhile)")
    enroll.add_argument("--add", action="store_true",
                        help="add to the existing enrollment (another voice of the household) "
                             "instead of replacing it")
    enroll.add_argument("--remove", action="store_true",
                        help="delete the verifier of WAKE_WORD (default: every one)")
    sub.add_parser("stats", parents=[common],
                   help="wakes, kept clips, discarded (by reason) and rejected, per day")
    sens = sub.add_parser("sensitivity", parents=[common],
                          help="show the wake sensitivity, or make it less sensitive than configured")
    sens.add_argument("level", nargs="?", choices=["sensitive", "balanced", "strict"])

    save = sub.add_parser("save", parents=[common],
                          help="show what is saved, or save less (audio, transcript, nothing)")
    save.add_argument("mode", nargs="?", choices=["audio", "transcript", "nothing"],
                      help="audio: clips; transcript: text only; nothing: events only. "
                           "Never more than recorder.save")
    save.add_argument("--for", dest="for_", metavar="DURATION",
                      help="return to the configured mode after this long (e.g. 30m, 1h)")


def _add_control(sub: Any, common: argparse.ArgumentParser) -> None:
    """mqtt, uploads, wipe, consent: what leaves the device, and forgetting."""
    mqtt_cmd = sub.add_parser("mqtt", parents=[common], help="the MQTT control plane")
    mqsub = mqtt_cmd.add_subparsers(dest="mqtt_command", required=True)
    mqsub.add_parser("forget", parents=[common],
                     help="remove the speaker from Home Assistant (and its retained status)")

    uploads = sub.add_parser("uploads", parents=[common], help="the upload queue")
    usub = uploads.add_subparsers(dest="uploads_command", required=True)
    usub.add_parser("list", parents=[common], help="waiting, sent, failed uploads and remote deletes")
    requeue = usub.add_parser("requeue", parents=[common], help="try failed uploads again")
    requeue.add_argument("ids", nargs="*", help="clip ids (default: every failed upload)")

    wipe = sub.add_parser("wipe", parents=[common], help="destroy every clip, key and record")
    wipe.add_argument("--yes", action="store_true", help="do not ask (needed without a terminal)")

    con = sub.add_parser("consent", parents=[common], help="opt in or out of uploads (on the device)")
    consub = con.add_subparsers(dest="consent_command", required=True)
    grant = consub.add_parser("grant", parents=[common], help="allow uploads of clips recorded from now on")
    grant.add_argument("--scope", default="audio", help="audio, or audio,transcript (default: audio)")
    consub.add_parser("revoke", parents=[common], help="stop all uploads now; purge the upload queue")
    consub.add_parser("status", parents=[common], help="the consent record")


def _add_web(sub: Any, common: argparse.ArgumentParser) -> None:
    """web, web passwd: the local page."""
    web = sub.add_parser("web", parents=[common],
                         help="the local web page: play, delete and export clips, see what left "
                              "the device (see web.host)")
    web.add_argument("--insecure-lan", action="store_true",
                     help="allow plain HTTP on a non-loopback web.host (warned at every start)")
    wsub = web.add_subparsers(dest="web_command")
    passwd = wsub.add_parser("passwd", parents=[common],
                             help="set the page's password (read twice from the terminal, or "
                                  "once from standard input)")
    passwd.add_argument("--remove", action="store_true", help="remove the password")


def _add_models(sub: Any, common: argparse.ArgumentParser) -> None:
    """models fetch, list."""
    models = sub.add_parser("models", parents=[common], help="install and verify models")
    msub = models.add_subparsers(dest="models_command", required=True)
    fetch = msub.add_parser("fetch", parents=[common], help="install models (default: all)")
    fetch.add_argument("--wake", action="store_true", help="only the wake-word models")
    fetch.add_argument("--vosk", action="store_true", help=f"only {VOSK_EN.name}")
    fetch.add_argument("--wheel", type=Path, help="install wake models from this wheel file")
    fetch.add_argument("--vosk-zip", type=Path, help=f"install {VOSK_EN.name} from this zip")
    fetch.add_argument("--vosk-model", type=Path, help="register a Vosk model directory")
    fetch.add_argument("--vosk-url", default=VOSK_EN.url, help="mirror of the English model")
    msub.add_parser("list", parents=[common], help="installed models, verified")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(getattr(args, "verbose", 0), 2)]
    with _logging_to_stderr(level):
        try:
            return COMMANDS[args.command](args)
        except EdgeRecorderError as exc:
            return _error(str(exc), exc.exit_code)
        except BrokenPipeError:  # e.g. `clips list | head -1`: the reader left; nothing to say
            return _stdout_gone()
        except (OSError, sqlite3.Error) as exc:  # a missing or read-only folder, a full disk
            return _error(_describe_file_error(exc), EXIT_FILE_ERROR)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED


def _error(message: str, code: int) -> int:
    print(f"edge-recorder: error: {message}", file=sys.stderr)
    return code


def _describe_file_error(exc: OSError | sqlite3.Error) -> str:
    """One line for a file-system error no command turned into one of its own."""
    if isinstance(exc, sqlite3.Error):
        return f"the clip store cannot be used: {describe(exc)}"
    names = " -> ".join(f"'{name}'" for name in (exc.filename, exc.filename2) if name is not None)
    return f"{names}: {exc.strerror or describe(exc)}" if names else describe(exc)


def _stdout_gone() -> int:
    """As Python's documentation advises for SIGPIPE: stdout goes to /dev/null, so the
    interpreter's own flush at exit does not fail again."""
    with suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_FILE_ERROR


@contextmanager
def _logging_to_stderr(level: int) -> Iterator[None]:
    """edge-recorder's own log lines on stderr for the command's duration (logs never carry
    transcripts or audio). Other libraries keep Python's default: warnings and worse."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("edge-recorder: %(levelname)s: %(message)s"))
    log.addHandler(handler)
    before = log.level
    log.setLevel(level)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(before)
        log.propagate = True


def _load_tflite(settings: Settings, state_dir: Path) -> None:
    """Before any thread: TFLite's once-per-process INFO line is left out (see its docstring)."""
    from device.wake.detector import load_tflite

    load_tflite(ModelStore(resolve_models_dir(settings, state_dir)))


def _settings(args: argparse.Namespace) -> tuple[Settings, Path]:
    return (load_settings(getattr(args, "config", None)),
            resolve_state_dir(getattr(args, "state_dir", None)))


@contextmanager
def _opened_store(state_dir: Path) -> Iterator[Any]:
    """The clip store for one command, closed afterwards."""
    from device.storage.clips import ClipStore

    store = ClipStore(state_dir)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def _opened_controller(state_dir: Path, settings: Any) -> Iterator[Any]:
    """The control plane's door to what the store keeps (stats, preferences), for one command."""
    from device.control.commands import Controller
    from device.control.mute import MuteState

    with _opened_store(state_dir) as store:
        yield Controller.wired(store, MuteState(), settings)[0]


def cmd_run(args: argparse.Namespace) -> int:
    from device.app import run_pipeline
    from device.audio.sources import MicSource, load_portaudio
    from device.recording.indicator import make_pin_factory

    settings, state_dir = _settings(args)
    load_portaudio()  # before any thread: see its docstring
    _load_tflite(settings, state_dir)
    a = settings.audio
    events = EventSink(args.events)
    try:
        with _stop_on_signals() as stop:
            counters = run_pipeline(
                settings, state_dir, lambda: MicSource(a.device, a.sample_rate_hz, a.queue_s),
                events, make_pin_factory(settings.indicator.pin_factory), stop, control_plane=True,
                retry_source=True, keep_mute=True,
            )
    finally:
        events.close()
    log.info("stopped: %s", counters)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from gpiozero.pins.mock import MockFactory

    from device.app import run_pipeline
    from device.audio.sources import FileInput, load_portaudio

    settings, state_dir = _settings(args)
    if settings.voice.confirm_sound:
        load_portaudio()  # the confirm tone plays through it; before any thread
    _load_tflite(settings, state_dir)
    path = args.file or sample_wav()
    source = FileInput(path, args.realtime, settings.audio.queue_s)  # reopened after a mute
    events = EventSink(args.events)
    try:
        with _stop_on_signals() as stop:
            counters = run_pipeline(
                settings, state_dir, source, events, MockFactory(), stop,
                control_plane=True,  # the identical pipeline: MQTT and uploads too, when configured
            )
    finally:
        events.close()
    print(
        f"edge-recorder: simulated {source.source.duration_s:.1f} s of '{path.name}': "
        f"{counters.wakes} wake(s), {counters.clips} clip(s), {counters.discarded} discarded; "
        f"clips are in {state_dir}",
        file=sys.stderr,
    )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from device.doctor import run_checks
    from device.recording.indicator import make_pin_factory

    settings, state_dir = _settings(args)
    _load_tflite(settings, state_dir)
    checks = run_checks(settings, state_dir, make_pin_factory(settings.indicator.pin_factory))
    for check in checks:
        print(check.line())
    failed = [c.name for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed"
          + (f"; fix: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def cmd_listen(args: argparse.Namespace) -> int:
    from device.audio.sources import AudioSource, MicSource, WavSource
    from device.storage.models import ModelStore
    from device.wake.confirm import meter_detector
    from device.wake.detector import OpenWakeWordDetector
    from device.wake.meter import run_meter

    settings, state_dir = _settings(args)
    scorer = OpenWakeWordDetector(settings.wake, ModelStore(resolve_models_dir(settings, state_dir)))
    detector = meter_detector(settings.wake, scorer)
    a = settings.audio
    source: AudioSource = (WavSource(args.file, realtime=True) if args.file
                           else MicSource(a.device, a.sample_rate_hz, a.queue_s))
    try:
        with _stop_on_signals() as stop:
            run_meter(settings, source, detector, sys.stdout, stop, args.seconds)
    finally:
        source.close()
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from device.audio.sources import list_input_devices

    inputs = list_input_devices()
    for d in inputs:
        print(f"{d['index']:>3}  {d['name']}  ({d['max_input_channels']} ch, "
              f"default {int(d['default_samplerate'])} Hz)")
    if not inputs:
        print("edge-recorder: no audio inputs: PortAudio sees no device that can record (is the "
              "microphone plugged in? `arecord -l` lists what ALSA sees; the user must be in the "
              "`audio` group)", file=sys.stderr)
    return 0 if inputs else 1


def cmd_clips(args: argparse.Namespace) -> int:
    _, state_dir = _settings(args)
    with _opened_store(state_dir) as store:
        return CLIP_COMMANDS[args.clips_command](store, args)


def clips_list(store: Any, args: argparse.Namespace) -> int:
    for row in ([i.summary() for i in store.quarantine.items()] if args.quarantined
                else [c.summary() for c in store.all()]):
        _print_json(row)
    return 0


def clips_show(store: Any, args: argparse.Namespace) -> int:
    _print_json(store.get(args.id).summary())
    return 0


def clips_export(store: Any, args: argparse.Namespace) -> int:
    clip = store.get(args.id)
    dest = args.dest / f"{clip.id}.wav" if args.dest.is_dir() else args.dest
    if dest.exists() and not args.force:
        raise EdgeRecorderError(f"'{dest}' exists: nothing was written (--force replaces it)")
    try:
        print(store.export(clip, dest))
    except OSError as exc:
        where = Path(exc.filename) if exc.filename is not None else dest
        if dest.parent not in (where, where.parent):
            raise  # not the writing: the main error boundary names the file
        reason = exc.strerror or describe(exc)
        raise EdgeRecorderError(f"cannot write '{dest}': {reason}; nothing was written") from None
    return 0


def clips_delete(store: Any, args: argparse.Namespace) -> int:
    from device.control.commands import Controller, local_delete_payload, parse_delete
    from device.control.mute import MuteState

    if args.quarantined:
        _print_json({"quarantined_destroyed": [i.name for i in store.quarantine.destroy()]})
        if not (args.ids or args.all or args.since or args.until or args.last):
            return 0
    raw = local_delete_payload(args.ids, args.all, args.since, args.until, args.last,
                               args.request_id)
    reply = Controller(store, MuteState()).delete(parse_delete(raw, store))
    _print_json(reply.to_dict())
    return 0 if not reply.not_found else 1


def cmd_uploads(args: argparse.Namespace) -> int:
    _, state_dir = _settings(args)
    with _opened_store(state_dir) as store:
        if args.uploads_command == "list":
            for row in store.uploads.summary():
                _print_json(row)
            return 0
        again = store.uploads.requeue(args.ids or None)
    _print_json({"requeued": again})
    missing = sorted(set(args.ids) - set(again))
    if missing:
        print(f"edge-recorder: not a failed upload: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def clips_reject(store: Any, args: argparse.Namespace) -> int:
    from device.control.commands import Controller, RejectCommand, local_clip_ids
    from device.control.mute import MuteState

    last = args.which == ["last"]
    form: dict[str, Any] = {"last": True} if last else {"ids": local_clip_ids(args.which)}
    command = RejectCommand(request_id=f"cli-{uuid.uuid4().hex}", **form)
    reply = Controller(store, MuteState(), wait_for_training=True).reject(command)
    _print_json(reply.to_dict())
    if last and not reply.ids:
        print("edge-recorder: nothing to reject: there is no clip", file=sys.stderr)
    return 0 if reply.ids and not reply.not_found else 1


def cmd_mqtt(args: argparse.Namespace) -> int:
    from device.core.errors import ConfigError
    from device.core.files import ensure_private_dir
    from device.integrations.mqtt import forget

    settings, state_dir = _settings(args)
    if not settings.mqtt.host:
        raise ConfigError("mqtt.host is not set: there is no broker to forget the speaker on")
    cleared = forget(settings.mqtt, ensure_private_dir(state_dir))
    print(f"removed from Home Assistant and the broker: {cleared}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    settings, state_dir = _settings(args)
    with _opened_controller(state_dir, settings) as controller:
        for row in controller.stats():
            _print_json(row)
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    settings, state_dir = _settings(args)
    with _opened_controller(state_dir, settings) as controller:
        state = controller.sensitivity
        if args.level:
            state.set(args.level, remote=False)
        _print_json({"level": state.level(), "configured": state.configured})
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    import re

    from device.core.config import DURATION_PATTERN, MAX_DURATION, duration_s, too_long
    from device.core.errors import ConfigError

    settings, state_dir = _settings(args)
    if args.for_ is not None and (args.mode is None or not re.fullmatch(DURATION_PATTERN, args.for_)
                                  or too_long(args.for_)):
        raise ConfigError(f"--for needs a mode and a duration such as 30m or 1h (at most {MAX_DURATION})")
    with _opened_controller(state_dir, settings) as controller:
        state = controller.save
        if args.mode:
            state.set(args.mode, remote=False, for_s=duration_s(args.for_) if args.for_ else None)
        _print_json(state.current().summary(state.configured))
    return 0


RECORD_SAMPLE_S, RECORD_OTHER_S = 2.5, 10.0


def cmd_enroll(args: argparse.Namespace) -> int:
    from device.core.errors import ConfigError
    from device.wake.verifier import VerifierFiles, enrollment_features

    settings, state_dir = _settings(args)
    with _opened_store(state_dir):
        pass  # a state directory that is edge-recorder's, owner-only, before anything goes in
    files = VerifierFiles(state_dir)
    if args.remove:
        removed = files.remove(args.wake_word)
        print(f"removed the owner verifier of {', '.join(removed)}" if removed
              else "no owner verifier to remove")
        return 0
    from device.wake.detector import OpenWakeWordDetector

    detector = OpenWakeWordDetector(settings.wake, ModelStore(resolve_models_dir(settings, state_dir)))
    name, paths = _wake_word_and_samples(args.wake_word, args.samples, detector.names)
    if args.record:
        if paths or args.other:
            raise ConfigError("give audio files or --record, not both")
        samples, other = _record_enrollment(settings, name, args.record)
    else:
        if not paths:
            raise ConfigError("give audio files of the wake word (and --other), or --record N")
        samples, other = [_read(p) for p in paths], [_read(p) for p in args.other]
    found = enrollment_features(detector, name, samples, other)
    missed = [str(p) for p, ok in zip(paths, found.woke, strict=False) if not ok]
    weights = files.enroll(name, found.pos, found.neg, add=args.add)
    seen = [weights.probability(f) for f in found.pos]
    print(f"enrolled {name}: {sum(found.woke)} of {len(samples)} samples used "
          f"({len(found.pos)} wake windows, {len(found.neg)} other), training accuracy on them "
          f"{sum(p >= settings.wake.verifier_threshold for p in seen) / len(seen):.0%}; a wake that does not "
          f"sound like this voice is now discarded (`edge-recorder enroll --remove` undoes it)")
    if missed:
        print(f"these did not wake {name} and were left out: {', '.join(missed)}", file=sys.stderr)
    return 0


AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"})


def _wake_word_and_samples(given: str | None, samples: list[Path],
                           names: list[str]) -> tuple[str, list[Path]]:
    """WAKE_WORD may be left out (`enroll a.wav b.wav c.wav`): argparse then takes the first file
    for it. A first argument that is no configured wake word but a file (or names one) is a sample."""
    from device.core.errors import ConfigError

    if given is not None and given not in names and _names_a_file(given):
        samples = [Path(given), *samples]
        given = None
    name = given or names[0]
    if name not in names:
        raise ConfigError(f"{name!r} is not a configured wake word ({', '.join(names)})")
    return name, samples


def _names_a_file(text: str) -> bool:
    path = Path(text)
    return path.exists() or "/" in text or path.suffix.lower() in AUDIO_SUFFIXES


def _read(path: Path) -> Any:
    from device.audio.sources import WavSource, take

    source = WavSource(path)
    try:
        return take(source)
    finally:
        source.close()


def _record_enrollment(settings: Settings, name: str, n: int) -> tuple[list[Any], list[Any]]:
    """The microphone, with the recording light on from before the stream opens until after it
    closes: enrollment keeps audio (in RAM, until it is turned into features)."""
    from device.audio.sources import MicSource, take
    from device.recording.indicator import Indicator, make_pin_factory

    phrase = name.replace("_", " ")
    a = settings.audio
    light = Indicator(settings.indicator, make_pin_factory(settings.indicator.pin_factory))
    try:
        light.recording()
        source = MicSource(a.device, a.sample_rate_hz, a.queue_s)
        try:
            samples = []
            for i in range(n):
                print(f"({i + 1}/{n}) say \"{phrase}\" now", file=sys.stderr)
                samples.append(take(source, RECORD_SAMPLE_S))
            print(f"now talk about anything else for {RECORD_OTHER_S:.0f} s (not \"{phrase}\")",
                  file=sys.stderr)
            other = [take(source, RECORD_OTHER_S)]
        finally:
            source.close()
    finally:
        light.idle()
        light.close()
    print("recorded; the light is off", file=sys.stderr)
    return samples, other


def cmd_wipe(args: argparse.Namespace) -> int:
    from device.core.errors import ConfigError

    _, state_dir = _settings(args)
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError("wipe destroys every clip for good; pass --yes to confirm")
        if input(f"destroy every clip, key and record in {state_dir}? [y/N] ").strip().lower() != "y":
            return 1
    with _opened_store(state_dir) as store:
        n = store.wipe()
    from device.wake.verifier import VerifierFiles

    voices = VerifierFiles(state_dir).remove()
    print(f"wiped {n} clip(s): keys destroyed first, then files and records, in {state_dir}"
          + (f"; the owner verifier of {', '.join(voices)} too" if voices else ""))
    return 0


def cmd_consent(args: argparse.Namespace) -> int:
    from device.control import consent

    _, state_dir = _settings(args)
    with _opened_store(state_dir) as store:
        if args.consent_command == "grant":
            record = consent.grant(store, consent.parse_scope(args.scope))
            _print_json(record.summary())
            print("uploads allowed for clips recorded from now on (not earlier ones); "
                  "`edge-recorder consent revoke` stops them", file=sys.stderr)
        elif args.consent_command == "revoke":
            record, purged = consent.revoke(store)
            _print_json({**record.summary(), "purged": len(purged)})
        else:
            _print_json(consent.read(store).summary())
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from device.core.errors import ConfigError

    settings, state_dir = _settings(args)
    try:
        from device.web import server
    except ImportError as exc:
        raise ConfigError(f"the web page needs the `web` extra ({exc.name} is missing): "
                          "pip install 'edge-recorder[web]', or scripts/install.sh --web") from None
    if args.web_command == "passwd":
        return web_passwd(state_dir, args.remove)
    server.serve(settings, state_dir, args.insecure_lan,
                 on_ready=lambda url: print(f"edge-recorder: the page is at {url}", file=sys.stderr))
    return 0


def web_passwd(state_dir: Path, remove: bool) -> int:
    import getpass

    from device.core.errors import ConfigError
    from device.web import auth, policy

    with _opened_store(state_dir):
        pass  # a state directory that is edge-recorder's, owner-only, before anything goes in
    path = policy.password_path(state_dir)
    if remove:
        path.unlink(missing_ok=True)
        print("the page's password is removed: it opens on this device only (loopback)")
        return 0
    if sys.stdin.isatty():
        password = getpass.getpass("new password for the web page: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the two passwords differ; nothing was changed")
    else:
        password = sys.stdin.readline().rstrip("\n")
    auth.set_password(path, password)
    print(f"password set (argon2id hash in {path}); a running page asks for it from now on")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    settings, state_dir = _settings(args)
    models = ModelStore(resolve_models_dir(settings, state_dir))
    if args.models_command == "list":
        rows = models.status()
        for row in rows:
            _print_json(describe_status(row))
        return 0 if all(r.ok for r in rows if r.kind != "asr") else 1
    return models_fetch(models, args)


def models_fetch(models: ModelStore, args: argparse.Namespace) -> int:
    vosk_given = args.vosk_zip or args.vosk_model
    want_wake = args.wake or args.wheel or not (args.vosk or vosk_given)
    want_vosk = args.vosk or vosk_given or not (args.wake or args.wheel)
    if want_wake:
        paths = models.fetch_wake_models(args.wheel)
        print(f"installed {len(paths)} wake-word model files in {models.root} (sha256 verified)")
    if want_vosk:
        if args.vosk_model:
            path = models.register_vosk(args.vosk_model)
        elif args.vosk_zip:
            path = models.install_vosk_zip(args.vosk_zip)
        else:
            path = models.fetch_vosk(args.vosk_url)
        print(f"vosk model: {path}")
    return 0


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False))


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT while the command runs; the old handlers come back after."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals reach only the main thread (e.g. a command run from a test's thread)
        return
    old = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


COMMANDS = {
    "run": cmd_run, "simulate": cmd_simulate, "devices": cmd_devices, "doctor": cmd_doctor,
    "listen": cmd_listen,
    "clips": cmd_clips, "models": cmd_models, "consent": cmd_consent,
    "wipe": cmd_wipe, "enroll": cmd_enroll,
    "uploads": cmd_uploads, "stats": cmd_stats, "sensitivity": cmd_sensitivity,
    "save": cmd_save,
    "mqtt": cmd_mqtt, "web": cmd_web,
}
CLIP_COMMANDS = {
    "list": clips_list, "show": clips_show, "export": clips_export, "delete": clips_delete,
    "reject": clips_reject,
}

if __name__ == "__main__":
    sys.exit(main())
