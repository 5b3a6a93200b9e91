"""dvc.yaml's code deps agree with the code each stage loads, so `dvc repro` never keeps a stale output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stages.codeset import EXEMPT, import_closure, stage_code

REPO = Path(__file__).resolve().parents[1]
CODE = re.compile(r"^(lesionseg|stages)/.+\.py$")


def pipeline_stages() -> dict[str, dict]:
    """Stage name -> its definition (a ``foreach`` stage's ``do`` body)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def entry_module(stage: dict) -> str:
    match = re.search(r"python -m (stages\.\w+)", stage["cmd"])
    assert match, f"stage command does not run a stages module: {stage['cmd']!r}"
    return match.group(1)


@pytest.mark.parametrize("name", sorted(pipeline_stages()))
def test_every_stage_depends_on_exactly_the_code_it_loads(name):
    stage = pipeline_stages()[name]
    listed = {dep for dep in stage.get("deps", []) if CODE.match(dep)}
    needed = set(stage_code(entry_module(stage), REPO))
    missing, extra = sorted(needed - listed), sorted(listed - needed)
    assert not missing, f"dvc.yaml: stage {name} loads but does not depend on {missing}"
    assert not extra, f"dvc.yaml: stage {name} depends on code it does not load: {extra}"


def test_exempt_modules_exist():
    for path in EXEMPT:
        assert (REPO / path).is_file(), f"EXEMPT names {path}, which does not exist"


def test_closure_follows_lazy_imports_and_skips_type_checking(tmp_path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "lesionseg" / "sub").mkdir(parents=True)
    (tmp_path / "lesionseg" / "__init__.py").write_text('"""pkg"""\n')
    (tmp_path / "lesionseg" / "sub" / "__init__.py").write_text("X = compute()\n")
    (tmp_path / "lesionseg" / "sub" / "lazy.py").write_text("")
    (tmp_path / "lesionseg" / "sub" / "typed.py").write_text("")
    (tmp_path / "lesionseg" / "atomic.py").write_text("from lesionseg.sub import hidden\n")
    (tmp_path / "lesionseg" / "sub" / "hidden.py").write_text("")
    (tmp_path / "stages" / "__init__.py").write_text("")
    (tmp_path / "stages" / "s.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from lesionseg import atomic\n"
        "if TYPE_CHECKING:\n    from lesionseg.sub import typed\n"
        "def run():\n    from lesionseg.sub import lazy\n"
    )
    assert import_closure("stages.s", tmp_path) == [
        "lesionseg/__init__.py",
        "lesionseg/atomic.py",  # exempt: listed as loaded, but what it imports is not followed
        "lesionseg/sub/__init__.py",
        "lesionseg/sub/lazy.py",
        "stages/s.py",
    ]
    # A package marker with only a docstring is left out; one that runs code is kept.
    assert stage_code("stages.s", tmp_path) == ["lesionseg/sub/__init__.py", "lesionseg/sub/lazy.py", "stages/s.py"]


def test_training_stages_depend_on_what_picks_their_best_epoch():
    # The drift this test exists for (issue 25): train/finetune did not list the metric that chooses the
    # best epoch, so editing it kept the old checkpoints.
    for name in ("train", "finetune", "cv_train"):
        assert "lesionseg/metrics.py" in pipeline_stages()[name]["deps"]
    assert "lesionseg/training/losses.py" in pipeline_stages()["evaluate"]["deps"]
