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

MICROWAKEWORD_REQUIREMENT = "pymicro-wakeword==2.5.0"
MICROWAKEWORD_SHA256 = ("3869f536402b1254e3be3549d3a462ecd6ed21ce2c3e77ec8eb501c3c700417c "
                        "6c75b77c936efd19b8c35a094cb7e3fdbd4ebcd0f63635a0851ce591990829f2")
MICROFEATURES_REQUIREMENT = "pymicro-features==2.0.2"
MICROFEATURES_SHA256 = ("65a76a7c7851ee0dd6083dda56b835ab9dc6eddeaf11b34461795758de846d0f "
                        "acead36386b42934e620f57d7481177ba461dde247cccef6a846f5831805e6c7")
"""microWakeWord, the second detector (device/wake/micro.py), and its feature front end: pinned by
version and by the digests of their x86-64 and aarch64 wheels (manylinux, glibc 2.35+ for the
first: its TensorFlow Lite C library). scripts/openwakeword-install installs them, binary wheels
only; where no wheel fits (32-bit ARM, glibc older than 2.35) it says so and the wake words run on
openWakeWord alone."""

SAMPLE_RATE_HZ = 16000
"""The rate every model in the pipeline runs at."""

FRAME_SAMPLES = 1280
"""80 ms at 16 kHz: openWakeWord's native frame, and the unit of the whole pipeline."""
