"""Wiring: build the daemon's parts from settings, run the listener, close everything in reverse.

Three steps, one function each, every part closed by the same ExitStack in reverse order:
- `open_shared`: the store and the run-time states that commands change and the loop reads (mute,
  sensitivity, save mode) with the one `Controller` every command goes through;
- `build_listener`: source → wake detector → second looks → recorder → light → clip writer;
- `start_services`: the watchdog, retention, and (for the one process that serves the state
  directory) uploads and MQTT.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device.audio.denoise import NoiseSuppressor, denoise_available
from device.audio.sources import AudioSource
from device.audio.vad import SpeechDetector
from device.control import consent
from device.control.commands import Controller
from device.control.handoff import HandoffServer
from device.control.mute import MuteState
from device.control.save_mode import SaveState
from device.control.sensitivity import SensitivityState
from device.core import events as ev
from device.core.config import Settings, duration_s, resolve_models_dir
from device.core.errors import EdgeRecorderError, StoreError
from device.core.events import EventSink, VoiceOutcome
from device.core.frames import frames_for
from device.integrations.service import Notifier, Watchdog
from device.recording.indicator import Confirmer, Indicator, MuteControls
from device.recording.pipeline import ClipWriter, Counters, Listener, ListenerHooks, ListenerParts
from device.recording.recorder import Recorder, State
from device.speech.asr import NoTranscriber, Transcriber, VoskTranscriber
from device.speech.voice import CommandSpotter, supports_grammar
from device.storage.clips import ClipStore
from device.storage.models import ModelStore
from device.storage.retention import Sweeper
from device.storage.stats import false_wakes
from device.wake.confirm import build_detector
from device.wake.detector import OpenWakeWordDetector, WakeDetector
from device.wake.phrase import PhraseCheck
from device.wake.verifier import WEIGHTS_DAMAGED, OwnerVerifier, VerifierFiles, retrain_in_child

if TYPE_CHECKING:
    import numpy as np

    from device.integrations.mqtt import MqttControl

log = logging.getLogger(__name__)

NO_VOSK_WARNING = (
    "no Vosk model installed: clips are stored without a transcript. Install the English one "
    "with `edge-recorder models fetch --vosk`, or register one with "
    "`edge-recorder models fetch --vosk-model DIR`"
)
CONTROL_LOCK = ".control.lock"


@dataclass(frozen=True)
class Wiring:
    """The world the daemon runs in, as its caller supplies it."""

    settings: Settings
    state_dir: Path
    open_source: Callable[[], AudioSource]
    events: EventSink
    pin_factory: Any
    retry_source: bool = False
    """Wait out a lost microphone with backoff (`run`); False: an input error ends the run (a file)."""
    keep_mute: bool = False
    """The speaker itself (`run`): it takes up the mute the store kept and keeps every change there.
    A second process (`simulate` on a file) neither reads nor writes it."""


@dataclass(frozen=True)
class Shared:
    """What every other part is handed: the store, the run-time states, the controller."""

    store: ClipStore
    models: ModelStore
    mute: MuteState
    sensitivity: SensitivityState
    save: SaveState
    controller: Controller
    counters: Counters


def make_spotter(settings: Settings, transcriber: Transcriber) -> CommandSpotter | None:
    """Voice commands need a Vosk model that can be limited to the phrases (see device/speech/voice.py)."""
    if not settings.voice.enabled or not any(settings.voice.phrases.values()):
        return None
    if not isinstance(transcriber, VoskTranscriber):
        log.info("voice commands are off: they need a Vosk model (see `edge-recorder doctor`)")
        return None
    if not supports_grammar(transcriber.model_dir):
        log.warning("voice commands are off: the Vosk model '%s' has no runtime graph (HCLr.fst, "
                    "Gr.fst), so it cannot be limited to the command phrases; the small models can",
                    transcriber.model_dir)
        return None
    denoise = settings.voice.denoise
    if denoise and not denoise_available():
        log.warning("voice.denoise: webrtc-noise-gain is not installed, so commands are heard once, "
                    "without the noise suppressor (reinstall edge-recorder)")
        denoise = False
    return CommandSpotter(settings.voice, transcriber,
                          suppressor=make_suppressor if denoise else None)


def make_suppressor(before: Sequence[np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """One utterance's noise suppressor for the command hearing, having heard the room first."""
    return NoiseSuppressor(before).process


def make_transcriber(settings: Settings, models: ModelStore) -> Transcriber:
    if not settings.asr.enabled:
        return NoTranscriber()
    if settings.asr.model:
        return VoskTranscriber(Path(settings.asr.model).expanduser())
    registered = models.vosk_model()
    if registered is None:
        log.warning(NO_VOSK_WARNING)
        return NoTranscriber()
    return VoskTranscriber(registered)


def make_recorder(settings: Settings, state_dir: Path, scorer: OpenWakeWordDetector,
                  level: Callable[[], str], events: EventSink | None = None
                  ) -> tuple[Recorder, OwnerVerifier]:
    """The recorder with the daemon's second looks before the light: the phrase check, then the
    owner verifier (which also says from which score an enrolled owner is listened for). Weights
    of theirs that cannot be used become an `error` event on `events`."""
    def report(message: str) -> None:
        if events is not None:
            events.emit(ev.Error(t=None, code=WEIGHTS_DAMAGED, request_id=None, message=message))

    files = VerifierFiles(state_dir)
    for name in files.untrained():
        log.info("the owner verifier for %s is trained again: a stop cut its last training short",
                 name)
        retrain_in_child(state_dir, name, wait=False)
    verifier = OwnerVerifier(files, scorer.features, settings.wake.verifier_threshold, report)
    phrase = PhraseCheck(settings.wake, scorer.features, level, report)
    recorder = Recorder(settings.recorder, settings.wake, level=level,
                        second_look=lambda w: phrase.second_look(w) or verifier.second_look(w),
                        owner=verifier.listens_lower)
    return recorder, verifier


def make_detector(settings: Settings, scorer: OpenWakeWordDetector, recorder: Recorder) -> WakeDetector:
    """The wake detector the loop asks on every frame: the models (microWakeWord beside openWakeWord
    where wake.confirm says so), behind the energy gate when it is on (it keeps the models running
    while a recording is open)."""
    return build_detector(settings.wake, scorer, keep_open=lambda: recorder.state is not State.LISTENING)


def _serve_alone(stack: ExitStack, state_dir: Path, settings: Settings) -> bool:
    """One process per state directory serves MQTT and uploads (the broker would otherwise see
    two clients with one id take turns): a second one, e.g. `simulate` beside the service, only
    listens. The lock goes with the process."""
    if not (settings.mqtt.host or settings.upload.url):
        return False
    fd = os.open(state_dir / CONTROL_LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        log.warning("another edge-recorder process serves MQTT and uploads for %s; this one "
                    "does not (it listens and records only)", state_dir)
        return False
    stack.callback(os.close, fd)
    return True


class StatsCounter:
    """Counts what the owner sees with `edge-recorder stats` (on the event sink's thread). While
    the save mode is "nothing", nothing is counted either: nothing touches the disk."""

    def __init__(self, count: Callable[[dict[str, int]], None],
                 save_mode: Callable[[], str] = lambda: "audio") -> None:
        self._count = count
        self._save_mode = save_mode

    def __call__(self, event: ev.Event) -> None:
        name = {ev.Wake: "wakes", ev.Clip: "kept", ev.Voice: "voice_commands"}.get(type(event))
        if isinstance(event, ev.Voice) and event.outcome not in ("done", "confirmed"):
            name = None  # one count per command carried out
        if isinstance(event, ev.Discarded):
            name = f"discarded_{event.reason}"
        if name and not isinstance(event, ev.Voice) and self._save_mode() == "nothing":
            return
        if name:
            try:
                self._count({name: 1})
            except (OSError, StoreError, sqlite3.Error) as exc:  # a count is never worth a crash
                log.warning("could not count a %s: %s", event.type, exc)


class Status:
    """The retained status that MQTT publishes (and Home Assistant shows): read afresh each time."""

    def __init__(self, shared: Shared, recorder: Recorder, hold_s: float) -> None:
        self._shared, self._recorder, self._hold_s = shared, recorder, hold_s

    def __call__(self) -> dict[str, Any]:
        s = self._shared
        today = (s.controller.stats(days=1) or [{}])[0]
        today = {"wakes": 0, **today, "false_wakes": false_wakes(today),
                 "since": local_midnight(today.get("day"))}
        return {"state": self._recorder.state.value,
                "clips": s.store.count(),
                "bytes_used": sum(size for _, _, size in s.store.bytes_used()),
                "consent": consent.read(s.store).summary(),
                "muted": {"software": s.mute.software, "hardware": s.mute.hardware},
                "waiting_uploads": s.store.uploads.waiting(),
                "held_uploads": s.store.uploads.held(self._hold_s),
                "sensitivity": s.sensitivity.level(),
                "save": s.save.current().summary(s.save.configured),
                "today": today,
                "counters": vars(s.counters).copy()}


def local_midnight(day: str | None) -> str:
    """When the counters of `day` (an ISO date; None: today) began: its local midnight, ISO 8601 with
    the offset. Home Assistant's `last_reset`: a new value starts a new cycle of the daily counts."""
    d = date.fromisoformat(day) if day else datetime.now().astimezone().date()
    return datetime.combine(d, time()).astimezone().isoformat()


def open_shared(stack: ExitStack, w: Wiring, mute: MuteState | None) -> Shared:
    """The store and the run-time states, each closed by `stack`."""
    store = ClipStore(w.state_dir)
    stack.callback(store.close)
    mute = mute or MuteState()
    controller, sensitivity, save = Controller.wired(store, mute, w.settings)
    if w.keep_mute:
        mute.keep(controller.preference, controller.set_preference,
                  has_button=w.settings.mute.button_pin is not None,
                  has_remote=bool(w.settings.mqtt.host))
    else:  # `simulate`: should it serve MQTT, a mute it acknowledges is kept for the speaker
        mute.keep_software(controller.preference, controller.set_preference)
    for state in (sensitivity, save):  # followed: the CLI, the page and voices change them
        state.start()
        stack.callback(state.close)
    models = ModelStore(resolve_models_dir(w.settings, w.state_dir))
    return Shared(store, models, mute, sensitivity, save, controller, Counters())


def make_writer(stack: ExitStack, w: Wiring, shared: Shared, confirmer: Confirmer) -> ClipWriter:
    """The clip writer (ASR, spoken commands, storing) on its own thread."""
    settings, store = w.settings, shared.store
    transcriber = make_transcriber(settings, shared.models)

    def on_command(command: str, t: float, request_id: str | None, outcome: VoiceOutcome) -> None:
        try:
            done = shared.controller.voice(command, t, request_id, outcome)
        except EdgeRecorderError as exc:
            log.error("voice command %s failed: %s", command, exc)
            w.events.emit(ev.Error(t=t, code=getattr(exc, "code", "voice_failed"),
                                   request_id=getattr(exc, "request_id", None), message=str(exc)))
            return
        confirmer.confirm()
        for event in done:
            w.events.emit(event)

    writer = ClipWriter(transcriber, store, w.events, shared.counters,
                        eligible=lambda: consent.read(store).covers,
                        spotter=make_spotter(settings, transcriber), on_command=on_command,
                        save_mode=shared.save.mode, share_transcripts=settings.mqtt.publish_transcripts,
                        feedback=confirmer,
                        answer_end_frames=frames_for(settings.recorder.trailing_silence_s))
    stack.callback(writer.close)
    return writer


def build_listener(stack: ExitStack, w: Wiring, shared: Shared, notifier: Notifier) -> Listener:
    """Source → detector → second looks → recorder → light → writer, wired to the shared states."""
    settings = w.settings
    scorer = OpenWakeWordDetector(settings.wake, shared.models)  # first: a missing model fails early
    indicator = Indicator(settings.indicator, w.pin_factory)
    stack.callback(indicator.close)
    buttons = MuteControls(settings.mute.button_pin, settings.mute.led_pin,
                           shared.mute.toggle_hardware, w.pin_factory)
    stack.callback(buttons.close)
    confirmer = Confirmer(settings.voice.confirm_led_pin, buttons, settings.voice.confirm_sound,
                          w.pin_factory)
    stack.callback(confirmer.close)
    writer = make_writer(stack, w, shared, confirmer)
    recorder, verifier = make_recorder(settings, w.state_dir, scorer, shared.sensitivity.level,
                                       w.events)
    speech = SpeechDetector(settings.recorder.vad_aggressiveness, settings.recorder.vad_margin_db)
    parts = ListenerParts(make_detector(settings, scorer, recorder), speech, recorder, indicator, writer)
    a = settings.audio
    hooks = ListenerHooks(
        can_record=lambda: shared.store.space_problem(settings.retention.min_free_bytes),
        retry=(a.retry_initial_s, a.retry_max_s) if w.retry_source else None,
        on_ready=lambda: notifier.send("READY=1\nSTATUS=listening"),
        show_muted=buttons.show, wake_features=verifier.features_of,
        answer_s=duration_s(settings.voice.confirm_within) if writer.hears_commands else 0.0)
    return Listener(w.open_source, parts, w.events, shared.counters, shared.mute, hooks)


def start_services(stack: ExitStack, w: Wiring, shared: Shared, listener: Listener,
                   notifier: Notifier, control_plane: bool) -> None:
    """The watchdog and retention always; uploads and MQTT when `control_plane` and configured, in
    the one process that serves this state directory. They stop in the reverse order: the page's
    hand-off, uploads and retention first, then what they said is published, then MQTT (an upload
    or a remote delete confirmed during the stop is still announced)."""
    watchdog = Watchdog(notifier, lambda: listener.alive_at)
    watchdog.start()
    stack.callback(watchdog.close)
    stack.callback(notifier.send, "STOPPING=1")
    serving = control_plane and _serve_alone(stack, w.state_dir, w.settings)
    mqtt = None
    if serving and w.settings.mqtt.host:
        mqtt = start_mqtt(stack, w, shared, Status(shared, listener.recorder, w.settings.upload.hold_s),
                          listener.detector.names)
        stack.callback(w.events.flush)  # before MQTT closes: the last events reach the broker
    sweeper = Sweeper(shared.store, w.settings.retention, w.events)
    sweeper.start()
    stack.callback(sweeper.close)
    if serving and w.settings.upload.url:
        from device.integrations.upload import Uploader

        uploader = Uploader(w.settings.upload, shared.store, w.events)
        uploader.start()
        stack.callback(uploader.close)
    if mqtt is not None:
        stack.callback(serve_the_web_page(w.state_dir, shared.controller, mqtt).close)


def start_mqtt(stack: ExitStack, w: Wiring, shared: Shared, status: Status,
               wake_words: list[str]) -> MqttControl:
    from device.integrations.mqtt import MqttControl

    mqtt = MqttControl(w.settings.mqtt, shared.store, shared.controller, status, w.events,
                       wake_words=wake_words)
    for state in (shared.mute, shared.sensitivity, shared.save):
        state.on_change(mqtt.publish_status)
    mqtt.start()
    stack.callback(mqtt.close)
    return mqtt


def serve_the_web_page(state_dir: Path, controller: Controller, mqtt: MqttControl) -> HandoffServer:
    """Commands from the web page (`edge-recorder web`, its own process) reach MQTT through the
    daemon: it runs them and announces each reply as it does an MQTT command's (evt + status)."""
    server = HandoffServer(state_dir, controller, mqtt.reply)
    server.start()
    return server


def run_pipeline(
    settings: Settings,
    state_dir: Path,
    open_source: Callable[[], AudioSource],
    events: EventSink,
    pin_factory: Any,
    stop: threading.Event,
    control_plane: bool = False,
    retry_source: bool = False,
    mute: MuteState | None = None,
    keep_mute: bool = False,
) -> Counters:
    """Build every part (failing early with one clear error), then listen until `stop` or the
    input ends. With `control_plane`, MQTT commands are served (mqtt.host) and consented clips
    uploaded (upload.url) meanwhile."""
    w = Wiring(settings, state_dir, open_source, events, pin_factory, retry_source, keep_mute)
    with ExitStack() as stack:
        shared = open_shared(stack, w, mute)
        notifier = Notifier()
        listener = build_listener(stack, w, shared, notifier)
        events.subscribe(StatsCounter(shared.controller.count, shared.save.mode))
        start_services(stack, w, shared, listener, notifier, control_plane)
        try:
            listener.run(stop)
        finally:
            listener.light.idle()
            listener.writer.close()  # the last clip is stored and announced while MQTT is still up
            events.flush()
    events.flush()
    return shared.counters
