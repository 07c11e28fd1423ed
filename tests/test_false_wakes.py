"""False wakes must not become recordings (issue 12): the gate after a false wake, the hold window
before uploads, "that wasn't for you", sensitivity at run time, per-day stats and eval-wake."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from device.control import consent
from device.core.config import Settings
from device.storage.clips import ClipStore
from device.wake import detector as wake
from device.wake.phrase import PhraseCheck, bundled
from device.wake.trigger import Wake
from tests.helpers import (
    REAL_LOAD_OPENWAKEWORD,
    ROOT,
    WAKE_SENTENCE,
    Broker,
    add_clip,
    concat_wavs,
    indexed,
    of_type,
    read_wav,
    run,
    run_cli,
    simulate,
    wait_until,
)
from tests.test_gate import with_tone
from tests.test_mqtt import (
    Owner,
    Speaker,
    owner,  # noqa: F401  (the fixture)
    settings_for,
)
from tests.test_owner_verifier import CHATTERBOX, OWNER
from tests.test_upload import Running, record, settings
from tests.upload_server import UploadServer

WAIT_S = 20
NEAR_MISS = ("hey garvis", "en+f3")
"""An espeak-ng near miss that hey_jarvis wakes on when sensitive (0.88 in room tone), not strict."""


def test_a_real_wake_word_soon_after_a_false_wake_is_not_lost(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path, state_dir: Path
) -> None:
    false_wake = speech("hey jarvis", lead_s=1.2, tail_s=0.0)  # a wake nobody follows up
    real = speech(WAKE_SENTENCE, lead_s=0.0)
    wav = concat_wavs(tmp_path / "two.wav", false_wake, real, gap_s=1.0)
    events, source, _ = simulate(wav, state_dir, MockFactory())
    wakes = of_type(events, "wake")
    assert len(wakes) == 2, events  # both heard; before, the second fell in a 2 s refractory
    [superseded] = of_type(events, "discarded")
    assert superseded["reason"] == "superseded"
    [clip] = of_type(events, "clip")
    assert clip["start"] >= wakes[1]["t"] > wakes[0]["t"]  # the kept clip is the real command's
    # I1 against the pin history: every kept frame was captured while lit
    start, end = round(clip["start"] * 16000), round(clip["end"] * 16000)
    kept = [s for s in sorted(source.lit_at_capture) if start <= s < end]
    assert kept and all(source.lit_at_capture[s] for s in kept)
    audio, _ = read_wav(ClipStore(state_dir).export(ClipStore(state_dir).get(clip["id"]),
                                                    tmp_path / "c.wav"))
    assert np.array_equal(audio, np.concatenate([source.audio[s] for s in kept]))


def test_nothing_wakes_in_the_first_second(with_models: Path, state_dir: Path, tmp_path: Path,
                                           speech: Callable[..., Path]) -> None:
    early = speech("hey jarvis", lead_s=0.1, tail_s=2.0)  # ends before one second has passed
    events, _, _ = simulate(early, state_dir, MockFactory())
    assert all(w["t"] > 1.0 for w in of_type(events, "wake"))


# -- the hold window ------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_clip_deleted_or_rejected_inside_the_hold_window_never_leaves(
    state_dir: Path, https_server: UploadServer, tls_material: dict[str, Path]
) -> None:
    store = ClipStore(state_dir)
    consent.grant(store, ("audio",))
    recorded = time.monotonic()  # the window closes 1.5 s after this, or later
    deleted, rejected, kept = record(store), record(store), record(store)
    running = Running(store, settings(https_server, tls_material, hold_s=1.5))
    try:
        assert run(store, {"request_id": "d1", "ids": [deleted]})["ids"] == [deleted]
        assert run(store, {"request_id": "r1", "ids": [rejected]}, "reject")["reason"] == "reject"
        # a second into the window, which opened when the clips were recorded (under load the
        # commands can take half a second; a second after them, the window had closed)
        time.sleep(max(0.0, recorded + 1.0 - time.monotonic()))
        assert https_server.requests == []  # still held
        wait_until(lambda: running.of("uploaded"), WAIT_S, "never uploaded after the window")
        time.sleep(0.5)
        assert https_server.accepted == {kept: 1}  # exactly once, and nothing else ever left
    finally:
        running.close()


# -- "that wasn't for you" -------------------------------------------------------------------------

def test_reject_last_deletes_the_newest_clip_and_counts_a_false_wake(state_dir: Path) -> None:
    store = ClipStore(state_dir)
    older, newest = add_clip(store), add_clip(store)
    proc = run_cli("clips", "reject", "last")
    reply = json.loads(proc.stdout)
    assert proc.returncode == 0 and reply["ids"] == [newest] and reply["reason"] == "reject"
    assert indexed(store) == {older} and not (store.clips_dir / f"{newest}.clip").exists()
    [today] = [json.loads(x) for x in run_cli("stats").stdout.splitlines()]
    assert today["rejected"] == 1


def test_reject_over_mqtt(broker: Broker, owner: Owner, state_dir: Path) -> None:  # noqa: F811
    speaker = Speaker(state_dir, settings_for(broker))
    try:
        clip = add_clip(speaker.store)
        wait_until(lambda: owner.replies("status"), WAIT_S, "speaker never came online")
        owner.send("reject", {"request_id": "nope-1", "last": True})
        reply = owner.reply("evt/deleted", "nope-1")
        assert reply["ids"] == [clip] and reply["reason"] == "reject"
        assert indexed(speaker.store) == set()
    finally:
        speaker.close()


# -- sensitivity at run time --------------------------------------------------------------------------

def test_sensitivity_can_be_lowered_remotely_but_never_raised(broker: Broker, owner: Owner,  # noqa: F811
                                                             state_dir: Path) -> None:
    from device.control.commands import Controller
    from device.control.mute import MuteState
    from device.control.sensitivity import SensitivityState
    from device.integrations.mqtt import MqttControl

    store = ClipStore(state_dir)
    state = SensitivityState(Settings().wake, store.state.preferences.get, store.state.preferences.set)
    (state_dir / "device_id").write_text("a1b2c3d4e5f6")
    events = __import__("device.core.events", fromlist=["EventSink"]).EventSink()
    control = MqttControl(settings_for(broker), store, Controller(store, MuteState(), state),
                          lambda: {"sensitivity": state.level()}, events)
    control.start()
    try:
        wait_until(lambda: owner.replies("status"), WAIT_S, "speaker never came online")
        owner.send("sensitivity", {"request_id": "s1", "level": "sensitive"})
        assert owner.reply("evt/error", "s1")["code"] == "refused"  # P5: never more sensitive
        owner.send("sensitivity", {"request_id": "s2", "level": "strict"})
        assert owner.reply("evt/sensitivity", "s2")["level"] == "strict"
        assert state.level() == "strict"
        wait_until(lambda: owner.status().get("sensitivity") == "strict", WAIT_S, "status stale")
    finally:
        control.close()
    shown = json.loads(run_cli("sensitivity").stdout)  # kept across a restart, and on the CLI
    assert shown == {"level": "strict", "configured": "balanced"}
    assert json.loads(run_cli("sensitivity", "balanced").stdout)["level"] == "balanced"
    assert run_cli("sensitivity", "sensitive").returncode == 2


def test_the_strict_preset_does_not_wake_where_sensitive_does(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # freshly loaded models, as a daemon starts: a near miss sits close enough to the thresholds
    # that the state a reused (reset) model carries from earlier tests could tip it
    monkeypatch.setattr(wake, "load_openwakeword_model", REAL_LOAD_OPENWAKEWORD)
    # in room tone, as a microphone hears it (digital silence is not what the models expect)
    near = with_tone(speech(NEAR_MISS[0], voice=NEAR_MISS[1], lead_s=0.0, tail_s=0.0),
                     tmp_path / "near.wav", 3.0, -60)
    woke, scores = {}, {}
    for level in ("sensitive", "strict"):
        cfg = Settings.model_validate({"wake": {"sensitivity": level}})  # gated, as by default
        events, _, _ = simulate(near, tmp_path / level, MockFactory(), cfg)
        woke[level] = len(of_type(events, "wake"))
        scores[level] = [w["score"] for w in of_type(events, "wake")]
    assert woke == {"sensitive": 1, "strict": 0}, scores


NAME_WITHOUT_HEY = ("tell jarvis", "en", 190)
"""espeak-ng speech that wakes hey_jarvis over the strict threshold without "hey" before the name."""


def test_the_phrase_check_turns_away_the_name_without_hey_at_strict(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wake, "load_openwakeword_model", REAL_LOAD_OPENWAKEWORD)
    text, voice, wpm = NAME_WITHOUT_HEY
    question = speech("what time is it in Tokyo right now", lead_s=0.0, tail_s=1.5)
    takes = {"name": concat_wavs(tmp_path / "name.wav", speech(text, voice, 2.0, 0.2, wpm), question),
             "phrase": concat_wavs(tmp_path / "phrase.wav", speech("hey jarvis", voice, 2.0, 0.2, wpm),
                                   question)}
    seen = {}
    for take, check in (("name", "never"), ("name", "strict"), ("phrase", "strict")):
        cfg = Settings.model_validate({"wake": {"sensitivity": "strict", "phrase_check": check}})
        state = tmp_path / f"{take}-{check}"
        factory = MockFactory()
        events, source, _ = simulate(takes[take], state, factory, cfg)
        seen[take, check] = (len(of_type(events, "wake")), len(of_type(events, "clip")),
                             [e["reason"] for e in of_type(events, "discarded")],
                             [p.state for p in source.pin.states])
    # without the check the name alone lights the light and keeps the question that follows
    assert seen["name", "never"][:2] == (1, 1), seen
    # with it: turned away before the light, nothing on disk
    assert seen["name", "strict"] == (1, 0, ["not_phrase"], [False]), seen
    assert not [p for p in (tmp_path / "name-strict").rglob("*.wav")]
    # the whole phrase, same voice and speed, still wakes and is kept
    assert seen["phrase", "strict"][:2] == (1, 1), seen


def test_the_phrase_check_asks_only_where_it_applies() -> None:
    def features(name: str) -> np.ndarray:
        raise AssertionError(f"the phrase check looked at {name}")

    for mode, level, model in (("strict", "balanced", "hey_jarvis"), ("never", "strict", "hey_jarvis"),
                               ("always", "strict", "alexa")):
        settings = Settings.model_validate({"wake": {"models": [model], "phrase_check": mode}}).wake
        check = PhraseCheck(settings, features, lambda level=level: level)
        assert check.second_look(Wake(16000, model, 0.99)) is None
    assert bundled("hey_jarvis") is not None and bundled("/tmp/x/hey_jarvis.tflite") is None


# -- eval-wake ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_eval_wake_counts_planted_wakes_and_accidental_clips(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    (data / "positives" / "hey_jarvis").mkdir(parents=True)
    (data / "negatives").mkdir()
    for i, voice in enumerate(("en", "en-us")):
        read_back = speech("hey jarvis", voice=voice, lead_s=1.2, tail_s=1.0)
        (data / "positives" / "hey_jarvis" / f"p{i}.wav").write_bytes(read_back.read_bytes())
    plain = speech("the weather today is sunny with a light breeze from the west", lead_s=1.2)
    (data / "negatives" / "talk.wav").write_bytes(plain.read_bytes())
    # a planted wake followed by speech (kept: an accidental clip), and one followed by silence
    concat_wavs(data / "negatives" / "planted.wav", speech(WAKE_SENTENCE, lead_s=1.2),
                speech("hey jarvis", lead_s=1.0, tail_s=4.0))
    # a near miss that wakes hey_jarvis and that an owner verifier turns away
    near = speech(*CHATTERBOX)
    (data / "negatives" / "near.wav").write_bytes(near.read_bytes())
    mine_dir = data / "owners" / "hey_jarvis" / "me"
    for folder, files in (
        ("enroll", [speech("hey jarvis", OWNER, 0.2, 0.3, w) for w in (150, 160, 170, 185)]),
        ("other", [speech("I was thinking we could go to the market this afternoon.", OWNER),
                   speech("The kids want to play outside after lunch, if it is dry.", OWNER)]),
        ("test", [speech("hey jarvis", OWNER, 1.2, 1.0, w) for w in (140, 175)]),
    ):
        (mine_dir / folder).mkdir(parents=True)
        for i, f in enumerate(files):
            (mine_dir / folder / f"{i}.wav").write_bytes(f.read_bytes())
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "eval_wake.py"), str(data),
                           "--models", "hey_jarvis", "--presets", "balanced"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    row, mine = result["rows"]
    assert row["owner"] is None and mine["owner"] == "me"
    assert row["positives"] == 2 and row["recall"] == 1.0 and row["bare_recall"] == 1.0
    assert row["false_wakes"] == 3 and row["accidental_clips"] == 2  # the discarded one is not
    assert row["bare_false_wakes"] == 3 and row["turned_away"] == 0
    # with the owner's verifier: the near miss is turned away, the owner's own takes still wake
    assert mine["positives"] == 2 and mine["recall"] == 1.0 and mine["enroll_used"] >= 3
    assert mine["turned_away"] >= 1 and mine["accidental_clips"] <= 1
    assert "model | owner | preset" in proc.stdout.splitlines()[0]


def test_default_toml_still_documents_the_defaults() -> None:
    raw = tomllib.loads((ROOT / "config" / "default.toml").read_text())
    assert raw["wake"]["sensitivity"] == Settings().wake.sensitivity == "balanced"
    assert raw["wake"]["phrase_check"] == Settings().wake.phrase_check == "strict"
    assert raw["upload"]["hold_s"] == Settings().upload.hold_s == 600.0
