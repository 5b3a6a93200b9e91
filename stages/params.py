"""Reading ``params.yaml`` into typed configs: the only place that reads it (and the repository root).

The ``lesionseg`` library receives explicit, typed arguments; a bad or missing
value fails here, at a stage's start, naming its dotted key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path

import yaml

PARAMS_FILE = Path("params.yaml")


class ParamError(ValueError):
    """A bad or missing value in params.yaml; the message names the dotted key."""


def load_params(path: Path = PARAMS_FILE) -> dict:
    try:
        params = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ParamError(f"{path}: not found (run stages from the repository root)") from exc
    except yaml.YAMLError as exc:
        raise ParamError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(params, dict):
        raise ParamError(f"{path}: expected a mapping of sections")
    return params


def get(params: dict, key: str):
    """The value at dotted ``key``; a missing key raises :class:`ParamError` naming it."""
    node = params
    for i, part in enumerate(key.split(".")):
        if not isinstance(node, dict) or part not in node:
            raise ParamError(f"params.yaml: missing key {'.'.join(key.split('.')[: i + 1])!r}")
        node = node[part]
    return node


def _check_type(key: str, value, annotation):
    """Return ``value`` if it fits ``annotation`` (int, float, str, bool, Optional[...]), else raise."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(a for a in options if a is not type(None))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and (type(value) is not annotation):
        raise ParamError(f"params.yaml: {key} must be of type {annotation.__name__}, got {value!r}")
    return value


def build(cls, params: dict, section: str, skip: tuple[str, ...] = (), **given):
    """Build dataclass ``cls`` from ``params[section]``.

    Every field not in ``given`` must be present under ``section`` (fields in
    ``skip`` are left to their defaults); values are type-checked, and the
    dataclass's own validation errors are re-raised naming ``section.field``.
    """
    values = get(params, section)
    if not isinstance(values, dict):
        raise ParamError(f"params.yaml: {section} must be a mapping")
    hints = typing.get_type_hints(cls)
    kwargs = dict(given)
    for field in dataclasses.fields(cls):
        if field.name in given or field.name in skip or not field.init:
            continue
        if dataclasses.is_dataclass(hints[field.name]):
            continue
        kwargs[field.name] = _check_type(
            f"{section}.{field.name}", get(params, f"{section}.{field.name}"), hints[field.name]
        )
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ParamError(f"params.yaml: {section}.{exc}") from exc


def repo_root() -> Path:
    """The main repository: DVC sets DVC_ROOT to it, also for ``dvc exp run --temp`` and queues."""
    return Path(os.environ.get("DVC_ROOT", ".")).resolve()


def local_path(value: str) -> str:
    """A relative local path from params, made absolute against the repository root."""
    return str((repo_root() / Path(value).expanduser()).resolve())
