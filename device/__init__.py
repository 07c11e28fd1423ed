"""edge-recorder: a privacy-first voice front end for a Raspberry Pi smart speaker."""

__version__ = "0.1.0"

SAMPLE_RATE_HZ = 16000
"""The rate every model in the pipeline runs at."""

FRAME_SAMPLES = 1280
"""80 ms at 16 kHz: openWakeWord's native frame, and the unit of the whole pipeline."""
