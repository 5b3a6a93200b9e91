"""The repository code a stage loads: the static import closure of its module.

``dvc.yaml`` lists, for every stage, the Python files of this repository the stage runs
(``tests/test_stage_deps.py`` checks that the two agree), and the training stages key their deferred MLflow
logging by the same set (:func:`stages.runlog.deferred`). The closure follows every import of a repository module,
inside functions too (a lazy import runs whenever the stage takes that path), but not ``if TYPE_CHECKING:``
blocks, and not into the :data:`EXEMPT` modules.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

# Repository code whose changes cannot change a stage's outputs, left out of every stage's deps so that
# editing it does not re-run the pipeline. Keep this list short: only modules that log, write files
# atomically, define error types or mark time. What only they import is not followed either.
EXEMPT = frozenset(
    {
        "lesionseg/atomic.py",  # writes a finished file at once (temporary file + rename)
        "lesionseg/errors.py",  # error types
        "lesionseg/tracking.py",  # MLflow logging
        "stages/runlog.py",  # MLflow set-up, run tags, deferred logging
        "stages/launch.py",  # logging set-up, error lines, timing marks for the benchmark
        "stages/codeset.py",  # this module (used for the deferred-logging key)
    }
)
PACKAGES = ("lesionseg", "stages")  # the repository's importable code


def _module_file(name: str, root: Path) -> str | None:
    """``lesionseg.data.cache`` -> ``lesionseg/data/cache.py`` (or a package's ``__init__.py``), if in the repo."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (root / candidate).is_file():
            return candidate.as_posix()
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, package: str) -> set[str]:
    """Dotted names of the modules an AST imports: ``a.b`` and, for ``from a.b import c``, also ``a.b.c``."""
    names: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return names


@cache
def _direct_imports(path: str, root: Path) -> frozenset[str]:
    """Repository files that ``path`` (relative to ``root``) imports, with the packages on the way."""
    module = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    files = set()
    for name in _imported_names(ast.parse((root / path).read_text(), path), package):
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py too
            found = _module_file(".".join(parts[:i]), root)
            if found:
                files.add(found)
    return frozenset(files)


def import_closure(module: str, root: Path | str = ".") -> list[str]:
    """Every repository file (relative, sorted) loaded by importing ``module`` and running its functions."""
    root = Path(root).resolve()
    start = _module_file(module, root)
    if start is None:
        raise ValueError(f"{module}: no such module under {root}")
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path not in EXEMPT:
            todo.extend(_direct_imports(path, root))
    return sorted(seen)


def _docstring_only(path: Path) -> bool:
    """A package marker: nothing but a docstring and constant assignments (``__version__``)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            continue
        return False
    return True


def stage_code(module: str, root: Path | str = ".") -> list[str]:
    """The code a stage's ``dvc.yaml`` deps must list: :func:`import_closure` without the :data:`EXEMPT`
    modules and without package markers that hold no code (a docstring, ``__version__``)."""
    root = Path(root).resolve()
    return [
        path
        for path in import_closure(module, root)
        if path not in EXEMPT and not (path.endswith("__init__.py") and _docstring_only(root / path))
    ]
