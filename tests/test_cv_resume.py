"""A killed cross-validation continues at the fold it was in: one DVC stage per fold (dvc.yaml ``cv_train@<k>``).

The fast tests check the pieces (the fold-stage list, a fold stage beyond ``cv.folds``, the scoring stage's
refusal of an untrained fold, the MLflow runs a killed attempt left running); the slow one kills a real
``dvc exp run`` of a 2-fold CV on generated data during its second fold and runs it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lesionseg.data.synthetic import write_archives
from stages.cv_folds import check_fold_stages
from stages.params import ParamError
from tests.helpers import REPO, make_project, params_project, project_env, run_stage

# 12 generated training pairs at 64 px, random-weight encoder, 1 epoch a phase, 2 folds of which each trains the
# frozen phase and one fine-tuned level, and only the fold stages that they need.
CV_RUN = {
    "data.size": 64,
    "data.val_fraction": 0.2,
    "data.expected_train": None,
    "data.expected_test": None,
    "train.encoder_weights": "none",
    "train.epochs": 1,
    "train.batch_size": 4,
    "finetune.unfreeze": "all",
    "cv.fold_stages": [0, 1],
}


def test_fold_stages_must_count_from_zero_and_cover_the_folds():
    check_fold_stages(0, [])
    check_fold_stages(5, list(range(10)))
    check_fold_stages(2, [0, 1])
    with pytest.raises(ParamError, match=r"cv.folds is 3 but dvc.yaml has 2 fold stages .*cv.fold_stages=\[0,1,2\]"):
        check_fold_stages(3, [0, 1])
    for bad in ([1, 2], [0, 2], "0,1", [0, 0]):
        with pytest.raises(ParamError, match="cv.fold_stages must be the list 0, 1, ..., n-1"):
            check_fold_stages(2, bad)


def test_the_default_fold_stages_cover_five_folds():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    check_fold_stages(5, params["cv"]["fold_stages"])
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["cv_train"]
    assert stage["foreach"] == "${cv.fold_stages}" and stage["do"]["outs"] == ["${cv_models}/fold${item}"]


def test_folds_off_and_a_stage_beyond_the_folds_write_records_without_training(tmp_path):
    project = params_project(tmp_path / "project")
    run_stage(project, "cv_folds", "--data", "data/prepared", "--manifest", "models/cv/folds.json")
    assert json.loads((project / "models" / "cv" / "folds.json").read_text()) == {"folds": 0, "assignment": []}
    run_stage(project, "cv_train", "--data", "data/prepared", "--models", "models/cv", "--fold", "3")
    assert sorted(os.listdir(project / "models" / "cv")) == ["fold3", "folds.json"]
    record = json.loads((project / "models" / "cv" / "fold3" / "fold.json").read_text())
    assert record == {"fold": 3, "folds": 0, "models": []}
    assert not (project / "mlflow.db").exists()  # nothing trained, nothing logged

    too_many = params_project(tmp_path / "p2" / "project", cv__folds=6)
    result = run_stage(too_many, "cv_folds", "--data", "x", "--manifest", "folds.json", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cv.folds is 6 but dvc.yaml has 5 fold stages" in result.stderr
    assert not (too_many / "folds.json").exists()


def test_scoring_refuses_a_fold_that_was_not_trained(tmp_path):
    project = params_project(tmp_path / "project")
    cv = project / "models" / "cv"
    cv.mkdir(parents=True)
    manifest = {
        "folds": 2,
        "seed": 42,
        "assignment": [{"fold": k, "train": [], "val": [], "heldout": []} for k in (0, 1)],
    }
    (cv / "folds.json").write_text(json.dumps(manifest))
    for k in (0, 1):
        (cv / f"fold{k}").mkdir()
    (cv / "fold0" / "fold.json").write_text(json.dumps({"fold": 0, "folds": 2, "models": ["frozen"]}))
    args = ["--data", "data/prepared", "--models", "models/cv", "--external", "data/external", "--metrics", "m.json"]
    args += ["--per-image", "pi", "--external-per-image", "ex", "--ensemble", "e.json"]
    result = run_stage(project, "cv_score", *args, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "fold1/fold.json: fold 1 has not been trained (run its cv_train stage)" in result.stderr
    assert not (project / "m.json").exists() and not (project / "pi").exists()


def test_runs_left_running_by_a_killed_attempt_are_ended_as_killed(tmp_path):
    from mlflow.tracking import MlflowClient

    from lesionseg import tracking

    experiment = tracking.setup(f"sqlite:///{tmp_path / 'mlflow.db'}", "lesionseg")
    client = MlflowClient()
    parent = client.create_run(experiment, run_name="exec").info.run_id
    cv_run = tracking.child_run(parent, "cv", {"lesionseg.phase": "cv"})
    assert tracking.child_run(parent, "cv", {}) == cv_run  # found, not made again
    assert client.get_run(cv_run).data.tags["mlflow.parentRunId"] == parent

    def child(name: str) -> str:
        return client.create_run(experiment, run_name=name, tags={"mlflow.parentRunId": cv_run}).info.run_id

    killed, finished, other_fold = child("fold1/frozen"), child("fold1/finetune_all"), child("fold0/frozen")
    client.set_terminated(finished)
    assert tracking.end_killed_runs(cv_run, "fold1/") == [killed]
    status = {run_id: client.get_run(run_id).info.status for run_id in (killed, finished, other_fold)}
    assert status == {killed: "KILLED", finished: "FINISHED", other_fold: "RUNNING"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _phase_runs(project: Path) -> list[tuple[str, str]]:
    """(name, status) of the fold phases' MLflow runs, read from the SQLite store while the pipeline may write."""
    if not (project / "mlflow.db").exists():
        return []
    with sqlite3.connect(f"file:{project / 'mlflow.db'}?mode=ro", uri=True, timeout=30) as db:
        try:
            return sorted(db.execute("select name, status from runs where name like 'fold%'").fetchall())
        except sqlite3.OperationalError:  # the store's tables are being made
            return []


def _cv_outputs(project: Path) -> dict[str, str]:
    """The CV results (metrics and out-of-fold tables) by path."""
    reports = project / "reports" / "cv"
    files = [reports / "metrics.json", *sorted((reports / "per_image").glob("*"))]
    return {str(p.relative_to(project)): p.read_text() for p in files}


@pytest.mark.slow
def test_a_killed_cross_validation_continues_at_the_fold_it_was_in(tmp_path):
    """`dvc exp run -S cv.folds=2` killed (SIGKILL of its process group) while fold 1 trains; the same command again
    keeps fold 0 (not trained again: same checkpoint file, one MLflow run per phase), trains fold 1 and scores both,
    with the results of an uninterrupted run (the same stages forced, without DVC's run cache)."""
    archives = write_archives(tmp_path / "archives", 12, 2, 64, 48)
    project = make_project(tmp_path / "project", {**CV_RUN, "download.source": str(archives)})
    env = project_env()
    command = ["dvc", "exp", "run", "-n", "cv2", "-S", "cv.folds=2", "cv_score"]
    log = tmp_path / "killed.log"
    t0 = time.monotonic()
    with open(log, "w") as out:
        dvc = subprocess.Popen(
            command, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 900
        while ("fold1/frozen", "RUNNING") not in _phase_runs(project) and dvc.poll() is None:
            assert time.monotonic() < deadline, "fold 1 did not start training"
            time.sleep(0.05)
        assert dvc.poll() is None, f"the run ended before fold 1 trained:\n{log.read_text()[-3000:]}"
    finally:
        os.killpg(dvc.pid, signal.SIGKILL)
        dvc.wait()
    killed_s = time.monotonic() - t0
    fold0 = project / "models" / "cv" / "fold0"
    before = {p.name: (p.stat().st_mtime_ns, _sha256(p)) for p in sorted(fold0.iterdir())}
    assert {"frozen.pt", "finetune_all.pt", "fold.json"} <= set(before)
    assert not (project / "models" / "cv" / "fold1").exists()  # the killed fold left nothing half-written

    t1 = time.monotonic()
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    resumed_s = time.monotonic() - t1
    resumed_log = result.stdout + result.stderr
    assert result.returncode == 0, resumed_log[-4000:]
    assert "Stage 'cv_train@0' didn't change, skipping" in resumed_log
    assert "Running stage 'cv_train@0'" not in resumed_log
    assert "Running stage 'cv_train@1'" in resumed_log and "Running stage 'cv_score'" in resumed_log
    assert {p.name: (p.stat().st_mtime_ns, _sha256(p)) for p in sorted(fold0.iterdir())} == before
    # Fold 0's phases were trained once; fold 1's killed attempt is ended as KILLED, its second one finished.
    assert _phase_runs(project) == [
        ("fold0/finetune_all", "FINISHED"),
        ("fold0/frozen", "FINISHED"),
        ("fold1/finetune_all", "FINISHED"),
        ("fold1/frozen", "FINISHED"),
        ("fold1/frozen", "KILLED"),
    ]
    status = subprocess.run(["dvc", "status", "cv_score"], cwd=project, env=env, capture_output=True, text=True)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout + status.stderr
    resumed = _cv_outputs(project)
    cv = json.loads(resumed["reports/cv/metrics.json"])
    assert sorted(cv) == ["finetune_all", "frozen"] and cv["frozen"]["folds"] == 2 and cv["frozen"]["n"] == 12
    oof = pd.read_csv(project / "reports" / "cv" / "per_image" / "finetune_all.csv")
    assert len(oof) == 12 and sorted(oof["fold"].unique()) == [0, 1]

    # The uninterrupted run: every fold trained again, in one go, without the run cache, and scored.
    t2 = time.monotonic()
    again = ["dvc", "repro", "--force", "--no-run-cache", "--single-item", "cv_train@0", "cv_train@1", "cv_score"]
    result = subprocess.run(again, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    uninterrupted_s = time.monotonic() - t2
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "Running stage 'cv_train@0'" in result.stdout
    assert _sha256(fold0 / "frozen.pt") != before["frozen.pt"][1]  # trained again (a new MLflow run id inside)
    assert _cv_outputs(project) == resumed
    print(f"\nkilled after {killed_s:.0f} s, resumed in {resumed_s:.0f} s, uninterrupted {uninterrupted_s:.0f} s")
