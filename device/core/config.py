"""Settings: one frozen model per subsystem, validated on load from TOML.

Every field's default here is the default a newcomer meets; `config/default.toml` documents the same
values (a test keeps the two equal).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from device.core.errors import ConfigError

APP_NAME = "edge-recorder"
SYSTEMD_STATE_DIR = Path("/var/lib/edge-recorder")
MAX_PREROLL_S = 2.0
MAX_ECHO = 60
"""Longest piece of a bad value repeated in an error message."""

Probability = Annotated[float, Field(gt=0.0, lt=1.0)]
DURATION_PATTERN = r"^[1-9][0-9]{0,5}[smhd]$"
"""A duration as users write it: a number and s, m, h or d (e.g. 15m, 7d)."""
DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


MAX_DURATION = "36500d"
"""The longest duration anything takes: 100 years (a longer one overflows the calendar)."""


def duration_s(text: str) -> float:
    """Seconds in a duration matching DURATION_PATTERN."""
    return float(text[:-1]) * DURATION_UNITS_S[text[-1]]


def too_long(text: str) -> bool:
    """Whether a duration (matching DURATION_PATTERN) is longer than MAX_DURATION."""
    return duration_s(text) > duration_s(MAX_DURATION)


def at_most_max(hint: str = "") -> AfterValidator:
    """Refuses a duration longer than MAX_DURATION, its message ending with `hint`."""
    def check(text: str) -> str:
        if too_long(text):
            raise ValueError(f"at most {MAX_DURATION} (100 years), not {text!r}{hint}")
        return text
    return AfterValidator(check)


Duration = Annotated[str, Field(pattern=DURATION_PATTERN), at_most_max()]
"""A duration as users write it (15m, 7d), at most MAX_DURATION."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


def _check_order(low: float, high: float, low_name: str, high_name: str) -> None:
    if low > high:
        raise ValueError(f"{low_name} ({low}) must not be greater than {high_name} ({high})")


class AudioSettings(_Section):
    device: str | int | None = None
    """sounddevice input device: name (substring) or index; None = the system default."""
    sample_rate_hz: int | None = Field(default=None, gt=0)
    """Capture rate; None = the device's default. Audio is resampled to 16 kHz."""
    queue_s: float = Field(default=2.0, gt=0.0, le=120.0)
    """Audio buffered between the capture callback and the listener before frames are dropped."""
    retry_initial_s: float = Field(default=1.0, gt=0.0)
    """First wait, in seconds, before reopening a microphone that was working and is gone
    (unplugged); each further try waits twice as long, up to retry_max_s."""
    retry_max_s: float = Field(default=30.0, gt=0.0)
    """Longest wait between tries while a lost microphone is away."""

    @model_validator(mode="after")
    def _ordered(self) -> AudioSettings:
        _check_order(self.retry_initial_s, self.retry_max_s, "retry_initial_s", "retry_max_s")
        return self


SENSITIVITY_LEVELS = ("sensitive", "balanced", "strict")
"""From the most to the least sensitive."""
PRESETS: dict[str, dict[str, tuple[float, int]]] = {
    "sensitive": {"*": (0.5, 1)},
    "balanced": {"hey_jarvis": (0.8, 1), "alexa": (0.7, 1), "*": (0.7, 1)},
    "strict": {"hey_jarvis": (0.95, 1), "alexa": (0.8, 2), "*": (0.9, 2)},
}
"""(threshold, patience_frames) per level and bundled model, chosen with scripts/eval-wake (the
measured recall and false wakes per hour are in README and BENCHMARKS.md); "*" for other models."""
OWNER_THRESHOLDS: dict[str, float] = {"sensitive": 0.2, "balanced": 0.3, "strict": 0.5}
"""With an owner verifier trained against impostors (`enroll`, for models that bundle them): the
wake model's score from which a wake is put to the verifier, per level (the preset's own threshold
where that is lower). openWakeWord asks its custom verifier from 0.1 on; the owner's quieter or
unusual takes score 0.3-0.8, and the verifier, not the threshold, turns other voices away
(BENCHMARKS.md: owner rows)."""
Sensitivity = Literal["sensitive", "balanced", "strict", "custom"]
Confirm = Literal["none", "agree", "cascade"]
DEFAULT_CONFIRM: dict[str, Confirm] = {"alexa": "cascade"}
"""wake.confirm for wake words the configuration does not name, chosen from measurements
(docs/sensitivity.md, BENCHMARKS.md): alexa's two detectors make different mistakes and
agree on real speech; hey_jarvis's microWakeWord model misses most real takes, so it stays off there
(and for every model not named)."""
CONFIRMED_PRESETS: dict[str, dict[str, tuple[float, int, float]]] = {
    "sensitive": {"alexa": (0.3, 1, 0.5)},
    "balanced": {"alexa": (0.3, 1, 0.9)},
    "strict": {"alexa": (0.8, 2, 0.9)},
}
"""(openWakeWord's threshold, its patience, microWakeWord's threshold) per level for a wake word
that both detectors must hear (wake.confirm agree or cascade), where measured. A stage that
another stage checks can listen more widely: at `balanced`, microWakeWord confirms at its model's
own cutoff (0.9 for alexa) and openWakeWord fires from 0.3, which keeps the recall of openWakeWord
alone at the level on the tuning takes (BENCHMARKS.md, "Two detectors, strict and wide").
Other wake words, and the "custom" level, keep the level's openWakeWord preset and
CONFIRM_THRESHOLD; so does openWakeWord where wake.confirm_threshold sets microWakeWord lower than
the pair's (the earlier default.toml wrote `confirm_threshold = 0.5` into every installed config:
at `balanced` that keeps 0.7 and 0.5, as before, not 0.3 with 0.5)."""
CONFIRM_THRESHOLD = 0.5
"""microWakeWord's threshold where CONFIRMED_PRESETS names none (hey_jarvis was measured so)."""
CONFIRM_WINDOW_S = 1.5
"""With agree or cascade, the two detectors must fire within this long of each other."""
CASCADE_LEVEL = 0.1
"""With cascade, openWakeWord runs (after replaying the last `gate_preroll_s` from RAM) once
microWakeWord's probability rises over this, and until `gate_hangover_s` after it fell below."""


class WakeSettings(_Section):
    models: list[str] = Field(default_factory=lambda: ["hey_jarvis"], min_length=1)
    """Installed model names (hey_jarvis, alexa, hey_mycroft, hey_rhasspy, ok_nabu) or .tflite paths."""
    sensitivity: Sensitivity = "balanced"
    """A preset (threshold and patience per model), or "custom" to use the keys threshold,
    patience_frames and thresholds."""
    threshold: Probability = 0.5
    """With sensitivity = "custom": the score a frame must exceed to count towards a wake."""
    thresholds: dict[str, Probability] = Field(default_factory=dict)
    """Per-model thresholds, keyed by model name (override the preset or `threshold`)."""
    patience_frames: int = Field(default=1, ge=1, le=25)
    """With sensitivity = "custom": consecutive 80 ms frames over threshold needed for a wake."""
    refractory_s: float = Field(default=2.0, ge=0.0, le=60.0)
    """After a wake, the same utterance cannot wake again: the gate re-arms once the scores have
    been under the threshold for 240 ms, or after this many seconds at the latest."""
    startup_quiet_s: float = Field(default=1.0, ge=0.0, le=10.0)
    """No wake in the first seconds of a stream (openWakeWord's buffer starts from random noise)."""
    verifier_threshold: Probability = 0.5
    """With an owner verifier (`edge-recorder enroll`): a wake it gives a lower probability of
    being the owner saying the wake word is discarded (`not_owner`) before the light comes on."""
    phrase_check: Literal["strict", "always", "never"] = "strict"
    """When models with a bundled phrase check (hey_jarvis) make sure the whole wake phrase was
    said, not the bare name: at the strict level only, always, or never. A wake it doubts is
    discarded (`not_phrase`) before the light comes on."""
    confirm: dict[str, Confirm] = Field(default_factory=dict)
    """Per wake word: "none" (openWakeWord alone), "agree" (microWakeWord must fire too, within
    1.5 s; the light comes on only when both have) or "cascade" (the same wakes as agree, but
    openWakeWord runs only once microWakeWord's probability rises over 0.1). A wake word not named
    here gets the measured default: "cascade" for alexa, "none" for every other."""
    confirm_threshold: Probability | None = None
    """microWakeWord's probability (its own average over its last windows) that confirms a wake, at
    every level; unset: the measured one for the wake word and level (0.9 for alexa at
    `balanced`, where openWakeWord then fires from 0.3; docs/sensitivity.md), else 0.5. Set lower
    than a level's measured one, openWakeWord keeps its own threshold at that level (0.7 for alexa
    at `balanced`)."""
    gate: bool = True
    """In a quiet room, run the wake-word models only when a frame stands out from the noise floor
    (the skipped audio is replayed first, so no wake is lost at the onset of speech)."""
    gate_margin_db: float = Field(default=10.0, ge=3.0, le=40.0)
    """How far above the room's noise floor a frame must be to open the gate."""
    gate_hangover_s: float = Field(default=2.0, ge=0.5, le=30.0)
    """How long the gate stays open after the last frame above it."""
    gate_preroll_s: float = Field(default=3.0, ge=2.5, le=5.0)
    """Audio kept in RAM while the gate is shut and replayed through the models when it opens.
    openWakeWord scores from 16 embeddings of 76 melspectrogram frames each: about 2.1 s of audio,
    so a shorter replay would leave what came before the gate shut in its context."""

    def preset(self, name: str, level: str | None = None, owner: bool = False,
               confirmed: bool | None = None) -> tuple[float, int]:
        """openWakeWord's (threshold, patience) for a model at `level` (default: the configured
        one); `confirmed`: whether microWakeWord must agree (default: as wake.confirm says), which
        has presets of its own (CONFIRMED_PRESETS); with `owner`, as it is when an owner verifier
        trained against impostors takes the second look (OWNER_THRESHOLDS). A threshold set for
        the model in `thresholds` is kept as it is."""
        level = level or self.sensitivity
        if confirmed is None:
            confirmed = self.confirm_for(name) != "none"
        paired = CONFIRMED_PRESETS.get(level, {}).get(name) if confirmed else None
        if paired and self.confirm_threshold is not None and self.confirm_threshold < paired[2]:
            paired = None  # openWakeWord's wider threshold was measured with microWakeWord this strict
        base = ((self.threshold, self.patience_frames) if level == "custom"
                else paired[:2] if paired else PRESETS[level].get(name, PRESETS[level]["*"]))
        if owner and level in OWNER_THRESHOLDS:
            base = (min(base[0], OWNER_THRESHOLDS[level]), base[1])
        return self.thresholds.get(name, base[0]), base[1]

    def threshold_for(self, name: str, level: str | None = None,
                      confirmed: bool | None = None) -> float:
        return self.preset(name, level, confirmed=confirmed)[0]

    def confirm_for(self, name: str) -> Confirm:
        """The second detector's part for `name`: as configured, else the measured default."""
        return self.confirm.get(name, DEFAULT_CONFIRM.get(name, "none"))

    def confirm_threshold_for(self, name: str, level: str | None = None) -> float:
        """The microWakeWord probability that confirms a wake of `name` at `level` (default: the
        configured one): wake.confirm_threshold where set, else the measured one."""
        if self.confirm_threshold is not None:
            return self.confirm_threshold
        paired = CONFIRMED_PRESETS.get(level or self.sensitivity, {}).get(name)
        return paired[2] if paired else CONFIRM_THRESHOLD


class RecorderSettings(_Section):
    trailing_silence_s: float = Field(default=0.8, gt=0.0, le=10.0)
    """Silence after speech that ends the utterance."""
    max_length_s: float = Field(default=10.0, gt=0.0, le=120.0)
    """Longest clip kept; recording stops here even if speech goes on."""
    speech_timeout_s: float = Field(default=3.0, gt=0.0, le=30.0)
    """A wake followed by no speech for this long is discarded (a false wake)."""
    min_speech_s: float = Field(default=0.24, ge=0.0, le=10.0)
    """Less voiced audio than this in a recording counts as no speech: discarded."""
    vad_aggressiveness: int = Field(default=2, ge=0, le=3)
    """webrtcvad mode: 0 keeps the most audio as speech, 3 the least."""
    vad_margin_db: float = Field(default=8.0, ge=0.0, le=30.0)
    """Speech must also be this far over the room's level, learned while idle, so that steady
    noise (a tap, a fan) does not keep a recording open; 0 = webrtcvad alone."""
    keep_wake_word_audio: bool = False
    """Keep up to `preroll_s` of audio from before the light went on. Relaxes invariant I1."""
    preroll_s: float = Field(default=0.0, ge=0.0, le=MAX_PREROLL_S)
    """Pre-roll kept when keep_wake_word_audio is on (at most 2 s)."""
    save: Literal["audio", "transcript", "nothing"] = "audio"
    """What a finished utterance leaves on disk: the clip, its transcript only, or nothing (events
    only). The most that is ever saved: at run time it can only be lowered, or returned here."""

    @model_validator(mode="after")
    def _preroll_needs_opt_in(self) -> RecorderSettings:
        if self.preroll_s > 0 and not self.keep_wake_word_audio:
            raise ValueError("preroll_s > 0 needs keep_wake_word_audio = true (it relaxes I1)")
        return self


class AsrSettings(_Section):
    enabled: bool = True
    """Transcribe clips on the device with Vosk."""
    model: str | None = None
    """Path to a Vosk model directory; None = the one registered by `models fetch`."""


class IndicatorSettings(_Section):
    pin: str | int = "GPIO17"
    """gpiozero pin of the recording LED (e.g. "GPIO17", "BOARD11", 17)."""
    active_high: bool = True
    """False when the LED is wired between the pin and 3.3 V."""
    pin_factory: str | None = None
    """None = gpiozero's default (lgpio on a Pi); "mock" = simulated pins (no Pi)."""


class MuteSettings(_Section):
    button_pin: str | int | None = None
    """A push button (to ground) that toggles the hardware mute; None = no button."""
    led_pin: str | int | None = None
    """A second LED, lit while muted; None = no mute LED. (The recording LED never lights for this:
    it means one thing only, that audio is being kept.)"""


VoiceCommand = Literal["delete_last", "delete_today", "reject", "stop_saving", "start_saving",
                       "pause_saving"]
VOICE_COMMANDS: tuple[str, ...] = get_args(VoiceCommand)
DEFAULT_PHRASES: dict[VoiceCommand, list[str]] = {
    "delete_last": ["delete what i just said", "delete that recording"],
    "delete_today": ["delete everything i said today"],
    "reject": ["that wasn't for you", "that was not for you"],
    "stop_saving": ["stop saving"],
    "start_saving": ["start saving"],
    "pause_saving": ["don't save anything for an hour"],
}
Phrase = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\[\]\"]+$")]


class VoiceSettings(_Section):
    enabled: bool = True
    """Privacy commands by voice after the wake word (needs a Vosk model)."""
    phrases: dict[VoiceCommand, list[Phrase]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_PHRASES.items()})
    """The words that make each command, per command; a command left out has no phrase."""
    delete_last_within: Duration = "10m"
    """"Delete what I just said" and "that wasn't for you" reach the newest clip only if it was
    recorded this recently."""
    pause_for: Duration = "1h"
    """How long "don't save anything for an hour" saves nothing before saving returns by itself."""
    confirm_led_pin: str | int | None = None
    """The feedback LED: two blinks when a command is done, five quick flickers for "didn't catch
    that", slow blinking while a yes is awaited; None = the mute LED, if there is one."""
    confirm_sound: bool = False
    """Also play a short tone through the default output when a command is done."""
    confirm_words: list[Phrase] = Field(default_factory=lambda: ["yes"], min_length=1)
    """The answer that lets a command which deletes more than the last recording go ahead, when
    the wake was not verified as the owner's voice; heard as strictly as the phrases."""
    confirm_within: Duration = "6s"
    """How long after such a command its yes is listened for; then it is dropped."""
    denoise: bool = True
    """In a noisy room, also hear each utterance through WebRTC's noise suppressor (a second
    recognizer, in RAM); when the utterance as heard holds no command, what that finds counts if it
    is sure of every word and the first hearing held some of its phrase. Off: one hearing, as
    before (issue 27, BENCHMARKS.md)."""

    @model_validator(mode="after")
    def _distinct(self) -> VoiceSettings:
        seen: dict[str, str] = {}
        for command, phrases in self.phrases.items():
            for phrase in phrases:
                key = normalize_phrase(phrase)
                if not key:
                    raise ValueError(f"voice.phrases.{command}: {phrase!r} has no words")
                if seen.setdefault(key, command) != command:
                    raise ValueError(f"voice.phrases: {phrase!r} is given for both "
                                     f"{seen[key]} and {command}")
        return self


def normalize_phrase(text: str) -> str:
    """How phrases and what was heard are compared: lower case, words only, single spaces."""
    return " ".join(re.sub(r"[^\w' ]+", " ", text.lower()).split())


class ModelSettings(_Section):
    dir: str | None = None
    """Where models live; None = EDGE_RECORDER_MODELS_DIR, else <state dir>/models."""


class MqttTlsSettings(_Section):
    enabled: bool = False
    """Connect with TLS (port 8883 unless mqtt.port is set)."""
    ca_file: str | None = None
    """CA certificate(s) to trust; None = the system's."""
    cert_file: str | None = None
    """Client certificate, when the broker wants one."""
    key_file: str | None = None
    """The client certificate's private key (keep it 0600)."""
    verify: bool = True
    """Check the broker's certificate and host name. Turn off only to debug."""


class MqttSigningSettings(_Section):
    secret_file: str | None = None
    """File holding the shared HMAC-SHA256 secret; when set, unsigned commands are refused."""
    max_skew_s: float = Field(default=300.0, gt=0, le=86400)
    """How far a command's `ts` may be from the device's clock."""


class MqttSettings(_Section):
    host: str | None = None
    """Broker host name; None = no MQTT (the speaker works fully offline)."""
    port: int | None = Field(default=None, gt=0, lt=65536)
    """Broker port; None = 1883, or 8883 with TLS."""
    prefix: str = Field(default="edge-recorder", pattern=r"^[^#+/][^#+]*$")
    """Topic prefix; topics are <prefix>/<device id>/..."""
    username: str | None = None
    """Broker login; None = connect without one."""
    password: str | None = None
    """The login's password, written in the configuration (prefer password_file)."""
    password_file: str | None = None
    """Read the password from this file instead (keep it 0600)."""
    protocol: Literal["5", "3.1.1"] = "5"
    """MQTT version. With "5" the speaker tells the broker the largest message it takes (Maximum
    Packet Size) and the broker drops bigger ones; "3.1.1" only for a broker that cannot speak 5,
    where only the broker's own max_packet_size keeps a huge message from the speaker."""
    keepalive_s: int = Field(default=60, ge=5, le=3600)
    """MQTT keepalive: the broker declares the speaker gone (and publishes its last will) after
    about 1.5 times this without a packet."""
    reconnect_min_s: float = Field(default=1.0, gt=0)
    """First wait before reconnecting to a broker that is down; doubled up to reconnect_max_s."""
    reconnect_max_s: float = Field(default=60.0, gt=0)
    """Longest wait between reconnects."""
    publish_transcripts: bool = False
    """Include transcripts in evt/clip. Off: only metadata leaves the device."""
    discovery: bool = True
    """Announce the speaker to Home Assistant (MQTT device discovery)."""
    discovery_prefix: str = Field(default="homeassistant", pattern=r"^[^#+/][^#+]*$")
    """Home Assistant's discovery prefix (and its birth topic `<prefix>/status`)."""
    tls: MqttTlsSettings = MqttTlsSettings()
    signing: MqttSigningSettings = MqttSigningSettings()

    @model_validator(mode="after")
    def _ordered(self) -> MqttSettings:
        _check_order(self.reconnect_min_s, self.reconnect_max_s, "reconnect_min_s", "reconnect_max_s")
        return self


class UploadSettings(_Section):
    url: str | None = Field(default=None, pattern=r"^https://[^\s/?#]+(/\S*)?$")
    """The owner's HTTPS endpoint. Unset: nothing is ever uploaded, consent or not."""
    token: str | None = None
    """Bearer token sent with every upload and remote delete (prefer token_file)."""
    token_file: str | None = None
    """A file holding the bearer token (keep it 0600)."""
    ca_file: str | None = None
    """CA certificate(s) to trust for url; None = the system's."""
    verify: bool = True
    """Check the server's certificate and host name. Turn off only to debug."""
    hold_s: float = Field(default=600.0, ge=0.0, le=7 * 86400)
    """A clip is uploaded no sooner than this after it was recorded: a delete or a "that wasn't
    for you" within it means it never leaves the device."""
    keep_local: bool = True
    """Keep the local copy after a confirmed upload."""
    redact: bool = True
    """Replace digit runs of 4+ and e-mail addresses in transcripts before upload."""
    max_attempts: int = Field(default=8, ge=1, le=100)
    """Tries with growing backoff; after these an `upload` event (`retrying`) says what fails, and
    the clip is tried again every backoff_max_s for as long as it is kept."""
    backoff_initial_s: float = Field(default=2.0, gt=0)
    """First wait after a failed try; doubled (with jitter) up to backoff_max_s, or the server's
    Retry-After."""
    backoff_max_s: float = Field(default=600.0, gt=0)
    """Longest wait between tries."""
    timeout_s: float = Field(default=30.0, gt=0)
    """Connect and read timeout of one request."""
    max_bytes_per_s: int = Field(default=0, ge=0)
    """Upload bandwidth limit; 0 = unlimited."""
    concurrency: int = Field(default=1, ge=1, le=8)
    """Uploads sent at the same time."""

    @model_validator(mode="after")
    def _ordered(self) -> UploadSettings:
        _check_order(self.backoff_initial_s, self.backoff_max_s, "backoff_initial_s", "backoff_max_s")
        return self

    @property
    def host(self) -> str | None:
        """Where requests go, as the device shows it (the log of what left it, the web page):
        host and port, never a user name or password written into the URL."""
        return urlsplit(self.url).netloc.rpartition("@")[2] if self.url else None


class RetentionSettings(_Section):
    max_age: Duration = "7d"
    """Clips older than this are deleted (s, m, h, d), including clips still awaiting upload."""
    max_bytes: int = Field(default=1 << 30, ge=1 << 20)
    """Beyond this many bytes of clips, the oldest are deleted."""
    sweep_interval_s: float = Field(default=600.0, gt=0)
    """How often the sweeper runs (it also runs at start)."""
    min_free_bytes: int = Field(default=16 << 20, ge=0)
    """Recording is refused while the state directory's file system has less free space."""

    def max_age_s(self) -> float:
        return duration_s(self.max_age)


class WebSettings(_Section):
    host: str = Field(default="127.0.0.1", min_length=1)
    """Where `edge-recorder web` listens. Loopback (the default) = this device only; any other
    address needs a password (`edge-recorder web passwd`) and cert_file + key_file (HTTPS)."""
    port: int = Field(default=8380, gt=0, lt=65536)
    cert_file: str | None = None
    """PEM certificate (chain) for HTTPS; with key_file."""
    key_file: str | None = None
    session_hours: float = Field(default=12.0, gt=0.0, le=24 * 30)
    """A login lasts this long without use."""

    @model_validator(mode="after")
    def _cert_and_key(self) -> WebSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file, or neither")
        return self


class Settings(_Section):
    audio: AudioSettings = AudioSettings()
    wake: WakeSettings = WakeSettings()
    recorder: RecorderSettings = RecorderSettings()
    asr: AsrSettings = AsrSettings()
    indicator: IndicatorSettings = IndicatorSettings()
    mute: MuteSettings = MuteSettings()
    models: ModelSettings = ModelSettings()
    mqtt: MqttSettings = MqttSettings()
    upload: UploadSettings = UploadSettings()
    retention: RetentionSettings = RetentionSettings()
    voice: VoiceSettings = VoiceSettings()
    web: WebSettings = WebSettings()


def load_settings(path: Path | None) -> Settings:
    """Read and validate a TOML config; None means the built-in defaults."""
    if path is None:
        return Settings()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file '{path}': {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file '{path}' is not valid TOML: {exc}") from exc
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"config file '{path}': {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem as `key.path: message (got value)`, e.g. for one-line errors."""
    err = exc.errors()[0]
    key = ".".join(str(part) for part in err["loc"]) or "(top level)"
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    if "input" in err and err["type"] not in ("missing", "extra_forbidden"):
        got = repr(err["input"])
        message += f" (got {got if len(got) <= MAX_ECHO else got[:MAX_ECHO] + '...'})"
    more = len(exc.errors()) - 1
    return f"{key}: {message}" + (f" (and {more} more problem(s))" if more else "")


def resolve_state_dir(cli_value: str | None) -> Path:
    """--state-dir, else EDGE_RECORDER_STATE_DIR, else systemd's StateDirectory, else XDG data."""
    if cli_value:
        return Path(cli_value).expanduser()
    if env := os.environ.get("EDGE_RECORDER_STATE_DIR"):
        return Path(env).expanduser()
    if systemd_dirs := os.environ.get("STATE_DIRECTORY"):
        return Path(systemd_dirs.split(":")[0])
    if os.environ.get("INVOCATION_ID"):
        return SYSTEMD_STATE_DIR
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME))


def resolve_models_dir(settings: Settings, state_dir: Path) -> Path:
    if settings.models.dir:
        return Path(settings.models.dir).expanduser()
    if env := os.environ.get("EDGE_RECORDER_MODELS_DIR"):
        return Path(env).expanduser()
    return state_dir / "models"
