"""What the benchmarks share: audio as the pipeline's frames, and a listener wired like the
daemon's (the same detector, second looks, recorder, writer) around an in-memory source."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from device.app import make_recorder, make_spotter  # noqa: E402
from device.audio.vad import SpeechDetector  # noqa: E402
from device.control.commands import Controller  # noqa: E402
from device.control.mute import MuteState  # noqa: E402
from device.control.save_mode import SaveState  # noqa: E402
from device.core.config import Settings, duration_s  # noqa: E402
from device.core.events import Event, EventSink, VoiceOutcome  # noqa: E402
from device.core.frames import Frame, frames_for  # noqa: E402
from device.recording.indicator import Indicator  # noqa: E402
from device.recording.pipeline import ClipWriter, Counters, Listener, ListenerHooks, ListenerParts  # noqa: E402
from device.recording.recorder import State  # noqa: E402
from device.speech.asr import Transcriber  # noqa: E402
from device.storage.clips import ClipStore  # noqa: E402
from device.storage.models import ModelStore  # noqa: E402
from device.wake.confirm import build_detector  # noqa: E402
from device.wake.detector import OpenWakeWordDetector  # noqa: E402

FRAME = 1280


def to_frames(audio: np.ndarray) -> list[Frame]:
    n = len(audio) // FRAME
    return [Frame(i * FRAME, audio[i * FRAME:(i + 1) * FRAME]) for i in range(n)]


def build_listener(settings: Settings, models: ModelStore, state: Path, source: Any,
                   transcriber: Transcriber, gated: bool = False, voice: bool = False,
                   spotter: Any = None,
                   ) -> tuple[Listener, ClipWriter, list[Event], Indicator]:
    from gpiozero.pins.mock import MockFactory

    events: list[Event] = []
    sink = EventSink()
    sink.subscribe(events.append)
    counters = Counters()
    store = ClipStore(state)
    if voice and spotter is None:
        spotter = make_spotter(settings, transcriber)
    controller = Controller(store, MuteState(), voice=settings.voice)
    save = SaveState(settings.recorder.save, controller.preference, controller.set_preference)
    controller.save = save

    def on_command(command: str, t: float, request_id: str | None, outcome: VoiceOutcome) -> None:
        for event in controller.voice(command, t, request_id, outcome):
            sink.emit(event)

    writer = ClipWriter(transcriber, store, sink, counters, spotter=spotter, on_command=on_command,
                        save_mode=save.mode,
                        answer_end_frames=frames_for(settings.recorder.trailing_silence_s))
    indicator = Indicator(settings.indicator, MockFactory())
    scorer = OpenWakeWordDetector(settings.wake, models)
    recorder, verifier = make_recorder(settings, state, scorer, lambda: settings.wake.sensitivity)
    detector = build_detector(settings.wake.model_copy(update={"gate": gated}), scorer,
                              lambda: recorder.state is not State.LISTENING)
    speech = SpeechDetector(settings.recorder.vad_aggressiveness, settings.recorder.vad_margin_db)
    parts = ListenerParts(detector, speech, recorder, indicator, writer)
    hooks = ListenerHooks(wake_features=verifier.features_of,
                          answer_s=duration_s(settings.voice.confirm_within) if spotter else 0.0)
    listener = Listener(lambda: source, parts, sink, counters, hooks=hooks)
    return listener, writer, events, indicator
