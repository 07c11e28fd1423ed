"""File descriptor 2 for a moment: what C libraries (TensorFlow Lite, Vosk) write to it directly,
past Python's `sys.stderr`, captured while a block runs."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def captured_fd2() -> Iterator[bytearray]:
    """While the block runs, descriptor 2 goes to a temporary file; once it ends, what was written
    there is in the yielded bytearray. A process without descriptor 2 captures nothing."""
    caught = bytearray()
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield caught
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield caught
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            caught.extend(sink.read())


def write_fd2(data: bytes) -> None:
    """All of `data` to descriptor 2."""
    view = memoryview(data)
    while view:
        view = view[os.write(2, view):]
