"""Errors a user can act on. The CLI prints their message and exits non-zero, no traceback."""

from __future__ import annotations

__all__ = [
    "DataFormatError",
    "IndexSettingsError",
    "ModelLoadError",
    "NonFiniteError",
    "OutputLocationError",
    "PlanError",
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


class PlanError(RelcompError, ValueError):
    """A compression plan that cannot be carried out; the message names the problem."""


class UnsupportedArchitectureError(RelcompError, ValueError):
    """The model's architecture has no relcomp adapter."""


class NonFiniteError(RelcompError, ValueError):
    """A weight, score, relevance, statistic or parity figure is NaN or infinite.

    A non-finite number never reaches an artifact, a gate or a plan: the step that
    meets one stops with this error, and the message says what held it.
    """


class OutputLocationError(RelcompError, OSError):
    """The output file or folder cannot be written (read-only, or a file where a folder goes)."""


class IndexSettingsError(RelcompError, ValueError):
    """Index settings that cannot work: a cross-encoder, dims or rescore out of range,
    a calibration made for another model, or calibration on the evaluated split."""
