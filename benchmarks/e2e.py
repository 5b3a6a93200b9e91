"""End-to-end benchmark: a real ``dvc repro`` in a scratch copy of the project, timed per stage.

Run through ``python benchmarks/bench.py --parts e2e [--source DIR] [--set key=value ...]``.

How the time is taken apart:

- every stage process, from start to exit: a ``python`` shim first on ``PATH``
  (DVC runs ``python -m stages.<name>`` through the shell) writes the wall
  clock before it starts the real interpreter and after it exits;
- inside a stage: ``stages.launch.work`` writes the interval of the stage's
  work (the library call, after imports and reading the inputs) to the file
  named by ``LESIONSEG_TIMING_LOG``; a training phase also writes its
  unfreeze level and the images it trained (epochs x training pairs);
- start-up = process start to the first work interval; work = the sum of
  the work intervals; shut-down = the last work interval to process exit
  (MLflow logging, writing outputs, interpreter exit); between = the rest
  (a multi-phase stage's logging and model loading between its phases);
- DVC = the whole ``dvc repro`` wall time less the stage processes (DVC's own
  start-up, hashing, cache and lock file).

End-to-end efficiency = sum over training phases of (images trained / bare
training images/s at that unfreeze level) / whole wall time. The bare rates
(forward + DiceBCE + backward + Adam on tensors already in memory, as in the
benchmark's ``train`` part) are measured in fresh processes just before and
just after the ``dvc repro``, and averaged, so they see the same machine.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from lesionseg.data.synthetic import write_archives

REPO = Path(__file__).resolve().parents[1]
# What the pipeline needs from the repository: the one list, for the benchmark and for the tests' project copies
# (tests/helpers.py).
# data/external/.gitkeep: the folder the evaluate stage depends on, which holds the external sets' outputs.
PROJECT_FILES = (
    "dvc.yaml",
    "params.yaml",
    "stages",
    "lesionseg",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
    "data/external/.gitkeep",
    "recipes",
)
TIMING_LOG_ENV = "LESIONSEG_TIMING_LOG"  # stages.launch.TIMING_LOG_ENV; not imported: that would import yaml only
# The shim: start and end wall clock (GNU date, ns) and the arguments, one tab-separated line per process.
SHIM = """#!/bin/sh
start=$(date +%s.%N)
{python} "$@"
status=$?
printf '%s\\t%s\\t%s\\t%s\\n' "$start" "$(date +%s.%N)" "$status" "$*" >> {log}
exit $status
"""


def copy_project(project: Path, files=PROJECT_FILES) -> Path:
    """Copy ``files`` (default :data:`PROJECT_FILES`) of this repository into ``project`` (created)."""
    project.mkdir(parents=True, exist_ok=True)
    for name in files:
        src, dst = REPO / name, project / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    return project


def set_params(project: Path, params: dict) -> Path:
    """Set ``params`` (dotted keys, e.g. ``{"train.epochs": 1}``) in ``project``'s params.yaml (an unknown key:
    KeyError; ``finetune`` takes any training key of ``train``'s, as it states only where it differs)."""
    path = project / "params.yaml"
    values = yaml.safe_load(path.read_text())
    for key, value in params.items():
        *sections, leaf = key.split(".")
        node = values
        for section in sections:
            node = node[section]
        overrides_train = sections == ["finetune"] and leaf in values["train"] and leaf != "encoder_weights"
        if leaf not in node and not overrides_train:
            raise KeyError(f"params.yaml has no key {key!r}")
        node[leaf] = value
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return project


GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "lesionseg-test",
    "GIT_AUTHOR_EMAIL": "test@lesionseg.invalid",
    "GIT_COMMITTER_NAME": "lesionseg-test",
    "GIT_COMMITTER_EMAIL": "test@lesionseg.invalid",
}


def make_project(project: Path, params: dict | None = None, *, files=PROJECT_FILES, git: bool = True) -> Path:
    """The one project fixture: ``files`` of this repository copied into ``project``, ``params`` (dotted keys)
    set in its params.yaml, and (``git``) a git repository with one commit holding it all.

    The benchmark's scratch project and every test project (tests/helpers.py) are made here; a test of a single
    stage that needs only a params.yaml passes ``files=("params.yaml",), git=False``."""
    copy_project(project, files)
    set_params(project, params or {})
    if git:
        env = {**os.environ, **GIT_IDENTITY}
        for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "lesionseg project"]):
            subprocess.run(["git", *cmd], cwd=project, env=env, check=True, capture_output=True)
    return project


def parse_overrides(pairs: list[str]) -> dict:
    """``["train.epochs=2", "finetune.unfreeze=[all]"]`` -> dotted keys with YAML-parsed values."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair!r}: expected key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def stage_times(processes: list[dict], marks: list[dict]) -> list[dict]:
    """Per stage process: wall, start-up, work, between and shut-down seconds (see the module doc)."""
    rows = []
    for proc in processes:
        own = [m for m in marks if m["stage"] == proc["stage"] and proc["start"] <= m["start"] <= proc["end"]]
        own = [m for m in own if m.get("rank") in (None, "0")]
        wall = proc["end"] - proc["start"]
        if own:
            startup = min(m["start"] for m in own) - proc["start"]
            work = sum(m["end"] - m["start"] for m in own)
            shutdown = proc["end"] - max(m["end"] for m in own)
        else:  # a stage with nothing to do (cv with folds 0): all of it is overhead
            startup, work, shutdown = wall, 0.0, 0.0
        rows.append(
            {
                "stage": proc["stage"],
                "wall_s": wall,
                "startup_s": startup,
                "work_s": work,
                "between_s": wall - startup - work - shutdown,
                "shutdown_s": shutdown,
            }
        )
    return rows


# What a stage's start-up is made of: a fresh interpreter importing these (median of 3, same machine and run).
IMPORTS = {
    "python": "",
    "torch": "import torch",
    "torch+torchvision": "import torch, torchvision",
    "torch+torchvision+mlflow": "import torch, torchvision, mlflow",
}


def import_seconds(statement: str, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 2)


def read_processes(log: Path) -> list[dict]:
    processes = []
    for line in log.read_text().splitlines() if log.exists() else []:
        start, end, status, args = line.split("\t", 3)
        argv = shlex.split(args)
        if "-m" not in argv or not argv[argv.index("-m") + 1].startswith("stages."):
            continue  # not a stage (e.g. a helper python that DVC or git started)
        stage = argv[argv.index("-m") + 1].removeprefix("stages.")
        processes.append({"stage": stage, "start": float(start), "end": float(end), "status": int(status)})
    return sorted(processes, key=lambda p: p["start"])


def run_e2e(
    source: Path | None,
    weights: str,
    overrides: dict,
    device: str,
    bare_rate,
    keep: Path | None = None,
    generated: tuple[int, int] = (64, 16),
) -> dict:
    """Run ``dvc repro`` once in a scratch project and return the timing breakdown.

    ``source``: a folder with the four official archives (None: generate
    ``generated`` = (training, test) pairs). ``bare_rate(level, size,
    batch, runtime)``: bare training images/s at an unfreeze level, in the
    precision and layout the project's ``runtime`` section resolves to,
    measured in a fresh process. ``keep``: keep the scratch project there (else deleted).
    """
    scratch = Path(tempfile.mkdtemp(prefix="lesionseg-e2e-"))
    try:
        if source is None:
            source = write_archives(scratch / "archives", *generated)
        params = {
            "download.source": str(Path(source).resolve()),
            "download.cache": str(scratch / "downloads"),
            "data.expected_train": None,
            "data.expected_test": None,
            "train.encoder_weights": weights,
            "runtime.device": device,
            **overrides,
        }
        project = make_project(scratch / "project", params)
        values = yaml.safe_load((project / "params.yaml").read_text())
        size, levels = values["data"]["size"], _levels(values)
        finetune = {**values["train"], **values["finetune"]}  # finetune states only where it differs from train
        batches = {0: values["train"]["batch_size"], **{lv: finetune["batch_size"] for lv in levels[1:]}}

        log, marks_log, shim_dir = scratch / "processes.tsv", scratch / "work.jsonl", scratch / "bin"
        shim_dir.mkdir()
        shim = shim_dir / "python"
        shim.write_text(SHIM.format(python=shlex.quote(sys.executable), log=shlex.quote(str(log))))
        shim.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_TRACKING_URI"))}
        env.update({"PATH": f"{shim_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"})
        env[TIMING_LOG_ENV] = str(marks_log)

        before = {lv: bare_rate(lv, size, batches[lv], values["runtime"]) for lv in levels}
        start = time.time()
        result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, capture_output=True)
        wall = time.time() - start
        if result.returncode != 0:
            raise RuntimeError(f"dvc repro failed ({result.returncode}):\n{result.stderr.decode()[-4000:]}")
        after = {lv: bare_rate(lv, size, batches[lv], values["runtime"]) for lv in levels}
        imports = {name: import_seconds(statement) for name, statement in IMPORTS.items()}

        processes = read_processes(log)
        marks = [json.loads(line) for line in marks_log.read_text().splitlines()]
        stages = stage_times(processes, marks)
        phases = []
        for mark in (m for m in marks if "images" in m and m.get("rank") in (None, "0")):
            level = 0 if mark["unfreeze"] == "0" else mark["unfreeze"]
            bare = statistics.mean([before[level], after[level]])
            seconds = mark["end"] - mark["start"]
            ideal = mark["images"] / bare
            phases.append(
                {
                    "phase": mark["phase"],
                    "images": mark["images"],
                    "bare_ips_before": round(before[level], 2),
                    "bare_ips_after": round(after[level], 2),
                    "ideal_s": round(ideal, 2),
                    "phase_s": round(seconds, 2),
                    "phase_efficiency": round(ideal / seconds, 3),
                }
            )
        ideal_total = sum(p["ideal_s"] for p in phases)
        in_stages = sum(s["wall_s"] for s in stages)
        return {
            "source": str(source) if keep or not str(source).startswith(str(scratch)) else f"generated {generated}",
            "params": {k: v for k, v in params.items() if not k.startswith("download.")},
            "wall_s": round(wall, 2),
            "dvc_s": round(wall - in_stages, 2),
            "stages": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in s.items()} for s in stages],
            "phases": phases,
            "ideal_training_s": round(ideal_total, 2),
            "efficiency": round(ideal_total / wall, 3),
            "import_s": imports,
        }
    finally:
        if keep is not None:
            shutil.copytree(scratch, keep, dirs_exist_ok=True, symlinks=True)
        shutil.rmtree(scratch, ignore_errors=True)


def _levels(params: dict) -> list:
    """Unfreeze levels trained by the pipeline: 0 (frozen), then ``finetune.unfreeze`` as the stages log them."""
    value = params["finetune"]["unfreeze"]
    return [0, *[str(v) for v in (value if isinstance(value, list) else [value])]]


def print_table(e2e: dict, file=sys.stderr) -> None:
    print(f"\nend-to-end dvc repro: {e2e['wall_s']:.1f} s, efficiency {e2e['efficiency']:.3f}", file=file)
    print(f"{'stage':<10}{'wall':>9}{'start-up':>10}{'work':>9}{'between':>9}{'shut-down':>11}", file=file)
    for s in e2e["stages"]:
        print(
            f"{s['stage']:<10}{s['wall_s']:>9.1f}{s['startup_s']:>10.1f}{s['work_s']:>9.1f}"
            f"{s['between_s']:>9.1f}{s['shutdown_s']:>11.1f}",
            file=file,
        )
    print(f"{'(dvc)':<10}{e2e['dvc_s']:>9.1f}", file=file)
    print(
        "fresh interpreter, import only: " + ", ".join(f"{k} {v:.2f} s" for k, v in e2e["import_s"].items()), file=file
    )
    print(f"{'phase':<16}{'images':>8}{'bare img/s':>12}{'ideal s':>9}{'phase s':>9}{'eff.':>7}", file=file)
    for p in e2e["phases"]:
        bare = (p["bare_ips_before"] + p["bare_ips_after"]) / 2
        print(
            f"{p['phase']:<16}{p['images']:>8}{bare:>12.1f}{p['ideal_s']:>9.1f}{p['phase_s']:>9.1f}"
            f"{p['phase_efficiency']:>7.3f}",
            file=file,
        )
