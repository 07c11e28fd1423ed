"""`edge-recorder doctor`: check what a running speaker needs, and say how to fix what fails."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device import FRAME_SAMPLES
from device.control import consent
from device.core.config import Settings, resolve_models_dir
from device.core.errors import EdgeRecorderError, ModelError

MIC_SECONDS = 0.5
NETWORK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        fix = f"\n        fix: {self.fix}" if not self.ok and self.fix else ""
        return f"[{mark}] {self.name}: {self.detail}{fix}"


def run_checks(settings: Settings, state_dir: Path, pin_factory: Any) -> list[Check]:
    checks: list[Callable[[], Check]] = [
        lambda: check_microphone(settings), lambda: check_models(settings, state_dir),
        lambda: check_gpio(settings, pin_factory), lambda: check_broker(settings),
        lambda: check_upload(settings), lambda: check_store(settings, state_dir),
        lambda: check_machine(settings, state_dir), lambda: check_voice(settings, state_dir),
        lambda: check_owner(settings, state_dir), lambda: check_web(settings, state_dir),
    ]
    return [guarded(c) for c in checks]


def guarded(check: Callable[[], Check]) -> Check:
    try:
        return check()
    except Exception as exc:  # a check that crashes is a failed check, never a traceback
        return Check("check", False, f"{type(exc).__name__}: {exc}", "please report this")


def check_microphone(settings: Settings) -> Check:
    from device.audio.sources import MicSource
    from device.audio.vad import level_dbfs

    a = settings.audio
    fix = ("list inputs with `edge-recorder devices`, set audio.device (and audio.sample_rate_hz "
           "if the device needs 44100/48000); the user must be in the `audio` group")
    try:
        mic = MicSource(a.device, a.sample_rate_hz, a.queue_s)
    except EdgeRecorderError as exc:
        return Check("microphone", False, str(exc), fix)
    try:
        samples = _capture(mic)
    finally:
        mic.close()
    if samples.size == 0:
        return Check("microphone", False, f"'{mic.device_info['name']}' opened but delivered no audio", fix)
    level = level_dbfs(samples, -120.0)
    silent = level < -85
    return Check("microphone", not silent,
                 f"'{mic.device_info['name']}' at {mic.sample_rate} Hz, input level {level:.0f} dBFS",
                 "the input is silent: check the mic is not muted in `alsamixer` and its gain")


def _capture(mic: Any) -> np.ndarray:
    stop = threading.Event()
    got: list[np.ndarray] = []
    deadline = time.monotonic() + MIC_SECONDS + 2
    for frame in mic.frames(stop):
        got.append(frame.samples)
        if len(got) * 0.08 >= MIC_SECONDS or time.monotonic() > deadline:
            break
    return np.concatenate(got) if got else np.zeros(0, dtype=np.int16)


def check_models(settings: Settings, state_dir: Path) -> Check:
    """The files against their pinned digests, then the wake-word runtime itself: the models are
    loaded and score a frame, as the daemon would."""
    from device.storage.models import ModelStore
    from device.wake.confirm import build_detector
    from device.wake.detector import OpenWakeWordDetector

    store = ModelStore(resolve_models_dir(settings, state_dir))
    rows = store.status()
    needed = {"melspectrogram", "embedding", *settings.wake.models}
    bad = [r for r in rows if r.name in needed and not r.ok]
    if bad:
        return Check("models", False, "; ".join(f"{r.name}: {r.detail}" for r in bad),
                     "run `edge-recorder models fetch --wake` (offline: `--wheel FILE`)")
    try:
        scorer = OpenWakeWordDetector(settings.wake, store)
        detectors = detectors_used(settings, scorer)
        build_detector(settings.wake, scorer).scores(np.zeros(FRAME_SAMPLES, dtype=np.int16))
    except EdgeRecorderError as exc:
        return Check("models", False, f"the wake-word runtime does not load: {exc}",
                     str(exc).rpartition("; ")[2] or "run scripts/setup")
    vosk = next(r for r in rows if r.kind == "asr")
    asr = "ASR model verified" if vosk.ok else f"no ASR model ({vosk.detail}): clips get no transcript"
    return Check("models", True, f"wake words verified and loaded: {detectors}; {asr}")


def detectors_used(settings: Settings, scorer: Any) -> str:
    """Which detectors each wake word uses, and from which score each fires, e.g. "alexa:
    openWakeWord + microWakeWord (cascade, from 0.3 and 0.9)"."""
    from device.wake.confirm import confirm_modes

    modes = confirm_modes(settings.wake, scorer.names)
    plain = [n for n, m in modes.items() if m != "cascade"]
    if plain and "cascade" in modes.values():  # they share openWakeWord's front end
        modes = {n: f"{m}, as agree while {', '.join(plain)} needs openWakeWord on every frame"
                 if m == "cascade" else m for n, m in modes.items()}
    wake = settings.wake

    def pair(name: str, mode: str) -> str:
        if mode == "none":
            return f"{name}: openWakeWord (from {wake.threshold_for(name, confirmed=False):g})"
        return (f"{name}: openWakeWord + microWakeWord ({mode}, from "
                f"{wake.threshold_for(name, confirmed=True):g} and {wake.confirm_threshold_for(name):g})")

    return ", ".join(pair(name, mode) for name, mode in modes.items())


def check_gpio(settings: Settings, pin_factory: Any) -> Check:
    from device.recording.indicator import Indicator

    try:
        led = Indicator(settings.indicator, pin_factory)
    except EdgeRecorderError as exc:
        return Check("gpio", False, str(exc),
                     "check indicator.pin; add the user to the `gpio` group; on a Pi 5 install lgpio "
                     "(`pip install '.[pi]'`)")
    try:
        led.recording()
        led.idle()
        return Check("gpio", True, f"recording LED on {settings.indicator.pin} switches and reads "
                                   f"back (pin driver: {led.driver})")
    except EdgeRecorderError as exc:
        return Check("gpio", False, str(exc), "check the LED's wiring and indicator.active_high")
    finally:
        led.close()


def check_broker(settings: Settings) -> Check:
    if not settings.mqtt.host:
        return Check("mqtt", True, "not configured (nothing is sent anywhere)")
    from device.integrations import mqtt

    ok, detail = mqtt.probe(settings.mqtt, NETWORK_TIMEOUT_S)
    fix = ("check mqtt.username and the password (file)" if "refused the login" in detail else
           "check mqtt.host/port, that the broker runs, and mqtt.tls.ca_file for TLS")
    return Check("mqtt", ok, f"{detail}; {protection(settings)}", fix)


def protection(settings: Settings) -> str:
    """Which protections guard the commands (README: "Home Assistant")."""
    m = settings.mqtt
    parts = [("TLS" + ("" if m.tls.verify else " WITHOUT certificate checks")) if m.tls.enabled
             else "no TLS", f"login as {m.username!r}" if m.username else "anonymous login",
             "HMAC-signed commands" if m.signing.secret_file else "unsigned commands (use a broker "
             "ACL so only Home Assistant may publish to cmd/)"]
    return "protection: " + ", ".join(parts)


def check_upload(settings: Settings) -> Check:
    if not settings.upload.url:
        return Check("upload", True, "not configured (nothing is uploaded, whatever consent says)")
    from device.integrations import upload

    ok, detail = upload.probe(settings.upload, NETWORK_TIMEOUT_S)
    return Check("upload", ok, detail, "check upload.url, the network, and upload.ca_file for a private CA")


def check_store(settings: Settings, state_dir: Path) -> Check:
    from device.storage.clips import ClipStore

    try:
        store = ClipStore(state_dir)
    except EdgeRecorderError as exc:
        return Check("storage", False, str(exc), "fix the state directory's permissions, or --state-dir")
    try:
        problem = store.space_problem(settings.retention.min_free_bytes)
        c = consent.read(store).summary()
        detail = f"{store.count()} clip(s) in {state_dir}; uploads consent: {c['state']}"
        if set_aside := store.quarantine.count():
            detail += (f"; {set_aside} item(s) quarantined (`edge-recorder clips list "
                       "--quarantined`; they expire with retention)")
    finally:
        store.close()
    if problem:
        return Check("storage", False, problem,
                     "free some space (`edge-recorder clips delete --last 7d`), lower retention.max_bytes, "
                     "or lower retention.min_free_bytes")
    return Check("storage", True, detail)



def check_web(settings: Settings, state_dir: Path) -> Check:
    """Whether the web page is on (something answers where it would listen), where, and who may
    reach it. A page that is off is fine: it is off until the owner turns it on."""
    from device.web import policy

    w = settings.web
    host = "127.0.0.1" if w.host in ("0.0.0.0", "::", "") else w.host.strip("[]")
    try:
        with socket.create_connection((host, w.port), timeout=NETWORK_TIMEOUT_S):
            on = True
    except OSError:
        on = False
    try:
        where = policy.binding(w, state_dir, insecure_lan=True)
    except EdgeRecorderError as exc:
        return Check("web", False, f"the page {'is on but ' if on else ''}cannot start as "
                     f"configured: {exc}", "set a password (`edge-recorder web passwd`) or put "
                     "web.host back to 127.0.0.1")
    state = f"on at {where.url}" if on else f"off (nothing listens on {where.host}:{where.port})"
    hint = "" if on else "; `sudo systemctl enable --now edge-recorder-web` turns it on"
    return Check("web", True, f"the page is {state}; reachable from {where.protection}{hint}")


WAKE_MB = 90
"""Peak memory of the daemon with wake words only, rounded up (87 MB: scripts/bench-start, BENCHMARKS.md)."""
VOSK_MEMORY_FACTOR = 1.3
"""A Vosk model's resident size is about its files' size times this (measured with the Korean
and the English small model)."""
FRAME_BUDGET_MS = 80.0


def check_machine(settings: Settings, state_dir: Path) -> Check:
    """Will the configured models fit this machine? RAM, CPU, and a measured per-frame cost."""
    from device.storage.models import ModelStore
    from device.wake.detector import OpenWakeWordDetector

    total_mb, free_mb = _meminfo_mb()
    cpus = os.cpu_count() or 1
    model = _cpu_model()
    store = ModelStore(resolve_models_dir(settings, state_dir))
    try:
        costs = detector_costs(settings, OpenWakeWordDetector(settings.wake, store))
    except EdgeRecorderError as exc:
        return Check("machine", False, f"cannot measure the wake-word cost: {exc}",
                     "fix the models check first")
    ms = sum(costs.values())
    vosk_mb = _vosk_mb(settings, store) if settings.asr.enabled else 0.0
    need_mb = WAKE_MB + vosk_mb
    each = " + ".join(f"{name} {cost:.1f}" for name, cost in costs.items())
    detail = (f"{model}, {cpus} CPU(s), {total_mb} MB RAM ({free_mb} MB available); wake words "
              f"{ms:.1f} ms per 80 ms frame ({each}; {ms / FRAME_BUDGET_MS:.0%} of one core when "
              f"scoring, less with wake.gate on a quiet room and with a cascade); expected memory "
              f"{need_mb:.0f} MB (wake words {WAKE_MB} + Vosk {vosk_mb:.0f})")
    fixes = []
    if free_mb and need_mb > free_mb:
        fixes.append("too little memory: use the small English Vosk model (about 60 MB) or set "
                     "asr.enabled = false")
    if ms > FRAME_BUDGET_MS / 2:
        fixes.append("wake words take over half a core: keep wake.gate = true and configure fewer "
                     "wake.models")
    return Check("machine", not fixes, detail, "; ".join(fixes))


def detector_costs(settings: Settings, scorer: Any) -> dict[str, float]:
    """Milliseconds per 80 ms frame of each detector the wake words use (openWakeWord, and
    microWakeWord where wake.confirm asks for it), measured on this machine."""
    from device.wake import micro
    from device.wake.confirm import confirm_modes

    confirmed = [n for n, m in confirm_modes(settings.wake, scorer.names).items() if m != "none"]
    detectors = {"openWakeWord": scorer}
    if confirmed:
        detectors["microWakeWord"] = micro.MicroWakeWordDetector(confirmed)
    return {name: _ms_per_frame(d) for name, d in detectors.items()}


def _ms_per_frame(detector: Any, frames: int = 12) -> float:
    frame = np.random.default_rng(0).integers(-3000, 3000, FRAME_SAMPLES).astype(np.int16)
    detector.scores(frame)
    started = time.perf_counter()
    for _ in range(frames):
        detector.scores(frame)
    return (time.perf_counter() - started) / frames * 1000


def _meminfo_mb() -> tuple[int, int]:
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    except OSError:
        return 0, 0
    kb = {k: int(v.split()[0]) for k, v in info.items() if v.split()}
    return kb.get("MemTotal", 0) // 1024, kb.get("MemAvailable", 0) // 1024


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    for key in ("Model", "model name"):  # a Pi says "Model : Raspberry Pi Zero 2 W Rev 1.0"
        for line in text.splitlines():
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def check_owner(settings: Settings, state_dir: Path) -> Check:
    """The second look: which wake words have an owner verifier, and whether rejects can teach it."""
    import importlib.util

    from device.wake.verifier import VerifierFiles

    files = VerifierFiles(state_dir)
    enrolled = files.enrolled()
    if not enrolled:
        return Check("owner", True, "no owner verifier: `edge-recorder enroll` teaches the second "
                     "look your voice, which turns most false wakes away before the light")
    parts = []
    for name in enrolled:
        try:
            known = files.features(name)
            weights = files.weights(name)
        except ModelError as exc:
            return Check("owner", False, f"the owner verifier for {name} cannot be used: {exc}; "
                         f"every wake of {name} is discarded meanwhile",
                         f"enroll again (`edge-recorder enroll {name} ...`) or remove it "
                         f"(`edge-recorder enroll --remove {name}`)")
        lower = (f", against {weights.impostors} impostor frames: it hears wakes from "
                 f"{settings.wake.preset(name, owner=True)[0]:g} at {settings.wake.sensitivity}"
                 if weights is not None and weights.impostors else "")
        parts.append(f"{name} ({len(known[0])} wake windows, {len(known[1])} other{lower})"
                     if known else name)
    training = ("rejects teach it" if importlib.util.find_spec("sklearn")
                else "rejects are kept but cannot train it until the `verifier` extra "
                     "(scikit-learn) is installed")
    return Check("owner", True, f"owner verifier for {', '.join(parts)}; wakes it doubts are "
                 f"discarded below {settings.wake.verifier_threshold}; {training}")


def check_voice(settings: Settings, state_dir: Path) -> Check:
    """Voice commands need Vosk, a model that can be limited to phrases, and phrases it knows."""
    from device.audio.denoise import denoise_available
    from device.speech.voice import supports_grammar, unknown_words
    from device.storage.models import ModelStore

    if not settings.voice.enabled:
        return Check("voice", True, "voice commands are off (voice.enabled = false)")
    why = "they are recognized on the device by Vosk"
    if not settings.asr.enabled:
        return Check("voice", True, f"voice commands are unavailable: asr.enabled = false ({why})")
    path = _vosk_dir(settings, ModelStore(resolve_models_dir(settings, state_dir)))
    if path is None:
        return Check("voice", True, f"voice commands are unavailable: no Vosk model is installed "
                     f"({why}); `edge-recorder models fetch --vosk` installs the English one")
    if not supports_grammar(path):
        return Check("voice", False, f"voice commands are unavailable: the Vosk model '{path}' "
                     "cannot be limited to the command phrases (no graph/HCLr.fst and Gr.fst)",
                     "use a small Vosk model (they have runtime graphs), or set voice.enabled = false")
    missing = unknown_words(path, settings.voice)
    commands = sorted(c for c, p in settings.voice.phrases.items() if p)
    if missing:
        return Check("voice", False, f"the Vosk model does not know these words of voice.phrases "
                     f"or voice.confirm_words: {', '.join(missing)} (a phrase with them can never "
                     "be recognized)", "rephrase them with words the model knows")
    if settings.voice.denoise and not denoise_available():
        return Check("voice", False, f"voice commands on: {', '.join(commands)}; but voice.denoise "
                     "is on and webrtc-noise-gain is not installed (reinstall edge-recorder, or set "
                     "voice.denoise = false): commands are heard once, without the noise suppressor")
    hearing = ("; in a noisy room also heard through a noise suppressor (voice.denoise)"
               if settings.voice.denoise else "")
    return Check("voice", True, f"voice commands on: {', '.join(commands)}{hearing}")


def _vosk_dir(settings: Settings, store: Any) -> Path | None:
    """The Vosk model the daemon would load (asr.model, else the registered one), if it exists."""
    path = Path(settings.asr.model).expanduser() if settings.asr.model else store.vosk_model()
    return Path(path) if path is not None and Path(path).is_dir() else None


def _vosk_mb(settings: Settings, store: Any) -> float:
    path = _vosk_dir(settings, store)
    if path is None:
        return 0.0
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return size / 1e6 * VOSK_MEMORY_FACTOR
