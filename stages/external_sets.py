"""The external test sets of ``evaluate.external``: their names and folders, and their prepared splits."""

from __future__ import annotations

from pathlib import Path

from stages.params import ParamError, section


def external_folders(params: dict) -> dict[str, str]:
    """``evaluate.external`` checked: set name -> folder (a string)."""
    value = section(params, "evaluate").external or {}
    if not isinstance(value, dict):
        raise ParamError("params.yaml: evaluate.external must map a set's name to a folder")
    for name, folder in value.items():
        if not isinstance(folder, str) or not folder:
            raise ParamError(f"params.yaml: evaluate.external.{name} must be a folder, got {folder!r}")
    return {str(name): folder for name, folder in value.items()}


def load_external_sets(params: dict, folder: Path) -> dict:
    """The prepared sets of ``evaluate.external`` (name -> :class:`~lesionseg.data.cache.Split`), in its order."""
    names = list(external_folders(params))
    if not names:
        return {}
    from lesionseg.data.cache import Split

    return {name: Split.load(folder / f"{name}.pt") for name in names}
