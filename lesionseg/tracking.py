"""MLflow logging for pipeline stages.

One pipeline execution (a ``dvc repro`` or ``dvc exp run``) is one parent run, found or created by its key
(:func:`execution_run`); its children are exactly its phases, one run per model: a phase it trained is its own
training run, a phase DVC re-used is a link run (:func:`model_run`) tagged ``lesionseg.trained_in_run`` that holds
this execution's metrics. Every run is tagged with the git commit and the DVC experiment. The layout: docs/mlflow.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from lesionseg import mlflow_view
from lesionseg.errors import TrackingError  # noqa: F401 (raised here; importable from here too)

log = logging.getLogger(__name__)

_EXECUTION_TAG = "lesionseg.execution"
_TRAINED_IN_TAG = "lesionseg.trained_in_run"
INIT_FROM_TAG = "lesionseg.init_from_run"  # a fine-tuning run's starting point: the frozen phase's run
_PARENT_TAG = "mlflow.parentRunId"
# The experiment's kind in MLflow 3 ("Model training"); the UI still opens on its GenAI overview unless the
# URL says otherwise (lesionseg.mlflow_view).
_EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# MLflow's marker of a run holding an evaluation: the MLflow 3 runs table opens the parent of such runs
# expanded, so an execution's models are listed under it without a click (a view cannot store expanded rows).
_EVALUATION_RUN_TAG = ("mlflow.runType", "evaluation")
_PARAMS_PER_BATCH = 100  # the tracking API's limit per log_batch call


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


def _artifact_root_for(tracking_uri: str) -> str | None:
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


@contextlib.contextmanager
def _store_lock(tracking_uri: str):
    """For a SQLite store, hold an exclusive lock on ``<db>.lock`` (no-op for a server).

    Processes that open a new SQLite store at the same time (``dvc queue start
    -j 2``, ``dvc exp run --temp`` side by side) would otherwise race on
    creating its tables and the experiment ("database is locked", "table
    already exists"); once created, MLflow's own busy timeout serialises
    writers.
    """
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    lock_path = Path(urlparse(tracking_uri).path).with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def setup(tracking_uri: str, experiment: str) -> str:
    """Point MLflow at ``tracking_uri`` and ``experiment`` (created if missing); return its id.

    Raises :class:`TrackingError` naming the store if it does not answer.
    """
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with _store_lock(tracking_uri):
            experiment_id = _setup_experiment(experiment, tracking_uri)
    except Exception as exc:
        if isinstance(exc, OSError) and tracking_uri.startswith("sqlite:///"):
            raise
        raise TrackingError(f"MLflow tracking store {_redact(tracking_uri)} is not usable: {_short(exc)}") from exc
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _redact(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.password:
        return uri.replace(f":{parsed.password}@", ":***@")
    return uri


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def _setup_experiment(experiment: str, tracking_uri: str) -> str:
    client = MlflowClient()
    view_key, view_value = mlflow_view.view_tag(int(time.time() * 1000))
    found = client.get_experiment_by_name(experiment)
    if found:
        experiment_id = found.experiment_id
        if found.tags.get(_EXPERIMENT_KIND[0]) != _EXPERIMENT_KIND[1]:
            client.set_experiment_tag(experiment_id, *_EXPERIMENT_KIND)
        if not mlflow_view.view_is_current(found.tags.get(view_key)):
            client.set_experiment_tag(experiment_id, view_key, view_value)
    else:
        tags = {_EXPERIMENT_KIND[0]: _EXPERIMENT_KIND[1], view_key: view_value}
        experiment_id = client.create_experiment(experiment, _artifact_root_for(tracking_uri), tags=tags)
    return experiment_id


def _find_runs(experiment_id: str, filters: dict[str, str]) -> list:
    """Runs whose tags equal ``filters`` (oldest first)."""
    clauses = " and ".join(f"tags.`{key}` = '{value}'" for key, value in filters.items())
    return MlflowClient().search_runs([experiment_id], clauses, order_by=["attributes.start_time ASC"])


def execution_run(experiment_id: str, key: str, name: str, params: dict, tags: dict) -> str:
    """Id of the parent run of the pipeline execution ``key``; created (with ``params``) if missing."""
    found = [r for r in _find_runs(experiment_id, {_EXECUTION_TAG: key}) if _PARENT_TAG not in r.data.tags]
    if found:
        return found[0].info.run_id
    client = MlflowClient()
    tags = {**_plain_tags(tags), _EXECUTION_TAG: key}
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    entries = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(entries), _PARAMS_PER_BATCH):
        client.log_batch(run.info.run_id, params=entries[start : start + _PARAMS_PER_BATCH])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def child_run(parent_run_id: str, name: str, tags: dict) -> str:
    """Id of ``parent_run_id``'s child run named ``name``; created (and ended at once) if missing.

    A run that several stages of one execution add to: the ``cv`` run, under which each fold's stage logs
    its phases and the scoring stage the summary.
    """
    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    found = _find_runs(experiment_id, {_PARENT_TAG: parent_run_id, "mlflow.runName": name})
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=name, tags={**_plain_tags(tags), _PARENT_TAG: parent_run_id})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def end_killed_runs(parent_run_id: str, name_prefix: str) -> list[str]:
    """End as KILLED the children of ``parent_run_id`` named ``name_prefix...`` that are still running.

    Called before a stage trains what a killed attempt was training (a fold of a cross-validation): that
    attempt's runs were left running, and nothing else would end them. Returns their ids.
    """
    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    query = (
        f"tags.`{_PARENT_TAG}` = '{parent_run_id}' and attributes.status = 'RUNNING'"
        f" and attributes.run_name LIKE '{name_prefix}%'"
    )
    killed = [run.info.run_id for run in client.search_runs([experiment_id], query)]
    for run_id in killed:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
    return killed


def _plain_tags(tags: dict) -> dict[str, str]:
    return {k: str(v) for k, v in tags.items() if v is not None}


@contextlib.contextmanager
def start_run(run_name: str, tags: dict, parent_run_id: str | None = None, run_id: str | None = None):
    """Start (or, with ``run_id``, resume) a run; a child of ``parent_run_id`` when given."""
    tags = _plain_tags(tags)
    if parent_run_id:
        tags[_PARENT_TAG] = parent_run_id
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=tags) as run:
        yield run


@contextlib.contextmanager
def model_run(name: str, trained_in: str | None, parent_run_id: str, tags: dict):
    """The run of model ``name`` among ``parent_run_id``'s children, to log evaluation results into.

    The run is tagged as holding an evaluation (``mlflow.runType=evaluation``) and keeps the end time
    of its own work (training, for a training run).

    ``trained_in`` is the run id stored in the model's checkpoint. If that run
    is this parent's child named ``name``, it is used; otherwise (a re-used
    checkpoint, a model trained elsewhere such as a fold ensemble, or no run
    at all) a link run named ``name`` is found or created under the parent,
    tagged with ``trained_in`` and holding that run's params.
    """
    client = MlflowClient()
    trained = _get_run(client, trained_in)
    if trained is not None and trained.data.tags.get(_PARENT_TAG) == parent_run_id and trained.info.run_name == name:
        with start_run(name, dict([_EVALUATION_RUN_TAG]), run_id=trained_in) as run:
            yield run
        _restore_end(client, trained)
        return
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    links = _find_runs(
        experiment_id, {_PARENT_TAG: parent_run_id, "mlflow.runName": name, _TRAINED_IN_TAG: str(trained_in)}
    )
    if links:
        with start_run(name, dict([_EVALUATION_RUN_TAG]), run_id=links[0].info.run_id) as run:
            yield run
        _restore_end(client, links[0])
        return
    link_tags = {**tags, _TRAINED_IN_TAG: trained_in, _EVALUATION_RUN_TAG[0]: _EVALUATION_RUN_TAG[1]}
    with start_run(name, link_tags, parent_run_id=parent_run_id) as run:
        if trained is not None:
            mlflow.log_params(trained.data.params)
            mlflow.log_metrics({k: v for k, v in trained.data.metrics.items() if k.startswith("params_")})
        yield run


def _restore_end(client: MlflowClient, before) -> None:
    """Give a re-opened run back the status and end time it had before (``before``: the run as it was then).

    Re-opening a run to add results ends it again at that moment: without this every model's run of
    an execution would end when the evaluate stage logged its scores, and the UI's Duration column
    would show the evaluation's time, not the training's.
    """
    if before.info.end_time is not None:
        client.set_terminated(before.info.run_id, before.info.status, end_time=before.info.end_time)


def _get_run(client: MlflowClient, run_id: str | None):
    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException:  # a checkpoint from another tracking store
        return None


def log_flat(prefix: str, values: dict, step: int | None = None) -> None:
    """Log numeric ``values`` as metrics named ``prefix + key``."""
    mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in values.items() if isinstance(v, (int, float))}, step=step)


class PhaseRun:
    """A training phase's MLflow run that never stops the training.

    Everything goes through :class:`MlflowClient`. The first call that fails
    (the tracking server stopped answering, after MLflow's own HTTP retries)
    is recorded in :attr:`error` and every later call is skipped, so the
    phase trains on; the caller then defers the rest of the logging (see
    :mod:`lesionseg.training.phases`).
    """

    def __init__(self, run_id: str | None = None, error: str | None = None):
        self.client = MlflowClient()
        self.run_id, self.error = run_id, error

    @classmethod
    def start(cls, name: str, tags: dict, parent_run_id: str | None, run_id: str | None = None) -> PhaseRun:
        """Create the run (or take up ``run_id``, re-parented under ``parent_run_id``)."""
        phase = cls(run_id)
        tags = _plain_tags(tags)
        if parent_run_id:
            tags[_PARENT_TAG] = parent_run_id

        def create():
            if phase.run_id is None:
                experiment_id = mlflow.tracking.fluent._get_experiment_id()
                if parent_run_id:
                    experiment_id = phase.client.get_run(parent_run_id).info.experiment_id
                phase.run_id = phase.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
            else:
                phase.client.log_batch(phase.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
                phase.client.update_run(phase.run_id, status="RUNNING")

        phase.call("creating the run", create)
        return phase

    @property
    def ok(self) -> bool:
        return self.error is None

    def call(self, what: str, fn: Callable, *args, **kwargs) -> None:
        if self.error is not None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # any failure of the store: keep training, defer the logging
            self.error = f"{what}: {_short(exc)}"
            log.warning(
                "MLflow tracking store %s failed (%s); training goes on, logging is deferred", server(), self.error
            )

    def log_params(self, params: dict) -> None:
        entries = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(entries), _PARAMS_PER_BATCH):
            self.call(
                "logging params", self.client.log_batch, self.run_id, params=entries[start : start + _PARAMS_PER_BATCH]
            )

    def log_metrics(self, prefix: str, values: dict, step: int = 0, skip_logged: bool = False) -> None:
        """Numeric ``values`` as metrics ``prefix + key`` at ``step``; with ``skip_logged``, not if already there."""
        now = int(time.time() * 1000)
        metrics = [
            Metric(f"{prefix}{k}", float(v), now, step)
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        if skip_logged and metrics and self.ok:
            try:
                history = self.client.get_metric_history(self.run_id, metrics[0].key)
            except Exception as exc:
                self.error = f"reading metrics: {_short(exc)}"
                return
            if any(m.step == step for m in history):
                return
        if metrics:
            self.call("logging metrics", self.client.log_batch, self.run_id, metrics=metrics)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.call("logging an artifact", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def finish(self) -> None:
        self.call("ending the run", self.client.set_terminated, self.run_id, RunStatus.to_string(RunStatus.FINISHED))


def server() -> str:
    """The current tracking URI, without a password."""
    return _redact(mlflow.get_tracking_uri())
