"""Wiring: build the pipeline's parts from settings, run it, close everything in reverse."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from device.audio.sources import AudioSource
from device.audio.vad import SpeechDetector
from device.control import consent
from device.control.commands import Controller
from device.control.mute import MuteState
from device.control.save_mode import SaveState
from device.control.sensitivity import SensitivityState
from device.core import events as ev
from device.core.config import Settings, resolve_models_dir
from device.core.errors import EdgeRecorderError, StoreError
from device.core.events import EventSink
from device.integrations.service import Notifier, Watchdog
from device.recording.indicator import Confirmer, Indicator, MuteControls
from device.recording.pipeline import ClipWriter, Counters, Listener
from device.recording.recorder import Recorder, State
from device.speech.asr import NoTranscriber, Transcriber, VoskTranscriber
from device.speech.voice import CommandSpotter, supports_grammar
from device.storage.clips import ClipStore
from device.storage.models import ModelStore
from device.storage.retention import Sweeper
from device.wake.confirm import make_detector
from device.wake.detector import OpenWakeWordDetector, WakeDetector
from device.wake.phrase import PhraseCheck
from device.wake.verifier import OwnerVerifier, VerifierFiles

log = logging.getLogger(__name__)

NO_VOSK_WARNING = (
    "no Vosk model installed: clips are stored without a transcript. Install the English one "
    "with `edge-recorder models fetch --vosk`, or register one with "
    "`edge-recorder models fetch --vosk-model DIR`"
)


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
    return CommandSpotter(settings.voice, transcriber)


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
                  level: Callable[[], str]) -> tuple[Recorder, OwnerVerifier]:
    """The recorder with the daemon's second looks before the light: the phrase check, then the
    owner verifier (which also says from which score an enrolled owner is listened for)."""
    verifier = OwnerVerifier(VerifierFiles(state_dir), scorer.features,
                             settings.wake.verifier_threshold)
    phrase = PhraseCheck(settings.wake, scorer.features, level)
    recorder = Recorder(settings.recorder, settings.wake, level=level,
                        second_look=lambda w: phrase.second_look(w) or verifier.second_look(w),
                        owner=verifier.listens_lower)
    return recorder, verifier


CONTROL_LOCK = ".control.lock"


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

    def __init__(self, store: ClipStore, save_mode: Callable[[], str] = lambda: "audio") -> None:
        self._store = store
        self._save_mode = save_mode

    def __call__(self, event: ev.Event) -> None:
        name = {ev.Wake: "wakes", ev.Clip: "kept", ev.Voice: "voice_commands"}.get(type(event))
        if isinstance(event, ev.Discarded):
            name = f"discarded_{event.reason}"
        if name and not isinstance(event, ev.Voice) and self._save_mode() == "nothing":
            return
        if name:
            try:
                self._store.add_stats({name: 1})
            except (OSError, StoreError, sqlite3.Error) as exc:  # a count is never worth a crash
                log.warning("could not count a %s: %s", event.type, exc)


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
) -> Counters:
    """Build every part (failing early with one clear error), then listen until `stop` or the
    input ends. With `control_plane`, MQTT commands are served (mqtt.host) and consented clips
    uploaded (upload.url) meanwhile."""
    with ExitStack() as stack:
        store = ClipStore(state_dir)
        stack.callback(store.close)
        models = ModelStore(resolve_models_dir(settings, state_dir))
        scorer = OpenWakeWordDetector(settings.wake, models)
        detector: WakeDetector = scorer
        transcriber = make_transcriber(settings, models)
        indicator = Indicator(settings.indicator, pin_factory)
        stack.callback(indicator.close)
        counters, mute = Counters(), mute or MuteState()
        buttons = MuteControls(settings.mute.button_pin, settings.mute.led_pin,
                               mute.toggle_hardware, pin_factory)
        stack.callback(buttons.close)
        notifier = Notifier()
        sensitivity = SensitivityState(settings.wake, store.setting, store.set_setting)
        sensitivity.start()
        stack.callback(sensitivity.close)
        save = SaveState(settings.recorder.save, store.setting, store.set_setting)
        save.start()
        stack.callback(save.close)
        controller = Controller(store, mute, sensitivity, save, settings.voice)
        confirmer = Confirmer(settings.voice.confirm_led_pin, buttons.led,
                              settings.voice.confirm_sound, pin_factory)
        stack.callback(confirmer.close)

        def on_command(command: str, t: float) -> None:
            try:
                done = controller.voice(command, t)
            except EdgeRecorderError as exc:
                log.error("voice command %s failed: %s", command, exc)
                events.emit(ev.Error(t=t, code=getattr(exc, "code", "voice_failed"),
                                     request_id=getattr(exc, "request_id", None), message=str(exc)))
                return
            confirmer.confirm()
            for event in done:
                events.emit(event)

        writer = ClipWriter(transcriber, store, events, counters,
                            eligible=lambda: consent.read(store).covers,
                            spotter=make_spotter(settings, transcriber), on_command=on_command,
                            save_mode=save.mode, share_transcripts=settings.mqtt.publish_transcripts)
        stack.callback(writer.close)
        events.subscribe(StatsCounter(store, save.mode))
        recorder, verifier = make_recorder(settings, state_dir, scorer, sensitivity.level)
        detector = make_detector(settings.wake, scorer, lambda: recorder.state is not State.LISTENING)
        listener = Listener(
            open_source, detector, SpeechDetector(settings.recorder.vad_aggressiveness),
            recorder, indicator, writer, events, counters, mute,
            can_record=lambda: store.space_problem(settings.retention.min_free_bytes),
            retry=(settings.audio.retry_initial_s, settings.audio.retry_max_s) if retry_source else None,
            on_ready=lambda: notifier.send("READY=1\nSTATUS=listening"),
            show_muted=buttons.show, wake_features=verifier.features_of,
        )
        watchdog = Watchdog(notifier, lambda: listener.alive_at)
        watchdog.start()
        stack.callback(watchdog.close)
        stack.callback(notifier.send, "STOPPING=1")
        sweeper = Sweeper(store, settings.retention, events)
        sweeper.start()
        stack.callback(sweeper.close)
        control_plane = control_plane and _serve_alone(stack, state_dir, settings)
        if control_plane and settings.upload.url:
            from device.integrations.upload import Uploader

            uploader = Uploader(settings.upload, store, events)
            uploader.start()
            stack.callback(uploader.close)
        if control_plane and settings.mqtt.host:
            from device.integrations.mqtt import MqttControl

            def status() -> dict[str, Any]:
                today = (store.stats(days=1) or [{}])[0]
                false_wakes = sum(today.get("discarded", {}).values()) + today.get("rejected", 0)
                return {"state": recorder.state.value,
                        "clips": store.count(),
                        "bytes_used": sum(size for _, _, size in store.bytes_used()),
                        "consent": consent.read(store).summary(),
                        "muted": {"software": mute.software, "hardware": mute.hardware},
                        "waiting_uploads": store.uploads.waiting(),
                        "held_uploads": store.uploads.held(settings.upload.hold_s),
                        "sensitivity": sensitivity.level(),
                        "save": save.current().summary(save.configured),
                        "today": {**today, "false_wakes": false_wakes},
                        "counters": vars(counters).copy()}

            mqtt = MqttControl(settings.mqtt, store, controller, status,
                               events, wake_words=detector.names)
            mute.on_change(mqtt.publish_status)
            sensitivity.on_change(mqtt.publish_status)
            save.on_change(mqtt.publish_status)
            mqtt.start()
            stack.callback(mqtt.close)
        try:
            listener.run(stop)
        finally:
            indicator.idle()
            writer.close()  # the last clip is stored and announced while MQTT is still up
            events.flush()
    events.flush()
    return counters
