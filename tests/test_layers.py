"""The package's layers read one way: no import circle, no lower layer importing a higher one; and what is public
is the API: every other name has a leading underscore (docs/development.md)."""

from __future__ import annotations

import ast
import contextlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lesionseg.model.checkpoint import make_checkpoint, save_checkpoint
from lesionseg.model.model import ModelConfig, build_model
from stages.codeset import _direct_imports

REPO = Path(__file__).resolve().parents[1]
# Bottom to top. The top-level helpers below every layer: they import no layer.
BASE = {"lesionseg/atomic.py", "lesionseg/errors.py", "lesionseg/metrics.py", "lesionseg/runtime.py"}
BASE |= {"lesionseg/tracking.py"}
BASE |= {"lesionseg/mlflow_view.py", "lesionseg/recipes.py", "lesionseg/__init__.py"}
LAYERS = ("data", "augment", "model", "inference", "training", "evaluation", "experiments", "report", "serving")
TOP = {"lesionseg/cli.py"}


def layer(path: str) -> int:
    if path in BASE:
        return 0
    if path in TOP:
        return len(LAYERS) + 1
    parts = path.split("/")
    assert len(parts) == 3 and parts[1] in LAYERS, f"{path}: in no layer; add it to one (or to BASE)"
    return LAYERS.index(parts[1]) + 1


def package_files() -> list[str]:
    return sorted(p.relative_to(REPO).as_posix() for p in (REPO / "lesionseg").rglob("*.py"))


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{path} -> {dep}"
        for path in package_files()
        for dep in _direct_imports(path, REPO)
        if not dep.endswith("__init__.py") and layer(dep) > layer(path)
    ]
    assert not upward, "imports that run up a layer:\n" + "\n".join(upward)


def test_no_import_circle():
    graph = {
        path: sorted(d for d in _direct_imports(path, REPO) if not d.endswith("__init__.py"))
        for path in package_files()
    }
    state: dict[str, str] = {}  # "open" while on the DFS stack, "done" after

    def visit(path: str, trail: list[str]) -> list[str] | None:
        state[path] = "open"
        for dep in graph.get(path, []):
            if state.get(dep) == "open":
                return [*trail[trail.index(dep) :], dep] if dep in trail else [path, dep]
            if dep not in state:
                found = visit(dep, [*trail, dep])
                if found:
                    return found
        state[path] = "done"
        return None

    for path in graph:
        if path not in state:
            circle = visit(path, [path])
            assert circle is None, "import circle: " + " -> ".join(circle)


def test_predict_with_overlays_imports_no_matplotlib(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig("none")
    model = build_model(config, unfreeze="all")
    save_checkpoint(make_checkpoint(model, config, 64, 0, {}), tmp_path / "model.pt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "lesion.jpg")
    argv = ["predict", "--checkpoint", str(tmp_path / "model.pt"), "--output", str(tmp_path / "out"), "--overlay"]
    argv += ["--quiet", str(tmp_path / "lesion.jpg")]
    script = (
        "import sys; from lesionseg.cli import main; code = main(sys.argv[1:]); "
        "print('matplotlib' in sys.modules); sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert (tmp_path / "out" / "lesion_overlay.png").is_file() and (tmp_path / "out" / "lesion_mask.png").is_file()


# What is public is the API. A public (no leading underscore) top-level name of a lesionseg module is used outside
# it: by another module, a stage, a script, the benchmark or the docs; or it is a type that a public function or
# class of its module takes, returns or raises. Every other name is internal: `_name` (tests may reach it).
READERS = ("lesionseg/**/*.py", "stages/**/*.py", "scripts/*", "benchmarks/*.py", "docs/**/*.md", "README.md")


def _definitions(tree: ast.Module) -> list[list[str]]:
    """The public top-level names, grouped by statement: ``BETTER, WORSE, NO_CHANGE = ...`` is one group."""
    groups = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            groups.append([node.name])
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            groups.append([n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)])
    return [group for group in ([n for n in g if not n.startswith("_")] for g in groups) if group]


def public_names(tree: ast.Module) -> list[str]:
    return [name for group in _definitions(tree) for name in group]


def _names_in(expr: ast.AST | None) -> set[str]:
    found = set()
    for node in ast.walk(expr) if expr is not None else ():
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
            with contextlib.suppress(SyntaxError):
                found |= _names_in(ast.parse(node.value, mode="eval"))
    return found


def _signature_types(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    args = function.args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    found = _names_in(function.returns).union(*(_names_in(a.annotation) for a in every if a is not None))
    raised = (node.exc for node in ast.walk(function) if isinstance(node, ast.Raise) and node.exc is not None)
    return found | {e.func.id for e in raised if isinstance(e, ast.Call) and isinstance(e.func, ast.Name)}


def api_types(tree: ast.Module) -> set[str]:
    """The names in the annotations (and the exceptions raised) of a module's public functions and classes."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            found |= _signature_types(node)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, ast.AnnAssign):
                    found |= _names_in(item.annotation)
                elif isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                    item.name.startswith("__") or not item.name.startswith("_")
                ):
                    found |= _signature_types(item)
    return found


def unused_public_names(path: str, source: str, words_elsewhere: set[str]) -> list[str]:
    """``path``'s public names that no other file names (``words_elsewhere``: their words) and no public
    signature of its own takes, returns or raises; names defined in one statement are kept together."""
    tree = ast.parse(source)
    kept = words_elsewhere | api_types(tree)
    return [f"{path}: {name}" for group in _definitions(tree) if not kept & set(group) for name in group]


def _words(path: Path) -> set[str]:
    return set(re.findall(r"\w+", path.read_text(encoding="utf-8", errors="replace")))


def test_every_public_name_is_used_outside_its_module():
    readers = {p for pattern in READERS for p in REPO.glob(pattern) if p.is_file()}
    words = {p.relative_to(REPO).as_posix(): _words(p) for p in readers}
    unused = []
    for path in package_files():
        elsewhere = set().union(*(w for other, w in words.items() if other != path))
        unused += unused_public_names(path, (REPO / path).read_text(encoding="utf-8"), elsewhere)
    assert not unused, "public names used only in their own module (and tests): make them _private\n" + "\n".join(
        unused
    )


def test_the_rule_finds_a_name_only_its_module_uses():
    source = (
        "class Result: ...\nclass Mismatch(ValueError): ...\nclass Helper: ...\nLIMIT = 3\n_ok = 1\nUP, DOWN = 1, 2\n"
        "def run(x: int) -> Result:\n    if x > LIMIT:\n        raise Mismatch()\n    return Helper()\n"
    )
    assert unused_public_names("m.py", source, {"run", "DOWN"}) == ["m.py: Helper", "m.py: LIMIT"]
    assert unused_public_names("m.py", source, {"run", "Helper", "LIMIT", "UP"}) == []
    assert unused_public_names("m.py", source, set()) == [
        f"m.py: {n}" for n in ("Helper", "LIMIT", "UP", "DOWN", "run")
    ]


def test_all_lists_exactly_the_public_names():
    wrong = []
    for path in package_files():
        tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
        listed = [
            ast.literal_eval(node.value)
            for node in tree.body
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
        ]
        if listed and sorted(listed[-1]) != sorted(public_names(tree)):
            wrong.append(f"{path}: __all__ {sorted(listed[-1])} != public names {sorted(public_names(tree))}")
    assert not wrong, "\n".join(wrong)
