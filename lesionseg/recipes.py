"""Recipes written as files of params (``recipes/<name>.yaml``), turned into ``dvc exp run`` options.

params.yaml is lesionseg's default recipe; any other recipe is one YAML file
with params.yaml's layout that sets every recipe key. ``lesionseg recipe
NAME`` prints it as ``-S key=value`` options, so that the experiment is an
ordinary DVC experiment whose params `dvc exp show` and MLflow show in full:
``dvc exp run -n reference $(lesionseg recipe reference)``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

_RECIPES_DIR = Path("recipes")


def recipe_path(name: str, folder: Path = _RECIPES_DIR) -> Path:
    """``reference`` -> ``recipes/reference.yaml``; a path to a YAML file is taken as it is."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = Path(folder) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(folder).glob("*.yaml"))
        raise FileNotFoundError(f"{path}: no such recipe (recipes in {folder}/: {', '.join(known) or 'none'})")
    return path


def load_recipe(path: Path) -> dict:
    """The recipe's params as dotted keys (``{"augment.hflip": 0.5, ...}``), in the file's order."""
    tree = yaml.safe_load(Path(path).read_text())
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: a recipe is a mapping of params.yaml sections")
    return flatten(tree)


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def override_value(value) -> str:
    """A params value in the override grammar of ``dvc exp run -S`` (Hydra's), without spaces."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, str) and (not value or any(c in value for c in " ,[]{}()='\"\\$")):
        raise ValueError(f"recipe value {value!r}: use a value without spaces or override syntax")
    return str(value)


def dvc_options(recipe: dict) -> list[str]:
    """``["-S", "augment.hflip=0.5", ...]``: the recipe's params as ``dvc exp run`` options."""
    options = []
    for key, value in recipe.items():
        options += ["-S", f"{key}={override_value(value)}"]
    return options
