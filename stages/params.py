"""Reading ``params.yaml`` into typed configs: the only place that reads it (and the repository root).

The ``lesionseg`` library receives explicit, typed arguments; a bad, missing or
unknown key fails here, at the start of the first stage that reads its section
(validated by :mod:`stages.schema`), naming its dotted key.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from stages.schema import SECTIONS

PARAMS_FILE = Path("params.yaml")
TYPE_NAMES = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool"}


class ParamError(ValueError):
    """A bad, missing or unknown key in params.yaml; the message names the dotted key."""


def load_params(path: Path = PARAMS_FILE) -> dict:
    """The file as a mapping of sections (an unknown section fails here); :func:`section` validates one."""
    try:
        params = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ParamError(f"{path}: not found (run stages from the repository root)") from exc
    except yaml.YAMLError as exc:
        raise ParamError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(params, dict):
        raise ParamError(f"{path}: expected a mapping of sections")
    unknown = [name for name in params if name not in SECTIONS]
    if unknown:
        raise ParamError(f"params.yaml: unknown key {unknown[0]!r}")
    return params


def section(params: dict, name: str):
    """Section ``name`` of ``params`` validated by its :mod:`stages.schema` model."""
    if name not in params:
        raise ParamError(f"params.yaml: missing key {name!r}")
    try:
        return SECTIONS[name].model_validate(params[name])
    except ValidationError as exc:
        raise ParamError("; ".join(_describe(name, error) for error in exc.errors())) from None


def _describe(name: str, error: dict) -> str:
    key = ".".join([name, *map(str, error["loc"])])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"params.yaml: unknown key {key!r}"
    if kind == "missing":
        return f"params.yaml: missing key {key!r}"
    if kind in ("model_type", "dict_type"):
        return f"params.yaml: {key} must be a mapping, got {error['input']!r}"
    if kind in TYPE_NAMES:
        return f"params.yaml: {key} must be of type {TYPE_NAMES[kind]}, got {error['input']!r}"
    return f"params.yaml: {key}: {error['msg'].removeprefix('Value error, ')}, got {error['input']!r}"


def build(cls, name: str, values: dict, **given):
    """Dataclass ``cls`` of section ``name``'s ``values`` and ``given``; its validation errors name the key."""
    try:
        return cls(**values, **given)
    except ValueError as exc:
        raise ParamError(f"params.yaml: {name}.{exc}") from exc


def repo_root() -> Path:
    """The main repository: DVC sets DVC_ROOT to it, also for ``dvc exp run --temp`` and queues."""
    return Path(os.environ.get("DVC_ROOT", ".")).resolve()


def local_path(value: str) -> str:
    """A relative local path from params, made absolute against the repository root."""
    return str((repo_root() / Path(value).expanduser()).resolve())
