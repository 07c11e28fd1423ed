"""Capture hand-over and framing: drops are counted and never shift frame times."""

from __future__ import annotations

import threading

import numpy as np

from device.audio.sources import CaptureQueue, Framer


def test_framer_resamples_48k_to_exact_80ms_frames() -> None:
    tone = np.sin(2 * np.pi * 440 * np.arange(48000) / 48000).astype(np.float32) * 0.5
    framer = Framer(48000)
    frames = [f for i in range(0, 48000, 3840) for f in framer.push(tone[i:i + 3840])]
    frames += list(framer.push(np.zeros(0, np.float32), last=True))
    assert all(len(f.samples) == 1280 and f.samples.dtype == np.int16 for f in frames)
    assert [f.start for f in frames] == [i * 1280 for i in range(len(frames))]
    assert abs(len(frames) * 1280 - 16000) <= 1280
    spectrum = np.abs(np.fft.rfft(np.concatenate([f.samples for f in frames[2:-2]])))
    peak_hz = np.argmax(spectrum) * 16000 / (len(spectrum) * 2 - 2)
    assert abs(peak_hz - 440) < 5


def test_a_full_queue_drops_counts_and_keeps_frame_times_true() -> None:
    capture = CaptureQueue(16000, queue_s=0.16)  # room for 2 blocks
    blocks = [np.full(1280, i, dtype=np.int16) for i in range(5)]
    for block in blocks[:4]:
        capture.put(block)  # the listener is stalled: blocks 2 and 3 are dropped
    assert capture.overflows == 2
    stop = threading.Event()
    got = capture.frames(stop, alive=lambda: capture.captured < 5 * 1280)
    first_two = [next(got), next(got)]
    capture.put(blocks[4])
    last = next(got)
    assert [(f.start, int(f.samples[0])) for f in [*first_two, last]] == [
        (0, 0), (1280, 1), (4 * 1280, 4)]
    assert capture.clock(in_flight=1280) == 6 * 1280
