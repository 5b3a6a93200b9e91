"""The real pipeline on ../shared/data/isic2016-mini: dvc repro, dvc exp run, cross-validation with an external
set, the MLflow server and its UI.

Runs in a temporary git repository holding a copy of the project, with 1 epoch a
phase. Skipped when ../shared is absent; the browser test also without Chromium
and Playwright (``make browser``). The slow tier's one run of each of these paths.
"""

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.browser import chromium, requires_browser
from tests.conftest import requires_shared
from tests.helpers import (
    MINI_RUN,
    REPO,
    MlflowServer,
    free_port,
    make_external_set,
    make_project,
    project_env,
)

pytestmark = [requires_shared, pytest.mark.slow]
MODELS = ["frozen", "finetune_1", "finetune_2", "finetune_all"]


def sh(cmd, cwd, env, timeout=900):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("e2e") / "project", MINI_RUN)
    env = project_env()
    repro_log = sh(["dvc", "repro"], project, env)
    # Kept aside: the experiments below overwrite the workspace's metrics.
    shutil.copy(project / "reports" / "metrics.json", project.parent / "repro_metrics.json")
    return project, env, repro_log


def test_repro_produces_every_output(pipeline):
    project, _, log = pipeline
    stages = ("download", "prepare", "train", "finetune", "cv_folds", "cv_train@0", "cv_train@4", "cv_score")
    for stage in (*stages, "evaluate", "report", "export"):
        assert f"Running stage '{stage}'" in log
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert list(metrics) == MODELS
    for name, values in metrics.items():
        for key in (
            "jaccard",
            "dice",
            "jaccard_micro",
            "jaccard_thresholded",
            "accuracy",
            "sensitivity",
            "specificity",
            "loss",
            "orig_jaccard",
            "orig_dice",
        ):
            assert math.isfinite(values[key]) and 0 <= values[key] <= (10 if key == "loss" else 1), (name, key)
    assert metrics["finetune_1"]["params_trainable"] == 6_452_929
    for path in (
        "models/frozen.pt",
        "models/model.onnx",
        "models/model.pt",
        "reports/comparison.md",
        "reports/comparison.csv",
        "reports/figures/curves.png",
        "reports/figures/error_maps.png",
        "reports/history/frozen.csv",
        "reports/history/finetune/finetune_all.csv",
        "reports/per_image/finetune_2.csv",
    ):
        assert (project / path).is_file(), path
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], project, pipeline[1])


def test_a_changed_library_function_makes_dvc_rerun_the_stages_that_load_it(pipeline):
    """dvc.yaml's code deps in action (tests/test_stage_deps.py checks them statically): a changed function in
    lesionseg/metrics.py, which picks each phase's best epoch, is a changed dependency of the training
    stages, so `dvc repro` cannot keep checkpoints made by the old code; undone, the pipeline is up to date."""
    project, env, _ = pipeline
    metrics_py = project / "lesionseg" / "metrics.py"
    original = metrics_py.read_text()
    try:
        metrics_py.write_text(original.replace("def summarize(", "def summarize(  # changed\n", 1))
        assert metrics_py.read_text() != original
        status = json.loads(sh(["dvc", "status", "--json"], project, env))
        for stage in ("train", "finetune", "cv_train@0", "cv_train@4", "cv_score", "evaluate"):
            assert stage in status, (stage, sorted(status))
        assert not {"download", "prepare"} & set(status), sorted(status)
    finally:
        metrics_py.write_text(original)
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], project, env)


def test_exp_run_reruns_only_what_it_must(pipeline):
    project, env, _ = pipeline
    log = sh(["dvc", "exp", "run", "-n", "only-all", "-S", "finetune.unfreeze=all"], project, env)
    assert "Running stage 'finetune'" in log and "Running stage 'evaluate'" in log
    for stage in ("download", "prepare", "train"):
        assert f"Running stage '{stage}'" not in log
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert list(metrics) == ["frozen", "finetune_all"]
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], project, env, timeout=300))
    names = [e.get("name") for rev in shown for e in (rev.get("experiments") or [])]
    assert "only-all" in names, names


def _ui_url(process: subprocess.Popen) -> str:
    """The link that scripts/mlflow_ui.py (make mlflow-ui) prints once the UI answers."""
    for line in process.stdout:
        if line.startswith("lesionseg runs: "):
            return line.split(": ", 1)[1].strip()
    raise AssertionError(f"scripts/mlflow_ui.py exited ({process.wait()}) without printing the link")


def _repro_models(project: Path) -> tuple[str, dict]:
    """The first execution's (dvc repro) parent run id and its model runs by name, from the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lesionseg").experiment_id])
    parent = next(r for r in runs if r.info.run_name.startswith("repro-") and "mlflow.parentRunId" not in r.data.tags)
    models = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    return parent.info.run_id, models


@requires_browser
def test_mlflow_ui_opens_on_the_models_with_their_test_scores(pipeline):
    """What `make mlflow-ui` prints, in a real Chromium: the runs table in the model-training view, the first
    execution (dvc repro) expanded with its four models and their test IoU, the headline columns shown.
    Screenshots for docs/mlflow-ui.md go to docs/img/."""
    from playwright.sync_api import expect

    project, env, _ = pipeline
    repro_metrics = json.loads((project.parent / "repro_metrics.json").read_text())
    parent_id, models = _repro_models(project)
    assert sorted(models) == sorted(MODELS)
    # True durations: each phase's run ends when its training ends, before the next phase starts.
    phases = sorted(models.values(), key=lambda r: r.info.start_time)
    for run, following in zip(phases, phases[1:]):
        assert run.info.end_time <= following.info.start_time, (run.info.run_name, following.info.run_name)

    t0 = time.perf_counter()
    ui = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "mlflow_ui.py"), "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        url = _ui_url(ui)
        print(f"\nmlflow ui answered in {time.perf_counter() - t0:.1f} s: {url}")
        assert "/runs?workflowType=machine_learning&viewStateShareKey=" in url
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1920, "height": 1000})
            page.set_default_timeout(120_000)  # a busy 2-core machine: the UI takes its time
            expect.set_options(timeout=120_000)
            page.goto(url)
            # The grid draws each row twice: run name and start time pinned on the left, the other columns
            # beside them; both carry the run id (row-id) and the row's position (row-index).
            names = page.locator(".ag-pinned-left-cols-container")
            values = page.locator(".ag-center-cols-container")
            expect(names.locator(f'[row-id="{parent_id}"]')).to_be_visible()
            for name, run in models.items():
                expect(names.locator(f'[row-id="{run.info.run_id}"]')).to_contain_text(name)
            for column in ("test_orig_jaccard", "test_orig_dice", "test_orig_jaccard_thresholded", "params_trainable",
                           "params_frozen", "unfreeze", "lr"):  # fmt: skip
                expect(page.locator(".ag-header-cell", has_text=column).first).to_be_visible()
            first = int(names.locator(f'[row-id="{parent_id}"]').get_attribute("row-index"))
            for name, run in models.items():  # listed right under their parent, with their test IoU
                row = names.locator(f'[row-id="{run.info.run_id}"]')
                assert first < int(row.get_attribute("row-index")) <= first + len(MODELS), name
                cell = values.locator(f'[row-id="{run.info.run_id}"] [col-id="metrics.`test_orig_jaccard`"]')
                expect(cell).not_to_have_text("-")
                assert float(cell.inner_text()) == pytest.approx(repro_metrics[name]["orig_jaccard"], abs=1e-6), name
            (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
            page.screenshot(path=REPO / "docs" / "img" / "mlflow-runs.png")
            names.locator(f'[row-id="{models["finetune_all"].info.run_id}"]').get_by_role("link").first.click()
            expect(page.get_by_text("test_orig_jaccard").first).to_be_visible()
            page.wait_for_timeout(2000)  # the run page's panels load one after another
            page.screenshot(path=REPO / "docs" / "img" / "mlflow-run.png")
        print(f"mlflow ui and browser: {time.perf_counter() - t0:.1f} s")
    finally:
        ui.send_signal(signal.SIGTERM)  # the launcher stops its server's process group (tests/test_mlflow_ui.py)
        ui.wait(timeout=60)


def test_cross_validation_experiment_and_compare(pipeline, tmp_path):
    """A 2-fold CV experiment (1 epoch) with an external set adds CV metrics and the ensemble row, scored on
    the test split and the external set; `lesionseg compare` reads two experiments' per-image tables through DVC
    and pairs them."""
    project, env, _ = pipeline
    clinic = make_external_set(tmp_path / "clinic")
    sets = ["-S", "cv.folds=2", "-S", "finetune.unfreeze=all", "-S", f"+evaluate.external.clinic={clinic}"]
    log = sh(["dvc", "exp", "run", "-n", "cv2", *sets], project, env)
    assert "Running stage 'cv_train@1'" in log and "Running stage 'cv_score'" in log
    assert "Running stage 'train'" not in log
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert list(metrics) == ["frozen", "finetune_all", "cv_ensemble"]
    assert metrics["cv_ensemble"]["members"] == 2 and metrics["cv_ensemble"]["params_total"] == 2 * 6_995_457
    # Every training pair scored once out of fold, per-fold values with mean and standard error.
    cv = json.loads((project / "reports" / "cv" / "metrics.json").read_text())
    assert sorted(cv) == ["finetune_all", "frozen"] and cv["frozen"]["folds"] == 2
    entry = cv["finetune_all"]["orig_jaccard"]
    assert cv["finetune_all"]["n"] == 40 and set(entry) == {"fold0", "fold1", "mean", "se"}
    assert entry["mean"] == pytest.approx((entry["fold0"] + entry["fold1"]) / 2) and entry["se"] >= 0
    oof = pd.read_csv(project / "reports" / "cv" / "per_image" / "finetune_all.csv")
    assert len(oof) == 40 and oof["id"].is_unique and sorted(oof["fold"].unique()) == [0, 1]
    ensemble = json.loads((project / "reports" / "cv" / "ensemble.json").read_text())
    assert ensemble["model"] == "finetune_all"
    assert ensemble["checkpoints"] == ["fold0/finetune_all.pt", "fold1/finetune_all.pt"]
    # The fold models' ensemble is scored on the external set like every other model.
    assert metrics["cv_ensemble"]["external"]["clinic"]["n"] == 5
    assert len(pd.read_csv(project / "reports" / "per_image" / "clinic" / "cv_ensemble.csv")) == 5
    assert "| cv_ensemble |" in (project / "reports" / "comparison.md").read_text()
    # Every fold model on the external set, averaged per image over the folds.
    fold_mean = pd.read_csv(project / "reports" / "cv" / "external" / "clinic" / "finetune_all.csv")
    assert len(fold_mean) == 5 and set(fold_mean["folds"]) == {2}
    lesionseg = str(Path(sys.executable).parent / "lesionseg")
    out = sh([lesionseg, "compare", "only-all", "cv2", "--json"], project, env)
    records = json.loads(next(line for line in out.splitlines() if line.startswith("[")))
    results = {r["model"]: r for r in records if r["evaluation"] == "test"}
    assert sorted(results) == ["finetune_all", "frozen"]
    # The same models (DVC re-used them): the paired change is exactly zero.
    assert results["finetune_all"]["n"] == 16 and results["finetune_all"]["delta"] == 0
    assert results["frozen"]["ci95"] == [0.0, 0.0]

    # An inference-only change re-scores the fold models without training them again, and the two experiments
    # are compared on every evaluation they share.
    log = sh(["dvc", "exp", "run", "-n", "cv2-plain", "-S", "evaluate.tta=false"], project, env)
    assert "Running stage 'cv_score'" in log and "Running stage 'cv_train@" not in log
    out = sh([lesionseg, "compare", "cv2", "cv2-plain", "--json"], project, env)
    records = json.loads(next(line for line in out.splitlines() if line.startswith("[")))
    assert {r["evaluation"] for r in records} == {
        "test",
        "external clinic",
        "cv out-of-fold",
        "external clinic, fold-model mean",
    }
    oof = next(r for r in records if r["evaluation"] == "cv out-of-fold" and r["model"] == "finetune_all")
    assert oof["n"] == 40


def test_mlflow_server_groups_each_execution_under_one_parent_run(pipeline):
    project, env, _ = pipeline
    server = MlflowServer(project / "mlflow.db", free_port(), timeout=30).start()
    try:
        experiment_id = server.get("experiments/get-by-name?experiment_name=lesionseg")["experiment"]["experiment_id"]
        runs = server.post("runs/search", {"experiment_ids": [experiment_id], "max_results": 1000})["runs"]
        parents = {}
        for run in runs:
            tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
            if "mlflow.parentRunId" not in tags:
                parents[tags["mlflow.runName"]] = run["info"]["run_id"]
        repro = [name for name in parents if name.startswith("repro-")]
        assert len(repro) == 1 and {"only-all", "cv2"} <= set(parents), sorted(parents)

        def children(parent_id):
            found = {}
            for run in runs:
                tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
                if tags.get("mlflow.parentRunId") == parent_id:
                    metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
                    assert tags["mlflow.runName"] not in found, f"two runs named {tags['mlflow.runName']}"
                    found[tags["mlflow.runName"]] = (run["info"]["run_id"], tags, metrics)
            return found

        # The first execution: one child per model, with exactly its metrics.json numbers.
        repro_runs = children(parents[repro[0]])
        repro_metrics = json.loads((project.parent / "repro_metrics.json").read_text())
        assert set(MODELS) <= set(repro_runs), sorted(repro_runs)
        for level, trainable in zip(MODELS, (4_771_585, 6_452_929, 6_939_969, 6_995_457)):
            _, _, metrics = repro_runs[level]
            assert metrics["params_trainable"] == trainable
            assert metrics["test_orig_jaccard"] == pytest.approx(repro_metrics[level]["orig_jaccard"])
        # The second execution re-used the frozen model: a link run pointing at the run that trained it.
        exp_runs = children(parents["only-all"])
        assert {"frozen", "finetune_all"} <= set(exp_runs) and "finetune_1" not in exp_runs
        assert exp_runs["frozen"][1]["lesionseg.trained_in_run"] == repro_runs["frozen"][0]
        assert "lesionseg.trained_in_run" not in exp_runs["finetune_all"][1]
        assert exp_runs["finetune_all"][1]["lesionseg.init_from_run"] == repro_runs["frozen"][0]
        # Metrics are never written into another execution's runs: one value per test metric.
        history = server.get(f"metrics/get-history?run_id={repro_runs['frozen'][0]}&metric_key=test_orig_jaccard")
        assert len(history["metrics"]) == 1
        # The cross-validation execution: its cv run holds one run per fold and phase.
        cv_runs = children(parents["cv2"])
        assert {"cv", "cv_ensemble", "frozen", "finetune_all"} <= set(cv_runs)
        assert sorted(children(cv_runs["cv"][0])) == [
            "fold0/finetune_all",
            "fold0/frozen",
            "fold1/finetune_all",
            "fold1/frozen",
        ]
        assert cv_runs["cv_ensemble"][1]["lesionseg.trained_in_run"] == cv_runs["cv"][0]
        experiment = server.get(f"experiments/get?experiment_id={experiment_id}")["experiment"]
        kind = {t["key"]: t["value"] for t in experiment.get("tags", [])}["mlflow.experimentKind"]
        assert kind == "custom_model_development"
    finally:
        server.kill(signal.SIGTERM)
