"""Errors that name the offending file and what is wrong with it."""

from __future__ import annotations


class DataError(ValueError):
    """Input data (archive, image, mask, cache) is unusable; the message names the file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # keep (path, problem) when raised in a worker process
        return (type(self), (self.path, self.problem))


class SizeMismatchError(DataError):
    """A mask whose size differs from its image's: the pair cannot be scored at original resolution."""


class EncoderWeightsError(RuntimeError):
    """The encoder's pretrained weights could not be obtained or do not fit."""


class TrackingError(RuntimeError):
    """The MLflow tracking store does not answer; the message names it."""
