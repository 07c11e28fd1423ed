"""One error root. Library errors are converted at the boundary and name the offending value."""


class EdgeRecorderError(Exception):
    """Base class: a problem the user can fix; the CLI prints it as one line."""

    exit_code = 1


class ConfigError(EdgeRecorderError, ValueError):
    """The configuration file is missing, malformed or has a bad value."""

    exit_code = 2


class ModelError(EdgeRecorderError, LookupError):
    """A model is missing, fails its checksum, or cannot be loaded."""


class DownloadError(ModelError):
    """A model download failed (offline, HTTP error, checksum mismatch)."""


class AudioError(EdgeRecorderError, IOError):
    """An audio input (WAV file or device) cannot be opened or read."""


class IndicatorError(EdgeRecorderError, RuntimeError):
    """The recording light could not be set or confirmed."""


class StoreError(EdgeRecorderError, IOError):
    """The clip store cannot be opened, written or read."""
