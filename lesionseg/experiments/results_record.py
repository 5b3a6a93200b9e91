"""A finished experiment as a small committed record: ``results/<name>/``, the scores only (kilobytes).

:func:`save_record` (``python scripts/results.py save <exp>``) writes one from a DVC experiment, a git revision or a
reports folder. A record is itself a reports folder (metrics, per-image tables, the params as run and
``provenance.json``), so every reader of runs reads it; :func:`read_provenance` reads its provenance. The
layout: docs/recipe.md, "Recording the results".
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import posixpath
import shlex
import subprocess
from pathlib import Path, PurePosixPath

import pandas as pd
import yaml

from lesionseg import atomic
from lesionseg.errors import DataError
from lesionseg.experiments.runs import (
    CV_METRICS_FILE,
    METRICS_FILE,
    REPORTS_DIR,
    RunFiles,
    evaluation_folders,
    pipeline_run_files,
)
from lesionseg.recipes import flatten, override_value

RESULTS_DIR = Path("results")
PARAMS_FILE = "params.yaml"
_PROVENANCE_FILE = "provenance.json"
_MODEL_CARD = "models/model_card.json"  # the export stage's card: git commit, DVC experiment, MLflow run
_HISTORY_FOLDERS = ("reports/history", "models/cv")  # per-epoch CSVs, each epoch's time in "seconds"
_FIRST_CHECKPOINT = "models/frozen.pt"
_KEPT_BY_DVC = (":!params.yaml", ":!dvc.lock")  # changed in the workspace by any `dvc exp run`, not code changes


def record_path(name: str, results_dir: Path = RESULTS_DIR) -> Path:
    return Path(results_dir) / name


def _git(repo: str, *args: str) -> str | None:
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take the index lock of a repository another process uses.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True, env=env)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def _portable_path(value, repo_root: Path):
    """``value`` as a record stores it: an absolute path beside the repository (under its parent folder, e.g.
    ``/work/shared/data/x`` for ``/work/main``) relative to the repository root, as params' relative paths are
    read (``../shared/data/x``); any other absolute path as ``@local/<its name>``, which no other machine has
    either. Anything else (relative paths, URLs, ``sqlite:///`` URIs, numbers) unchanged."""
    if not isinstance(value, str) or not value.startswith("/"):
        return value
    path, root = PurePosixPath(os.path.normpath(value)), PurePosixPath(repo_root)
    if root.parent != PurePosixPath("/") and path.is_relative_to(root.parent):
        return os.path.relpath(path, root)
    return f"@local/{path.name}"


def _portable_params(tree, repo_root: Path):
    """The params tree with every absolute path made :func:`_portable_path`."""
    if isinstance(tree, dict):
        return {key: _portable_params(value, repo_root) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_portable_params(value, repo_root) for value in tree]
    return _portable_path(tree, repo_root)


def _portable_command(command: str | None, repo_root: Path) -> str | None:
    """A command line with the absolute paths of its words and of its ``key=value`` words' values made
    :func:`_portable_path`; unchanged (quoting too) where it has none."""
    if not command:
        return command
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: not a command line to take apart
        return command
    out = []
    for word in words:
        key, eq, value = word.partition("=")
        out.append(
            f"{key}={_portable_path(value, repo_root)}" if eq and "/" not in key else _portable_path(word, repo_root)
        )
    return shlex.join(out) if out != words else command


def _params_as_run(run: RunFiles) -> tuple[dict, str]:
    """The run's params (nested, in params.yaml's layout and order) and where they came from: params.yaml
    with every stage's params from ``dvc.lock`` over it (what the outputs were made with)."""
    text, lock = run.read_repo_text(PARAMS_FILE), run.read_repo_text("dvc.lock")
    if text is None and lock is None:
        raise DataError(run.where(""), "neither dvc.lock nor params.yaml beside these reports: not a pipeline run")
    flat = flatten(yaml.safe_load(text) or {}) if text else {}
    used = {}
    for stage in (yaml.safe_load(lock or "") or {}).get("stages", {}).values():
        for key, value in stage.get("params", {}).get(PARAMS_FILE, {}).items():
            used.update(flatten({key: value}) if isinstance(value, dict) else {key: value})
    flat.update(used)
    if not lock:
        return _nest(flat), "params.yaml (no dvc.lock)"
    return _nest(flat), "params.yaml with every stage's params from dvc.lock over it (the params as run)"


def _nest(flat: dict) -> dict:
    tree: dict = {}
    for key in flat:
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = flat[key]
    return tree


def _reconstructed_command(name: str | None, params: dict, baseline: dict | None) -> str | None:
    """``dvc exp run [-n NAME] -S key=value ...`` setting every param that differs from ``baseline`` (the
    params.yaml of the commit the experiment was run from; ``+key`` for one the baseline lacks)."""
    if baseline is None:
        return None
    run, base = flatten(params), flatten(baseline)
    words = ["dvc", "exp", "run", *(["-n", name] if name else [])]
    for key, value in run.items():
        if key in base and base[key] == value:
            continue
        if isinstance(value, dict):  # an empty mapping, e.g. evaluate.external: {}
            continue
        try:
            words += ["-S", f"{'' if key in base else '+'}{key}={override_value(value)}"]
        except ValueError:
            return None  # a value the override grammar cannot carry: not recoverable as one line
    return shlex.join(words)


def _first_key(tree, key: str):
    """The value of ``key`` anywhere in nested dicts (depth first), else None (also for ``tree`` None)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _first_key(value, key)
            if found is not None:
                return found
    return None


def machine() -> dict:
    """This machine: platform, CPU model and count, GPU (CUDA) model, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
    }


def precision(run: RunFiles, params: dict, card: dict | None, here: dict) -> tuple[str, str]:
    """The training precision and where it came from: the model card's or first checkpoint's recorded
    ``precision``, else derived from ``runtime.amp`` and ``runtime.device`` (bf16 autocast is CUDA's only)."""
    recorded = _first_key(card, "precision") if card else None
    if isinstance(recorded, str) and recorded:
        return str(recorded), _MODEL_CARD
    recorded = _first_key(_read_checkpoint(run), "precision")  # e.g. under the checkpoint's "numerics"
    if isinstance(recorded, str) and recorded:
        return recorded, _FIRST_CHECKPOINT
    runtime = params.get("runtime", {})
    amp, device = runtime.get("amp"), str(runtime.get("device", "auto"))
    if amp in (False, "off", "fp32"):
        return "fp32", f"derived: runtime.amp={override_value(amp)}"
    if device.startswith("cuda") or (device == "auto" and here["gpu"]):
        where = "" if device.startswith("cuda") else ", and this machine has a CUDA GPU"
        return "bf16", f"derived: runtime.amp={override_value(amp)}, runtime.device={device}{where}"
    return "fp32", f"derived: runtime.amp={override_value(amp)} is bf16 on CUDA only, runtime.device={device}"


def _read_checkpoint(run: RunFiles) -> dict | None:
    """The frozen phase's checkpoint dict, if the run has one (``weights_only=True``)."""
    import torch

    path = posixpath.join(run.repo_root, _FIRST_CHECKPOINT) if run.repo_root else _FIRST_CHECKPOINT
    try:
        with run.fs.open(path) as f:
            return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except Exception:  # absent, or not a checkpoint: the precision is then derived
        return None


def _training_seconds(run: RunFiles) -> float | None:
    """The sum of every epoch's ``seconds`` over the per-epoch histories under :data:`_HISTORY_FOLDERS`
    (every training phase, cross-validation folds included); None if there is none."""
    total, found = 0.0, False
    for folder in _HISTORY_FOLDERS:
        root = posixpath.join(run.repo_root, folder) if run.repo_root else folder
        try:
            paths = [p for p in run.fs.find(root) if p.endswith(".csv")]
        except FileNotFoundError:
            continue
        for path in paths:
            with run.fs.open(path) as f:
                history = pd.read_csv(f)
            if "seconds" in history.columns and len(history):
                total, found = total + float(history["seconds"].sum()), True
    return round(total, 1) if found else None


def provenance(
    run: RunFiles,
    source: str,
    repo: str,
    params: dict,
    command: str | None,
    wall_seconds: float | None,
) -> dict:
    """Where the record's numbers came from, each fact with its source."""
    card_text = run.read_repo_text(_MODEL_CARD)
    card = json.loads(card_text) if card_text else None
    made = (card or {}).get("provenance", {})
    if run.rev:
        commit = _git(repo, "rev-parse", run.fs.repo.get_rev()) or run.fs.repo.get_rev()
        baseline_commit = _git(repo, "rev-parse", f"{commit}^")
        experiment = made.get("dvc_experiment") or source
        dirty = None
    else:
        commit = baseline_commit = _git(repo, "rev-parse", "HEAD")
        experiment = made.get("dvc_experiment")
        # Code changed since the commit; params.yaml and dvc.lock are what `dvc exp run` leaves changed.
        dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no", "--", ".", *_KEPT_BY_DVC))
    baseline_text = _git(repo, "show", f"{baseline_commit}:{PARAMS_FILE}") if baseline_commit else None
    if command:
        command_source = "given (--command)"
    else:
        baseline = yaml.safe_load(baseline_text) if baseline_text else None
        command = _reconstructed_command(experiment, params, baseline)
        command_source = (
            f"reconstructed: the params as run that differ from {PARAMS_FILE} at {baseline_commit[:12]}"
            if command
            else "not known (give --command)"
        )
    here = machine()
    precision_used, precision_source = precision(run, params, card, here)
    if wall_seconds is not None:
        wall, wall_source = wall_seconds, "given (--wall-seconds)"
    else:
        wall = _training_seconds(run)
        wall_source = (
            "training phases only: the sum of the per-epoch histories' 'seconds' (reports/history, models/cv); "
            "not data preparation or evaluation"
            if wall is not None
            else "not known"
        )
    return {
        "source": source,
        "git_commit": commit,
        "baseline_commit": baseline_commit,
        "uncommitted_changes": dirty,
        "dvc_experiment": experiment,
        "command": command,
        "command_source": command_source,
        "mlflow_run_id": made.get("mlflow_run_id"),
        "machine": here,
        "machine_source": "the machine that ran `python scripts/results.py save`",
        "precision": precision_used,
        "precision_source": precision_source,
        "wall_seconds": wall,
        "wall_seconds_source": wall_source,
    }


def save_record(
    source: str,
    name: str,
    results_dir: Path = RESULTS_DIR,
    repo: str = ".",
    command: str | None = None,
    wall_seconds: float | None = None,
) -> Path:
    """Write ``results_dir/name/`` from ``source`` (a DVC experiment or git revision of ``repo``, or a
    reports folder of ``repo`` on disk) and return it. An earlier record of that name is replaced only once
    the new one is complete (:func:`lesionseg.atomic.atomic_dir`)."""
    run = pipeline_run_files(source, REPORTS_DIR, repo)
    params, params_source = _params_as_run(run)
    # No machine-local path in a committed record: data beside the repository as a path relative to it.
    root = Path(repo).resolve()
    params = _portable_params(params, root)
    target = record_path(name, results_dir)
    with atomic.atomic_dir(target) as staging:
        (staging / "cv").mkdir()
        (staging / METRICS_FILE).write_text(run.read_text(METRICS_FILE))
        with contextlib.suppress(DataError):  # absent in a run from before cross-validation was a stage
            (staging / CV_METRICS_FILE).write_text(run.read_text(CV_METRICS_FILE))
        for _, folder in evaluation_folders(run):
            for csv in run.csv_names(folder):  # none with cross-validation off: no empty folder either
                (staging / folder).mkdir(parents=True, exist_ok=True)
                (staging / folder / csv).write_text(run.read_text(posixpath.join(folder, csv)))
        (staging / PARAMS_FILE).write_text(
            f"# The params as run, from {params_source}; written by scripts/results.py save.\n"
            + yaml.safe_dump(params, sort_keys=False)
        )
        facts = provenance(run, source, repo, params, _portable_command(command, root), wall_seconds)
        facts["source"] = _portable_path(facts["source"], root)
        facts["command"] = _portable_command(facts["command"], root)
        atomic.write_json(staging / _PROVENANCE_FILE, {"record": name, "params_source": params_source, **facts})
    return target


def read_provenance(name: str, results_dir: Path = RESULTS_DIR) -> dict:
    """A committed record's ``provenance.json``; ``DataError`` naming the file if there is none."""
    path = record_path(name, results_dir) / _PROVENANCE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DataError(
            path, f"no record {name!r}: write it with `python scripts/results.py save <exp> --name {name}`"
        ) from exc
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc})") from exc
