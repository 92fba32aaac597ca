"""Exceptions that the CLI turns into one clear message and a non-zero exit, without a traceback."""

from __future__ import annotations

from pathlib import Path


class AffectMAEError(Exception):
    """Base class for every error caused by the user's input or environment (not by a bug)."""


class InputFormatError(AffectMAEError):
    """A file the user gave us is malformed. The message names the file and, where known, the line.

    ``str(err)`` is ``"<path>:<line>: <message>"`` (or ``"<path>: <message>"`` when ``line`` is None),
    the form compilers use, so editors can jump to it.
    """

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = Path(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else f"{self.path}"
        super().__init__(f"{where}: {message}")


class CheckpointError(AffectMAEError):
    """A checkpoint cannot be used: wrong format, wrong architecture, incompatible config."""


class TrainingDivergedError(AffectMAEError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""
