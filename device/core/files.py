"""Durable, owner-only file operations shared by the store and the model registry."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def atomic_write(path: Path, data: bytes, mode: int = PRIVATE_FILE, suffix: str = ".tmp") -> Path:
    """Write via a temp file in the same directory, fsync, rename, fsync the directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:  # a nearly full disk writes short: loop until all is written, or fail
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def size_of(path: Path) -> int:
    """A file's size in bytes; 0 once it is gone (a delete may have taken it meanwhile)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed and make it owner-only."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    if path.stat().st_mode & 0o777 != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)
    return path


def read_secret(path: str | None, what: str) -> str | None:
    """A password, token or key from its own file (kept out of the config), stripped."""
    from device.core.errors import ConfigError

    if path is None:
        return None
    try:
        return Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file '{path}': {exc.strerror}") from None
