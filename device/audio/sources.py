"""Audio sources: a microphone through sounddevice/PortAudio, or a WAV file.

Both deliver 80 ms frames of 16 kHz mono int16 and a clock in the same sample units, so the rest of
the pipeline cannot tell them apart. The PortAudio callback only copies the block onto a bounded
queue and counts overflows (invariant R1); resampling and framing run on the listener's thread.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soxr

from device import FRAME_SAMPLES, SAMPLE_RATE_HZ
from device.core.errors import AudioError, describe
from device.core.frames import Frame, frames_for

log = logging.getLogger(__name__)

FRAME_S = FRAME_SAMPLES / SAMPLE_RATE_HZ
READ_BLOCK_S = 1.0
"""How much of a WAV file is read and resampled at a time."""
QUEUE_POLL_S = 0.25
"""How often a waiting listener checks whether it was asked to stop."""
ANY_OF_POLL_S = 0.02


class StopFlag(Protocol):
    """What sources poll to know they should stop: a threading.Event, or several combined."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class AnyOf:
    """Set when any of the given events is set."""

    def __init__(self, *events: StopFlag) -> None:
        self._events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self._events)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = QUEUE_POLL_S if deadline is None else min(QUEUE_POLL_S, deadline - time.monotonic())
            if left <= 0:
                break
            time.sleep(min(left, ANY_OF_POLL_S))
        return self.is_set()


class AudioSource(Protocol):
    @property
    def overflows(self) -> int:
        """Blocks lost because the listener fell behind (R1 says this stays 0 at real time)."""
        ...

    def frames(self, stop: StopFlag) -> Iterator[Frame]: ...

    def clock(self) -> int:
        """Samples (16 kHz) captured so far, counting audio still in flight: a frame starting at or
        after this value is captured entirely after the moment of the call."""
        ...

    def close(self) -> None: ...


class Framer:
    """Turns blocks at any rate into exact 80 ms frames at 16 kHz, timed from `first_sample`."""

    def __init__(self, input_rate: int, first_sample: int = 0) -> None:
        self._resampler = (
            None
            if input_rate == SAMPLE_RATE_HZ
            else soxr.ResampleStream(input_rate, SAMPLE_RATE_HZ, 1, dtype="float32")
        )
        self._pending = np.zeros(0, dtype=np.int16)
        self._next = first_sample

    def push(self, block: np.ndarray, last: bool = False) -> Iterator[Frame]:
        """`block` is mono float32 in [-1, 1] or int16; yields every complete frame."""
        self._pending = np.concatenate([self._pending, self._to_16k(block, last)])
        while len(self._pending) >= FRAME_SAMPLES or (last and len(self._pending)):
            chunk = self._pending[:FRAME_SAMPLES]
            self._pending = self._pending[FRAME_SAMPLES:]
            if len(chunk) < FRAME_SAMPLES:
                chunk = np.pad(chunk, (0, FRAME_SAMPLES - len(chunk)))
            yield Frame(self._next, chunk)
            self._next += FRAME_SAMPLES

    def _to_16k(self, block: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is None and block.dtype == np.int16:
            return block
        audio = block.astype(np.float32) / 32768.0 if block.dtype == np.int16 else block
        if self._resampler is not None:
            audio = self._resampler.resample_chunk(audio.astype(np.float32), last=last)
        return float_to_int16(audio)


def float_to_int16(audio: np.ndarray) -> np.ndarray:
    """NaN (a broken float file) becomes silence, infinities full scale: never undefined values."""
    clean = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
    return (np.clip(clean, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def to_mono(block: np.ndarray) -> np.ndarray:
    return block.mean(axis=1) if block.ndim == 2 else block


class CaptureQueue:
    """The hand-over from a capture thread: `put` never blocks; a full queue drops and counts."""

    def __init__(self, input_rate: int, queue_s: float, first_sample: int = 0) -> None:
        """`first_sample`: the input sample index capture starts at (a file opened again
        part-way through)."""
        self.input_rate = input_rate
        self._queue: queue.Queue[tuple[int, np.ndarray]] = queue.Queue(
            maxsize=max(2, round(queue_s / FRAME_S))
        )
        self.overflows = 0
        self._first = first_sample
        self.captured = first_sample
        """Input samples handed over so far, dropped ones included (the capture clock)."""

    def put(self, block: np.ndarray) -> None:
        """Called on the capture thread with a copy of the block."""
        try:
            self._queue.put_nowait((self.captured, block))
        except queue.Full:
            self.overflows += 1
        self.captured += len(block)

    def frames(self, stop: StopFlag, alive: Callable[[], bool]) -> Iterator[Frame]:
        """80 ms frames at 16 kHz whose times are capture times, even across dropped blocks.
        Ends when `alive()` turns false and everything handed over has been framed."""
        framer, expected = Framer(self.input_rate, self.to_16k(self._first)), self._first
        while not stop.is_set():
            try:
                index, block = self._queue.get(timeout=QUEUE_POLL_S)
            except queue.Empty:
                if not alive():
                    return
                continue
            if index != expected:  # blocks were dropped: restart framing at the capture time
                framer = Framer(self.input_rate, self.to_16k(index))
            expected = index + len(block)
            yield from framer.push(block)

    def to_16k(self, input_samples: int) -> int:
        """An input sample index as a 16 kHz index, rounded up to a whole frame."""
        at = input_samples * SAMPLE_RATE_HZ / self.input_rate
        return int(-(-at // FRAME_SAMPLES) * FRAME_SAMPLES)

    def clock(self, in_flight: float) -> int:
        return self.to_16k(round(self.captured + in_flight))


class WavSource:
    """Frames from an audio file (any rate, any channel count).

    As fast as it can by default (deterministic: frame times are file times). With `realtime`, a
    capture thread paces the file at real time into the same CaptureQueue a microphone uses, so
    overflows are counted exactly as in `run`; a read error on that thread ends `frames()` with
    the error, as it would on the listener's thread.
    """

    def __init__(self, path: Path, realtime: bool = False, queue_s: float = 2.0,
                 start: int = 0) -> None:
        """`start`: the 16 kHz sample to begin at (see `resumed`)."""
        import soundfile

        self.path = path
        self.realtime = realtime
        self._queue_s = queue_s
        self._start = self._delivered = start
        self._file = _open_audio_file(path)
        self.sample_rate = int(self._file.samplerate)
        self.duration_s = self._file.frames / self.sample_rate
        first = min(self._file.frames, round(start * self.sample_rate / SAMPLE_RATE_HZ))
        try:
            self._file.seek(first)
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            self._file.close()
            raise AudioError(f"cannot read audio file '{path}': {describe(exc)}") from None
        self._capture = CaptureQueue(self.sample_rate, queue_s, first)
        self._block = round(self.sample_rate * FRAME_S)
        self._capturing = False
        self._failure: AudioError | None = None

    @property
    def overflows(self) -> int:
        return self._capture.overflows

    @property
    def closed(self) -> bool:
        return bool(self._file.closed)

    def resumed(self) -> WavSource:
        """The same file opened again where the listener had got to: the last frame it took."""
        return WavSource(self.path, self.realtime, self._queue_s, self._delivered)

    def frames(self, stop: StopFlag) -> Iterator[Frame]:
        for frame in self._paced_frames(stop) if self.realtime else self._file_frames(stop):
            self._delivered = frame.end
            yield frame

    def _file_frames(self, stop: StopFlag) -> Iterator[Frame]:
        framer = Framer(self.sample_rate, self._start)
        block = max(FRAME_SAMPLES, int(self.sample_rate * READ_BLOCK_S))
        while not stop.is_set():
            data = self._read(block)
            last = len(data) < block
            for frame in framer.push(to_mono(data), last=last):
                yield frame
                if stop.is_set():
                    return
            if last:
                return

    def _paced_frames(self, stop: StopFlag) -> Iterator[Frame]:
        self._capturing = True
        thread = threading.Thread(target=self._capture_paced, args=(stop,), daemon=True)
        thread.start()
        yield from self._capture.frames(stop, lambda: self._capturing)
        thread.join()
        if self._failure is not None:
            raise self._failure

    def _capture_paced(self, stop: StopFlag) -> None:
        """Stands in for the PortAudio thread: one block per 80 ms of wall time. A read error is
        handed to the listener's thread (frames() raises it there)."""
        started, first = time.monotonic(), self._capture.captured
        try:
            while not stop.is_set():
                data = self._read(self._block)
                if len(data) == 0:
                    return
                due = started + (self._capture.captured - first + len(data)) / self.sample_rate
                _sleep_until(due, stop)
                self._capture.put(float_to_int16(to_mono(data)))
        except AudioError as exc:
            self._failure = exc
        finally:
            self._capturing = False

    def _read(self, block: int) -> np.ndarray:
        import soundfile

        try:
            return self._file.read(block, dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"cannot read audio file '{self.path}': {describe(exc)}") from None

    def clock(self) -> int:
        if self.realtime:
            return self._capture.clock(in_flight=self._block)
        return self._delivered

    def close(self) -> None:
        self._file.close()


class FileInput:
    """What `simulate` listens to: an audio file that a mute pauses like a tape. The listener
    closes its source while muted and opens it again after (as `run` does with the microphone);
    the file then goes on from the last frame the listener took, so nothing is skipped or heard
    twice, and event times stay times in the file."""

    def __init__(self, path: Path, realtime: bool = False, queue_s: float = 2.0) -> None:
        self.source = WavSource(path, realtime, queue_s)  # opened now: a bad file fails at once

    def __call__(self) -> WavSource:
        if self.source.closed:
            self.source = self.source.resumed()
        return self.source


def _open_audio_file(path: Path) -> Any:
    """A soundfile.SoundFile with at least one frame, or AudioError saying what is wrong."""
    import soundfile

    if not path.exists():
        raise AudioError(f"audio file '{path}' does not exist")
    if path.is_dir():
        raise AudioError(f"'{path}' is a directory, not an audio file")
    try:
        file = soundfile.SoundFile(str(path))
    except (soundfile.LibsndfileError, OSError, RuntimeError) as exc:
        raise AudioError(f"cannot read audio file '{path}': {describe(exc)}") from None
    if file.frames == 0:
        file.close()
        raise AudioError(f"audio file '{path}' contains no audio")
    return file


def _sleep_until(deadline: float, stop: StopFlag) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        stop.wait(delay)


def load_portaudio() -> None:
    """Initialise PortAudio now, while this is the process's only thread. While it initialises
    (ALSA walks its devices), sounddevice points file descriptor 2 at /dev/null to keep that
    chatter off the terminal, and a line another thread logs meanwhile is lost: it once swallowed
    the daemon's single "mqtt: cannot reach" warning. Without PortAudio, the microphone says so
    when it is opened."""
    with contextlib.suppress(OSError):
        import sounddevice  # noqa: F401


class MicSource:
    """A live input stream. The callback copies and hands over; framing happens in frames()."""

    def __init__(
        self, device: str | int | None, sample_rate_hz: int | None, queue_s: float
    ) -> None:
        import sounddevice as sd

        self.device_info = find_input_device(device)
        self.sample_rate = int(sample_rate_hz or self.device_info["default_samplerate"])
        self.blocksize = round(self.sample_rate * FRAME_S)
        self._capture = CaptureQueue(self.sample_rate, queue_s)
        self._closed = False
        try:
            self._stream = sd.InputStream(
                device=self.device_info["index"], samplerate=self.sample_rate, channels=1,
                dtype="int16", blocksize=self.blocksize, callback=self._callback,
            )
            self._stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            raise AudioError(
                f"cannot open input device '{self.device_info['name']}' at "
                f"{self.sample_rate} Hz: {exc}; try another audio.sample_rate_hz"
            ) from None
        log.info("capturing from '%s' at %d Hz", self.device_info["name"], self.sample_rate)

    @property
    def overflows(self) -> int:
        return self._capture.overflows + self._driver_overflows

    _driver_overflows = 0

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's real-time thread: copy, hand over, count. No I/O, no waiting, no models.
        if status.input_overflow:
            self._driver_overflows += 1
        self._capture.put(indata[:, 0].copy())

    def frames(self, stop: StopFlag) -> Iterator[Frame]:
        yield from self._capture.frames(stop, lambda: bool(self._stream.active))
        if not stop.is_set():
            raise AudioError("the input stream stopped (was the microphone unplugged?)")

    def clock(self) -> int:
        return self._capture.clock(in_flight=self.blocksize + self._stream.latency * self.sample_rate)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stream.stop()
        self._stream.close()


def find_input_device(device: str | int | None) -> dict[str, Any]:
    """Resolve a configured device to sounddevice's info dict, or say how to find a valid one."""
    import sounddevice as sd

    try:
        info = sd.query_devices(device, "input")
    except (ValueError, sd.PortAudioError) as exc:
        which = "the default input device" if device is None else f"input device {device!r}"
        raise AudioError(
            f"{which} is not available ({describe(exc)}); run `edge-recorder devices` to list inputs"
        ) from None
    return dict(info)


def list_input_devices() -> list[dict[str, Any]]:
    import sounddevice as sd

    return [dict(d) for d in sd.query_devices() if d["max_input_channels"] > 0]


def take(source: AudioSource, seconds: float | None = None,
         stop: StopFlag | None = None) -> np.ndarray:
    """16 kHz int16 samples from a source: all of a file, or the next `seconds` of a microphone."""
    need = None if seconds is None else frames_for(seconds)
    out = []
    for frame in source.frames(stop or threading.Event()):
        out.append(frame.samples)
        if need is not None and len(out) >= need:
            break
    return np.concatenate(out) if out else np.zeros(0, np.int16)
