"""On a Pi: systemd readiness and watchdog, a microphone that is unplugged and comes back, the
hardware mute button (gpiozero MockFactory), and the unit file's verification and security score."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from device.app import run_pipeline
from device.control.commands import Controller, MuteCommand
from device.control.mute import MuteState
from device.core.config import Settings
from device.core.errors import AudioError, StoreError
from device.core.events import Event, EventSink
from device.core.frames import Frame
from device.integrations.service import Notifier, Watchdog
from device.storage.clips import ClipStore
from tests.helpers import (
    ENTRY_POINT,
    PLAIN_SENTENCE,
    WAKE_SENTENCE,
    WatchedSource,
    file_mic,
    simulate,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "edge-recorder.service"
WEB_UNIT = ROOT / "systemd" / "edge-recorder-web.service"


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    received: list[str] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            try:
                received.append(sock.recv(4096).decode())
            except TimeoutError:
                continue

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield received
    done.set()
    t.join()
    sock.close()


@pytest.mark.slow
def test_the_watchdog_is_fed_only_while_the_loop_is_alive(
    notify_socket: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    alive = {"at": time.monotonic()}
    dog = Watchdog(Notifier(), lambda: alive["at"])
    dog.start()
    try:
        for _ in range(10):  # a live loop
            alive["at"] = time.monotonic()
            time.sleep(0.05)
        fed_while_alive = notify_socket.count("WATCHDOG=1")
        time.sleep(0.5)  # the loop stalls
        before = notify_socket.count("WATCHDOG=1")
        time.sleep(0.6)
        assert fed_while_alive >= 2
        assert notify_socket.count("WATCHDOG=1") == before  # systemd would now restart it
    finally:
        dog.close()


def test_the_daemon_reports_ready_feeds_the_watchdog_and_says_stopping(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path, notify_socket: list[str]
) -> None:
    env = {**file_mic(tmp_path, speech(PLAIN_SENTENCE), 16000), "WATCHDOG_USEC": "1000000"}
    cfg = tmp_path / "c.toml"
    cfg.write_text('[audio]\ndevice = "filemic"\nsample_rate_hz = 16000\nqueue_s = 0.5\n'
                   '[indicator]\npin_factory = "mock"\n')
    daemon = subprocess.Popen([str(ENTRY_POINT), "run", "--config", str(cfg)], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: "WATCHDOG=1" in notify_socket, 60, "no watchdog ping")
        assert any(m.startswith("READY=1") for m in notify_socket)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)
    assert daemon.returncode == 0
    wait_until(lambda: "STOPPING=1" in notify_socket, 5, "no STOPPING=1")


class ScriptedMic:
    """Sources from a script: ("frames", n) yields n silent frames then the stream dies;
    ("missing",) fails to open, like an unplugged USB microphone; ("end", n) yields n then ends."""

    def __init__(self, script: list[tuple[str, int]]) -> None:
        self.script = script
        self.opens = 0

    def __call__(self) -> object:
        kind, n = self.script[min(self.opens, len(self.script) - 1)]
        self.opens += 1
        if kind == "missing":
            raise AudioError("no input device matches 'USB'")
        return _Source(n, dies=kind == "frames")


class _Source:
    overflows = 0

    def __init__(self, n: int, dies: bool) -> None:
        self.n, self.dies, self.at, self.closed = n, dies, 0, False

    def frames(self, stop: object) -> Iterator[Frame]:
        for i in range(self.n):
            self.at = (i + 1) * 1280
            yield Frame(i * 1280, np.zeros(1280, dtype=np.int16))
        if self.dies:
            raise AudioError("the input stream stopped (was the microphone unplugged?)")

    def clock(self) -> int:
        return self.at

    def close(self) -> None:
        self.closed = True


def run_listener(state_dir: Path, open_source: Callable[[], object], settings: Settings,
                 factory: MockFactory, stop: threading.Event, mute: MuteState | None = None
                 ) -> tuple[list[Event], threading.Thread]:
    events: list[Event] = []
    sink = EventSink()
    sink.subscribe(lambda e: events.append(e.to_dict()))
    t = threading.Thread(target=run_pipeline, args=(settings, state_dir, open_source, sink, factory,
                                                    stop),
                         kwargs={"retry_source": True, "mute": mute, "keep_mute": True})  # `run`'s
    t.start()
    return events, t


def test_an_unplugged_microphone_is_reported_retried_and_resumed(
    with_models: Path, state_dir: Path
) -> None:
    mic = ScriptedMic([("frames", 20), ("missing", 0), ("missing", 0), ("end", 30)])
    settings = Settings.model_validate({"audio": {"retry_initial_s": 0.05, "retry_max_s": 0.1}})
    stop = threading.Event()
    events, t = run_listener(state_dir, mic, settings, MockFactory(), stop)
    t.join(timeout=60)
    assert not t.is_alive()
    lost = [e for e in events if e.get("code") == "mic_lost"]
    back = [e for e in events if e.get("state") == "mic_back"]
    assert len(lost) == 1 and "unplugged" in lost[0]["message"]  # once per transition
    assert len(back) == 1 and mic.opens == 4


def test_a_microphone_that_never_worked_is_an_error_not_a_restart_loop(
    with_models: Path, state_dir: Path
) -> None:
    with pytest.raises(AudioError):
        run_pipeline(Settings(), state_dir, ScriptedMic([("missing", 0)]), EventSink(), MockFactory(),
                     threading.Event(), retry_source=True)


def test_the_mute_button_closes_the_stream_and_only_the_button_lifts_it(
    with_models: Path, state_dir: Path
) -> None:
    factory = MockFactory()
    button, led = factory.pin("GPIO27"), factory.pin("GPIO22")
    sources: list[_Endless] = []

    def open_source() -> _Endless:
        sources.append(_Endless())
        return sources[-1]

    settings = Settings.model_validate({"mute": {"button_pin": "GPIO27", "led_pin": "GPIO22"}})
    stop, mute = threading.Event(), MuteState()
    events, t = run_listener(state_dir, open_source, settings, factory, stop, mute)
    try:
        wait_until(lambda: sources and sources[0].frames_given > 5, 30, "not listening")
        button.drive_low()  # press
        button.drive_high()
        wait_until(lambda: sources[0].closed, 10, "the stream was not closed")
        wait_until(lambda: led.state, 10, "the mute LED is not lit")
        # events reach subscribers on the sink's own thread: wait for it, then check nothing else came
        wait_until(lambda: [e for e in events if e["type"] == "indicator"], 10, "no indicator event")
        assert [e["state"] for e in events if e["type"] == "indicator"] == ["muted"]
        assert not factory.pin("GPIO17").state  # the recording light stays off

        assert mute.hardware and mute.muted
        store = ClipStore(state_dir)
        with pytest.raises(Exception, match="only be lifted by the mute button"):
            Controller(store, mute).execute(MuteCommand(request_id="u", muted=False))
        time.sleep(0.3)
        assert len(sources) == 1  # still muted, stream still closed

        button.drive_low()
        button.drive_high()
        wait_until(lambda: len(sources) == 2 and sources[1].frames_given > 5, 10, "not reopened")
        assert not led.state
    finally:
        stop.set()
        t.join(timeout=30)


def test_a_mute_outlives_a_restart_and_only_what_could_lift_it_lifts_it(
    with_models: Path, state_dir: Path
) -> None:
    """A crash, the watchdog, an update or a power cut is a new process with a new MuteState: the
    mute the owner set (the button, an MQTT mute) is taken up from the store before the microphone
    is opened, and only the button lifts the hardware one."""
    settings = Settings.model_validate({"mute": {"button_pin": "GPIO27", "led_pin": "GPIO22"},
                                        "mqtt": {"host": "127.0.0.1"}})  # (not started here)

    def start(mute: MuteState) -> tuple[MockFactory, list[_Endless], threading.Event,
                                        threading.Thread]:
        factory, sources, stop = MockFactory(), [], threading.Event()

        def open_source() -> _Endless:
            sources.append(_Endless())
            return sources[-1]

        _, t = run_listener(state_dir, open_source, settings, factory, stop, mute)
        return factory, sources, stop, t

    def press(factory: MockFactory) -> None:
        factory.pin("GPIO27").drive_low()
        factory.pin("GPIO27").drive_high()

    first = MuteState()
    factory, sources, stop, t = start(first)
    try:
        wait_until(lambda: sources and sources[0].frames_given > 5, 30, "not listening")
        press(factory)  # the hardware mute
        wait_until(lambda: sources[0].closed, 10, "the stream was not closed")
        store = ClipStore(state_dir)
        Controller(store, first).execute(MuteCommand(request_id="m", muted=True))  # and MQTT's
        store.close()
    finally:
        stop.set()
        t.join(timeout=30)

    again = MuteState()  # the restarted process
    factory, sources, stop, t = start(again)
    try:
        wait_until(lambda: factory.pin("GPIO22").state, 10, "the mute LED is not lit after a restart")
        assert again.hardware and again.software
        press(factory)  # the button lifts its own mute; the software one still holds
        wait_until(lambda: not again.hardware, 10, "the button did not lift the hardware mute")
        time.sleep(0.3)
        assert sources == [] and again.muted  # the microphone was never opened
    finally:
        stop.set()
        t.join(timeout=30)

    third = MuteState()
    factory, sources, stop, t = start(third)
    try:
        wait_until(lambda: third.muted, 10, "the software mute was not taken up")
        assert third.software and not third.hardware
        store = ClipStore(state_dir)
        Controller(store, third).execute(MuteCommand(request_id="u", muted=False))
        store.close()
        wait_until(lambda: sources and sources[0].frames_given > 5, 30, "not listening when unmuted")
    finally:
        stop.set()
        t.join(timeout=30)
    store = ClipStore(state_dir)
    fourth = MuteState()
    fourth.keep(store.state.preferences.get, lambda *_: None, has_button=True, has_remote=True)
    store.close()
    assert not fourth.muted  # lifted both ways, and kept lifted


def test_a_simulate_beside_the_speaker_neither_takes_up_nor_lifts_its_kept_mute(
    with_models: Path, state_dir: Path, speech: Callable[..., Path]
) -> None:
    """`simulate` on the speaker's state directory, with a configuration that has no button and
    no MQTT: it lifted the speaker's kept hardware mute (the next restart listened again), or with
    MQTT it sat out the kept mute and never ended. The mute is the speaker's (`run`) alone."""
    store = ClipStore(state_dir)
    store.state.preferences.set("mute", json.dumps({"software": True, "hardware": True}))
    store.close()
    events, _, _ = simulate(speech(WAKE_SENTENCE), state_dir, MockFactory(), Settings())
    assert [e for e in events if e["type"] == "clip"]  # it listened to its file, and ended
    store = ClipStore(state_dir)
    assert json.loads(store.state.preferences.get("mute", "{}")) == {"software": True,
                                                                      "hardware": True}
    store.close()


def test_a_mute_set_beside_the_speaker_keeps_the_speakers_hardware_half() -> None:
    """`simulate` serving MQTT while the speaker is stopped: its MQTT mute and unmute are kept for
    the speaker, and the button's mute, which it neither takes up nor could lift, stays."""
    stored = {"mute": '{"software": false, "hardware": true}'}
    mute = MuteState()
    mute.keep_software(stored.get, stored.__setitem__)
    assert not mute.muted  # not taken up: simulate listens to its file
    mute.set(software=True)
    assert json.loads(stored["mute"]) == {"software": True, "hardware": True}
    mute.set(software=False)
    assert json.loads(stored["mute"]) == {"software": False, "hardware": True}


def test_a_kept_mute_that_nothing_configured_could_lift_is_lifted_and_said(
    caplog: pytest.LogCaptureFixture
) -> None:
    """The button taken out of the configuration, or MQTT: a mute kept from before would hold for
    good, with nothing to lift it. It is lifted (and stays lifted), with a warning at start."""
    kept = {"mute": '{"software": true, "hardware": true}'}
    for has_button, has_remote, left in ((True, True, (True, True)), (False, True, (True, False)),
                                         (True, False, (False, True)), (False, False, (False, False))):
        stored = dict(kept)
        mute = MuteState()
        mute.keep(stored.get, stored.__setitem__, has_button=has_button, has_remote=has_remote)
        assert (mute.software, mute.hardware) == left
        assert json.loads(stored["mute"]) == {"software": left[0], "hardware": left[1]}
    assert "the button's mute (mute.button_pin is not set) kept from before the restart is lifted" \
        in caplog.text


def test_a_mute_that_cannot_be_kept_still_mutes_and_is_not_acknowledged(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk: the mute holds (keeping it never undoes it), the log says a restart would
    lift it, and the MQTT command that set it is not acknowledged (StoreError: the worker retries
    it unacked, and the broker redelivers it after a restart)."""
    def full_disk(name: str, value: str) -> None:
        raise OSError(28, "No space left on device")

    mute, heard = MuteState(), []
    mute.keep(lambda name, default: default, full_disk, has_button=True, has_remote=True)
    mute.on_change(lambda: heard.append(mute.muted))
    mute.set(software=True)
    assert mute.muted and heard == [True]
    assert "could not be kept in the store" in caplog.text and "a restart would lift it" in caplog.text
    store = ClipStore(state_dir)
    try:
        with pytest.raises(StoreError, match="could not be kept"):
            Controller(store, mute).execute(MuteCommand(request_id="m", muted=True))
    finally:
        store.close()
    assert mute.muted


def test_a_mute_just_before_a_stop_still_discards_the_open_recording(
    with_models: Path, state_dir: Path, speech: Callable[..., Path]
) -> None:
    """The mute button pressed mid-recording and the SIGTERM of a `systemctl stop` a moment later:
    by the time the loop looks both are set, and the mute's privacy comes first (the stop kept the
    recording as a clip)."""
    factory, mute, stop = MockFactory(), MuteState(), threading.Event()
    source = WatchedSource(speech(WAKE_SENTENCE, tail_s=3.0), factory)
    recording = source.frames

    def frames(flag: threading.Event) -> Iterator[Frame]:
        lit = 0
        for frame in recording(flag):
            yield frame
            lit += bool(source.pin.state)
            if lit == 5:
                mute.set(software=True)
                stop.set()

    source.frames = frames  # type: ignore[method-assign]
    seen: list[Event] = []
    sink = EventSink()
    sink.subscribe(seen.append)
    run_pipeline(Settings(), state_dir, lambda: source, sink, factory, stop, mute=mute)
    sink.flush()
    assert any(source.lit_at_capture.values()), "the recording never started"
    assert [e.reason for e in seen if e.type == "discarded"] == ["muted"]  # type: ignore[attr-defined]
    store = ClipStore(state_dir)
    assert [e for e in seen if e.type == "clip"] == [] and store.count() == 0
    store.close()


class _Endless(_Source):
    def __init__(self) -> None:
        super().__init__(0, dies=False)
        self.frames_given = 0

    def frames(self, stop: object) -> Iterator[Frame]:
        while not stop.is_set():  # type: ignore[attr-defined]
            self.at += 1280
            self.frames_given += 1
            time.sleep(0.005)
            yield Frame(self.at - 1280, np.zeros(1280, dtype=np.int16))


@pytest.mark.parametrize("unit", [UNIT, WEB_UNIT], ids=["daemon", "web"])
def test_the_unit_verifies_and_its_security_exposure_is_at_most_2(tmp_path: Path, unit: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    root = tmp_path / "root"
    binary = root / "opt/edge-recorder/venv/bin/edge-recorder"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(unit, root / "etc/systemd/system")
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit.name],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                              capture_output=True, text=True, timeout=60)
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout).group(1))
    assert score <= 2.0, security.stdout[-2000:]
