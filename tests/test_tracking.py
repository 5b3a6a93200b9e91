"""lesionseg.tracking on a real SQLite store: true run durations and the MLflow UI's saved view."""

import json
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lesionseg import mlflow_view, tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite store; MLflow's process-wide settings (and the variables it exports) restored after."""
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    yield f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(None)


def test_a_model_run_keeps_the_end_of_its_training_when_evaluated_later(store):
    experiment_id = tracking.setup(store, "lesionseg")
    parent = tracking.execution_run(experiment_id, "key", "repro-test", {"train.lr": 0.001}, {})
    phase = tracking.PhaseRun.start("frozen", {}, parent)
    phase.log_metrics("params_", {"trainable": 10})
    phase.finish()
    client = MlflowClient()
    trained = client.get_run(phase.run_id).info
    time.sleep(0.05)  # the evaluate stage comes later

    evaluated_at = int(time.time() * 1000)
    with tracking.model_run("frozen", phase.run_id, parent, {}):
        tracking.log_flat("test_", {"orig_jaccard": 0.5})
    run = client.get_run(phase.run_id)
    assert run.data.metrics["test_orig_jaccard"] == 0.5
    assert run.info.status == "FINISHED" and run.info.end_time == trained.end_time < evaluated_at
    assert run.data.tags["mlflow.runType"] == "evaluation"  # the UI opens its parent expanded

    # A link run (a model re-used from another execution) ends when its evaluation was logged.
    other = tracking.execution_run(experiment_id, "key2", "exp-2", {"train.lr": 0.001}, {})
    with tracking.model_run("frozen", phase.run_id, other, {}) as link:
        tracking.log_flat("test_", {"orig_jaccard": 0.5})
    link = client.get_run(link.info.run_id)
    assert link.info.run_id != phase.run_id and link.info.end_time >= evaluated_at
    assert link.data.tags["mlflow.runType"] == "evaluation"
    assert link.data.tags["lesionseg.trained_in_run"] == phase.run_id


def test_the_experiment_carries_the_saved_view_of_the_headline_columns(store):
    experiment_id = tracking.setup(store, "lesionseg")
    client = MlflowClient()
    key, expected = mlflow_view.view_tag(0)
    value = client.get_experiment(experiment_id).tags[key]
    envelope = json.loads(value)
    assert envelope["name"] == json.loads(expected)["name"] and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert state["selectedColumns"][:2] == ["metrics.`test_orig_jaccard`", "metrics.`test_orig_dice`"]
    assert {"params.`unfreeze`", "params.`lr`", "metrics.`params_trainable`"} <= set(state["selectedColumns"])

    # Every stage calls setup: the view is written once, and rewritten only when it changed.
    tracking.setup(store, "lesionseg")
    assert client.get_experiment(experiment_id).tags[key] == value
    outdated = {**envelope, "state": json.dumps({"selectedColumns": []})}
    client.set_experiment_tag(experiment_id, key, json.dumps(outdated))
    tracking.setup(store, "lesionseg")
    assert json.loads(json.loads(client.get_experiment(experiment_id).tags[key])["state"]) == state


def test_runs_page_url_opens_the_model_training_view_with_the_saved_view():
    url = mlflow_view.runs_page_url("http://127.0.0.1:5000/", "3")
    assert url == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=lesionseg-models"
    )
