"""The package's layers read one way: no import circle, no lower layer importing a higher one (docs/development.md)."""

from __future__ import annotations

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
