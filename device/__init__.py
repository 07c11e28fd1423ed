"""edge-recorder: a privacy-first voice front end for a Raspberry Pi smart speaker.

The folders follow the data flow, each importing only the ones listed before it:

    core/          settings, errors, events, frames: the shared vocabulary
    storage/       clips, keys, the upload queue, requests, preferences, stats, models (SQLite + files)
    audio/         microphone and WAV sources, voice activity
    wake/          wake-word detectors, the energy gate, when a score wakes, the second looks
    speech/        Vosk transcription and spoken privacy commands
    control/       the one command path (CLI, MQTT, voice, web), consent, mute, sensitivity, save mode
    recording/     the recorder state machine, the listening loop, the recording light
    integrations/  MQTT and Home Assistant, uploads, systemd
    web/           the local page (`edge-recorder web`): beside integrations, importing none of it

and on top the wiring: `app` (builds and runs the daemon), `cli` (the command line) and `doctor`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edge-recorder")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

OPENWAKEWORD_REQUIREMENT = "openwakeword==0.6.0"
OPENWAKEWORD_SHA256 = "6f423a4e3ae9dd0e3cd12b50ff8abf69679f687b4ab349d7c82c021c0e2abc9d"
"""The one pin of openwakeword (its wheel's digest). It is installed without its dependencies (see
pyproject.toml); scripts/openwakeword-install reads these two lines."""

SAMPLE_RATE_HZ = 16000
"""The rate every model in the pipeline runs at."""

FRAME_SAMPLES = 1280
"""80 ms at 16 kHz: openWakeWord's native frame, and the unit of the whole pipeline."""
