"""The real pipeline on ../shared/data/isic2016-mini: dvc repro, dvc exp run, and the MLflow server.

Runs in a temporary git repository holding a copy of the project, with 1 epoch a
phase. Skipped when ../shared is absent.
"""

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import requires_shared
from tests.helpers import MINI, REPO, SHARED_WEIGHTS

pytestmark = [requires_shared, pytest.mark.e2e]
PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "lesionseg", ".dvc/config", ".dvcignore", ".gitignore")
MODELS = ["frozen", "finetune_1", "finetune_2", "finetune_all"]


def sh(cmd, cwd, env, timeout=900):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    project = tmp_path_factory.mktemp("e2e") / "project"
    project.mkdir()
    for name in PROJECT_FILES:
        src, dst = REPO / name, project / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["download"]["source"] = str(MINI)
    params["data"].update(expected_train=40, expected_test=16)
    params["train"].update(encoder_weights=str(SHARED_WEIGHTS), epochs=1)
    params["finetune"].update(epochs=1)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    sh(["git", "init", "-q"], project, env)
    sh(["git", "add", "-A"], project, env)
    sh(["git", "commit", "-qm", "project"], project, env)
    repro_log = sh(["dvc", "repro"], project, env)
    return project, env, repro_log


def test_repro_produces_every_output(pipeline):
    project, _, log = pipeline
    for stage in ("download", "prepare", "train", "finetune", "evaluate", "report", "export"):
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, payload):
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_mlflow_server_shows_one_run_per_level(pipeline):
    project, env, _ = pipeline
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{project / 'mlflow.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with urllib.request.urlopen(f"{base}/experiments/get-by-name?experiment_name=lesionseg", timeout=30) as r:
            experiment_id = json.loads(r.read())["experiment"]["experiment_id"]
        runs = _post(f"{base}/runs/search", {"experiment_ids": [experiment_id], "max_results": 100})["runs"]
        by_name = {}
        for run in runs:
            tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
            metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
            by_name.setdefault(tags.get("mlflow.runName"), []).append(metrics)
        for level, trainable in zip(MODELS, (4_771_585, 6_452_929, 6_939_969, 6_995_457)):
            assert level in by_name, sorted(by_name)
            assert any("test_orig_jaccard" in m and m.get("params_trainable") == trainable for m in by_name[level])
        assert "evaluate" in by_name
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
