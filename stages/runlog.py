"""MLflow plumbing of the stages: the execution's parent run, run tags, deferred logging.

Nothing here changes what a stage computes (so no stage depends on this file
in dvc.yaml: see :data:`stages.codeset.EXEMPT`): a change to it never retrains.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lesionseg.errors import TrackingError
from lesionseg.recipes import flatten
from stages.codeset import stage_code
from stages.params import repo_root, section

if TYPE_CHECKING:
    from lesionseg.training.phases import DeferredLogging

PENDING_DIR = Path(".lesionseg") / "pending"  # phases whose MLflow logging is deferred (lesionseg.training.phases)
# MLflow's own HTTP retry settings, unless the user set them: a tracking server that stops answering costs a
# training stage seconds per call instead of minutes (the stage then defers its logging).
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def mlflow_setup(params: dict) -> str:
    """Point MLflow at the store and experiment; return the id of this pipeline execution's parent run.

    The store is ``MLFLOW_TRACKING_URI`` if set, else ``mlflow.tracking_uri``.
    An execution is identified by the DVC experiment name (``DVC_EXP_NAME``,
    set by ``dvc exp run``), the git commit and the whole of ``params.yaml``:
    every stage of one ``dvc repro`` / ``dvc exp run`` computes the same key
    and so logs under the same parent run (see :mod:`lesionseg.tracking`).
    """
    from lesionseg import tracking

    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    settings = section(params, "mlflow")
    uri = os.environ.get("MLFLOW_TRACKING_URI") or settings.tracking_uri
    experiment_id = tracking.setup(tracking.resolve_tracking_uri(uri, repo_root()), settings.experiment)
    exp_name, commit = os.environ.get("DVC_EXP_NAME"), tracking.git_commit(repo_root())
    digest = hashlib.sha256(json.dumps([exp_name, commit, params], sort_keys=True, default=str).encode()).hexdigest()
    name = exp_name or f"repro-{digest[:8]}"
    return tracking.execution_run(experiment_id, f"{name}:{digest[:16]}", name, flatten(params), run_tags("pipeline"))


def run_tags(phase: str) -> dict:
    from lesionseg import tracking

    return {
        "lesionseg.phase": phase,
        "git_commit": tracking.git_commit(repo_root()),
        "dvc_exp": os.environ.get("DVC_EXP_NAME"),
    }


def deferred(params: dict, inputs: list[Path], stage_module: str) -> DeferredLogging:
    """Where a training stage keeps logging it could not do, keyed by params, input files and the stage's code.

    The code is the set DVC's deps hold for the stage (:func:`stages.codeset.stage_code`): a pending
    log is completed only by a run of the same code on the same inputs, the run DVC would skip.
    """
    from lesionseg.training.phases import DeferredLogging

    code_root = Path(__file__).resolve().parents[1]  # the code that runs (a torchrun test runs it from elsewhere)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for path in [*inputs, *(code_root / p for p in stage_code(stage_module, code_root))]:
        path = Path(path)
        digest.update(str(path.relative_to(code_root) if path.is_relative_to(code_root) else path.name).encode())
        if path.is_file():
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return DeferredLogging(repo_root() / PENDING_DIR, digest.hexdigest())


def raise_logging_errors(results) -> None:
    """After the outputs are written: fail the stage, in one line, if the tracking store stopped answering."""
    errors = [r.logging_error for r in results if r is not None and r.logging_error]
    if errors:
        raise TrackingError(
            " | ".join(errors) + ". Run the stage again (dvc repro) once it answers: the logging completes "
            "without training again."
        )
