"""Errors that name the offending file and what is wrong with it."""

from __future__ import annotations

import errno
import re

_TORCH_ARCHIVE_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


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


def unreadable_torch_file(path, exc: Exception) -> str:
    """What is wrong with the file at ``path`` that ``torch.load(..., weights_only=True)`` could not read, raising
    ``exc``, in words about the file. Never torch's advice to load with ``weights_only=False``: lesionseg reads
    checkpoints, weights and caches as tensors and plain data only, on purpose (they may come from elsewhere, and a
    full unpickle runs any code the file holds)."""
    text = str(exc)
    if found := re.search(r"Unsupported global: GLOBAL (\S+)", text):
        return (
            f"it holds a pickled Python object ({found[1]}), not just tensors and plain data; "
            "lesionseg reads only tensors and plain data (never code) from such files"
        )
    if isinstance(exc, OSError) and exc.errno != errno.EINVAL:  # EINVAL: torch seeking in a cut-short archive
        return exc.strerror or type(exc).__name__
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except OSError as error:
        return error.strerror or type(error).__name__
    if head == _TORCH_ARCHIVE_MAGIC:
        detail = re.search(r"PytorchStreamReader (failed [^.]*)", text)
        what = f" ({detail[1]})" if detail else ""
        return f"a damaged or incomplete torch file{what}: cut short, or changed after it was saved"
    if not head:
        return "the file is empty"
    return "not a file written by torch.save (neither its archive nor a pickle of tensors and plain data)"
