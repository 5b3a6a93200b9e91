"""MLflow logging for pipeline stages.

Runs of one pipeline execution are grouped under the frozen-training run:
each fine-tuning run and the evaluation run are its children (MLflow's
``mlflow.parentRunId`` tag), so the UI shows them nested and side by side.
Every run is tagged with the git commit and the DVC experiment name.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.tracking import MlflowClient

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(uri: str, root: Path) -> str:
    """Make a relative ``sqlite:///file.db`` or local path absolute under ``root``.

    ``dvc exp run --temp`` and queued experiments run in copies of the
    repository; resolving against the main repository root sends their runs
    to the same store.
    """
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        return uri if path.is_absolute() else f"sqlite:///{(Path(root) / path).resolve()}"
    if "://" not in uri:
        return str((Path(root) / uri).resolve())
    return uri


def artifact_root_for(tracking_uri: str) -> str | None:
    """Artifacts of a SQLite store go next to the database (``mlartifacts/``), not into the cwd."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(urlparse(tracking_uri).path).parent / "mlartifacts").resolve().as_uri()
    return None


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def setup(tracking_uri: str, experiment: str) -> str:
    """Point MLflow at ``tracking_uri`` and ``experiment`` (created if missing); return its id."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id if found else client.create_experiment(experiment, artifact_root_for(tracking_uri))
    )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@contextlib.contextmanager
def start_run(run_name: str, tags: dict, parent_run_id: str | None = None, run_id: str | None = None):
    """Start (or, with ``run_id``, resume) a run; a child of ``parent_run_id`` when given."""
    tags = {k: str(v) for k, v in tags.items() if v is not None}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=tags) as run:
        yield run


def log_flat(prefix: str, values: dict, step: int | None = None) -> None:
    """Log numeric ``values`` as metrics named ``prefix + key``."""
    mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in values.items() if isinstance(v, (int, float))}, step=step)
