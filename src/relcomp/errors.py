"""Errors a user can act on. The CLI prints their message and exits non-zero, no traceback."""

from __future__ import annotations

__all__ = [
    "DataFormatError",
    "IndexSettingsError",
    "ModelLoadError",
    "RelcompError",
    "UnsupportedArchitectureError",
]


class RelcompError(Exception):
    """Base class for errors caused by the user's input, not by a bug in relcomp."""


class DataFormatError(RelcompError, ValueError):
    """A data file is malformed; the message names the file and the line."""

    def __init__(self, path: object, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


class ModelLoadError(RelcompError, OSError):
    """A model could not be loaded (missing folder, offline hub, bad files)."""


class UnsupportedArchitectureError(RelcompError, ValueError):
    """The model's architecture has no relcomp adapter."""


class IndexSettingsError(RelcompError, ValueError):
    """Index settings that cannot work: a cross-encoder, dims or rescore out of range,
    a calibration made for another model, or calibration on the evaluated split."""
