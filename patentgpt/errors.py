"""The error classes every package raises. The CLI turns each into exit status 2 with its message;
a message names the key, file or command that fixes it."""

from __future__ import annotations


class PatentGPTError(ValueError):
    """Base of the project's user-facing errors (bad config, bad data, bad state on disk)."""


class ConfigError(PatentGPTError):
    """A configuration problem; the message names the offending key."""


class ShardError(PatentGPTError):
    """Missing, incomplete, corrupt or mismatched shards."""


class DataError(PatentGPTError):
    """Input data a stage cannot use at all (no usable record, wrong format)."""


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite or spiking losses."""


# What the command line reports as a user error (exit 2) rather than a traceback.
USER_ERRORS = (PatentGPTError, FileNotFoundError)
