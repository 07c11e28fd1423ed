"""edge-recorder: a privacy-first voice front end for a Raspberry Pi smart speaker."""

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
