"""The team set-up in miniature: scripts/services.sh starts PostgreSQL, SeaweedFS (S3) and an MLflow server;
the pipeline runs on isic2016-mini against them, pushes to the S3 DVC remote, and a second clone pulls.

Marked ``services`` (not in the default run: ``pytest -m services``; CI runs it). Needs the ``.[scale]``
extra and the Debian ``postgresql`` package; skipped when ../shared is absent.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lesionseg.model.checkpoint import read_checkpoint
from tests.conftest import requires_shared
from tests.helpers import GIT_IDENTITY, MINI_RUN, REPO, MlflowRest, alive, make_project
from tests.test_scale import run_queue

pytestmark = [requires_shared, pytest.mark.services]
SCRIPT = REPO / "scripts" / "services.sh"


def busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def pick_ports() -> dict[str, str]:
    """Free ports for PostgreSQL, MLflow and SeaweedFS (S3 port p: p..p+6 and p+10000..p+10005)."""
    rng = random.Random()
    while True:
        pg, mlflow, s3 = rng.randrange(20000, 30000), rng.randrange(20000, 30000), rng.randrange(30000, 45000)
        ports = [pg, mlflow, *range(s3, s3 + 7), *range(s3 + 10000, s3 + 10006)]
        if len(set(ports)) == len(ports) and not any(map(busy, ports)):
            return {"LESIONSEG_PG_PORT": str(pg), "LESIONSEG_MLFLOW_PORT": str(mlflow), "LESIONSEG_S3_PORT": str(s3)}


def sh(cmd, cwd, env, timeout=1200, check=True):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def services():
    # The PostgreSQL cluster runs as the postgres user: its folder must be reachable by it (pytest's tmp is 0700).
    folder = Path(tempfile.mkdtemp(prefix="lesionseg-services-", dir="/tmp"))
    folder.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "LESIONSEG_SERVICES_DIR": str(folder / "services"),
        "LESIONSEG_MLFLOW_WORKERS": "2",
        **pick_ports(),
    }
    t0 = time.perf_counter()
    up = subprocess.run([str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=600)
    print(f"\nservices.sh up (fresh): {time.perf_counter() - t0:.1f} s\n{up.stderr}")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        settings = dict(
            line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines() if line.startswith("export ")
        )
        yield env, settings
    finally:
        pids = [(folder / "services" / f"{n}.pid") for n in ("postgres", "seaweedfs", "mlflow")]
        pids = [int(p.read_text()) for p in pids if p.is_file()]
        down = subprocess.run([str(SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=300)
        print(down.stderr)
        status = subprocess.run([str(SCRIPT), "status"], env=env, capture_output=True, text=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
        assert down.returncode == 0, down.stderr
        assert status.returncode == 1 and status.stdout.count("not running") == 3, status.stdout
        assert not [pid for pid in pids if alive(pid)], "a service outlived services.sh down"


def test_services_script_is_idempotent_and_explains_errors(services):
    env, settings = services
    again = sh([str(SCRIPT), "up"], REPO, env, timeout=120)
    assert again.stderr.count("already running") == 3, again.stderr
    assert sh([str(SCRIPT), "status"], REPO, env).stdout.count(": running") == 3
    with tempfile.TemporaryDirectory() as other:  # a second set-up on the same ports
        clash = sh([str(SCRIPT), "up"], REPO, {**env, "LESIONSEG_SERVICES_DIR": other}, check=False)
        assert clash.returncode == 1
        assert f"port {env['LESIONSEG_PG_PORT']} (PostgreSQL) is in use" in clash.stderr, clash.stderr
        missing = sh(
            [str(SCRIPT), "up"], REPO, {**env, "LESIONSEG_SERVICES_DIR": other, "LESIONSEG_PG_BIN": "/nonexistent"},
            check=False,
        )  # fmt: skip
        assert missing.returncode == 1 and "PostgreSQL binaries not found in /nonexistent" in missing.stderr


def status_of(call) -> int:
    """The HTTP status of a REST call: 200, or the error's."""
    try:
        call()
        return 200
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_server_asks_for_a_login_and_keeps_experiments_to_their_owners(services):
    env, settings = services
    uri = settings["MLFLOW_TRACKING_URI"]

    def rest(auth=None) -> MlflowRest:  # a long timeout: each login hashes the password (PBKDF2) on a busy machine
        return MlflowRest(uri, timeout=180, auth=auth)

    admin = rest((settings["MLFLOW_TRACKING_USERNAME"], settings["MLFLOW_TRACKING_PASSWORD"]))
    assert settings["MLFLOW_TRACKING_USERNAME"] == "admin" and len(settings["MLFLOW_TRACKING_PASSWORD"]) >= 16
    assert (
        f"MLFLOW_ADMIN_PASS={settings['MLFLOW_TRACKING_PASSWORD']}"
        in (Path(env["LESIONSEG_SERVICES_DIR"]) / "secrets.env").read_text()
    )
    # Without credentials, or with a wrong password: refused, for the API and the UI alike.
    assert status_of(lambda: rest().get("experiments/search?max_results=10")) == 401
    assert status_of(lambda: rest(("admin", "wrong")).get("experiments/search?max_results=10")) == 401
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{uri}/", timeout=180)
    assert refused.value.code == 401

    # The admin's experiment and run; a second user may read them (default_permission READ), not change them.
    experiment_id = admin.post("experiments/create", {"name": f"auth-check-{random.randrange(10**6)}"})["experiment_id"]
    run_id = admin.post("runs/create", {"experiment_id": experiment_id})["run"]["info"]["run_id"]
    admin.post("users/create", {"username": "reader", "password": "reader-password-1234"})
    reader = rest(("reader", "reader-password-1234"))
    assert reader.get(f"runs/get?run_id={run_id}")["run"]["info"]["run_id"] == run_id
    change = {"run_id": run_id, "key": "changed_by", "value": "reader"}
    assert status_of(lambda: reader.post("runs/set-tag", change)) == 403
    assert status_of(lambda: reader.post("runs/delete", {"run_id": run_id})) == 403
    assert status_of(lambda: admin.post("runs/set-tag", {**change, "value": "admin"})) == 200
    assert {"key": "changed_by", "value": "admin"} in admin.get(f"runs/get?run_id={run_id}")["run"]["data"]["tags"]


class Rest(MlflowRest):
    def files(self, run_id: str, path: str = "") -> list[str]:
        return [Path(f["path"]).name for f in self.get(f"artifacts/list?run_id={run_id}&path={path}").get("files", [])]


def test_pipeline_logs_to_the_server_and_shares_data_through_the_remote(services, tmp_path):
    import boto3

    env, settings = services
    project = make_project(tmp_path / "project", {**MINI_RUN, "finetune.unfreeze": "all"})
    login = {k: settings[k] for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    env = {**env, **GIT_IDENTITY, **login, "PYTHONPATH": str(project)}
    endpoint, bucket = settings["LESIONSEG_S3_ENDPOINT"], settings["LESIONSEG_S3_BUCKET"]

    def remote(cwd: Path, *, add: bool) -> None:  # what services.sh prints
        if add:
            sh(["dvc", "remote", "add", "-d", "team", f"s3://{bucket}/dvc"], cwd, env)
            sh(["dvc", "remote", "modify", "team", "endpointurl", endpoint], cwd, env)
        sh(["dvc", "remote", "modify", "--local", "team", "access_key_id", settings["AWS_ACCESS_KEY_ID"]], cwd, env)
        sh(
            ["dvc", "remote", "modify", "--local", "team", "secret_access_key", settings["AWS_SECRET_ACCESS_KEY"]],
            cwd,
            env,
        )

    remote(project, add=True)
    sh(["git", "commit", "-qam", "the team remote"], project, env)
    assert "secret_access_key" not in (project / ".dvc" / "config").read_text()

    t0 = time.perf_counter()
    log = sh(["dvc", "repro"], project, env).stdout
    print(f"dvc repro on isic2016-mini against the services: {time.perf_counter() - t0:.1f} s")
    for stage in ("train", "finetune", "evaluate", "report", "export"):
        assert f"Running stage '{stage}'" in log

    # Runs, metrics, parameter counts, figures and the model on the server (REST API).
    user, password = login["MLFLOW_TRACKING_USERNAME"], login["MLFLOW_TRACKING_PASSWORD"]
    rest = Rest(login["MLFLOW_TRACKING_URI"], auth=(user, password))
    experiment = rest.get("experiments/get-by-name?experiment_name=lesionseg")["experiment"]
    tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    runs = rest.post("runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
    by_name = {r["info"]["run_name"]: r for r in runs}
    parent = next(r for r in runs if not any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", [])))
    for name, trainable in (("frozen", 4_771_585), ("finetune_all", 6_995_457)):
        run = by_name[name]
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert metrics["params_trainable"] == trainable and 0 <= metrics["test_orig_jaccard"] <= 1
        assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/"), run["info"]["artifact_uri"]
        assert rest.files(run["info"]["run_id"], "checkpoint") == [f"{name}.pt"]
        assert f"{name}.csv" in rest.files(run["info"]["run_id"])
    assert "curves.png" in rest.files(parent["info"]["run_id"], "report")
    parent_tags = {t["key"]: t["value"] for t in parent["data"]["tags"]}
    assert parent_tags["lesionseg.exported_model"] == "finetune_all"
    # The checkpoint's run link resolves on the server.
    linked = read_checkpoint(project / "models" / "finetune" / "finetune_all.pt")["extra"]["mlflow_run_id"]
    assert rest.get(f"runs/get?run_id={linked}")["run"]["info"]["run_name"] == "finetune_all"

    # The artifacts are objects in the bucket.
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=settings["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=settings["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )

    def keys(prefix: str) -> list[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    artifacts = keys("mlflow/")
    for suffix in ("/artifacts/checkpoint/frozen.pt", "/artifacts/checkpoint/finetune_all.pt", "/report/curves.png"):
        assert any(k.endswith(suffix) for k in artifacts), (suffix, artifacts[:20])
    assert any(k.endswith("/MLmodel") for k in artifacts), "the exported pyfunc model is not in the bucket"

    # Push data and models to the S3 remote; a fresh clone pulls them and has nothing to re-run.
    sh(["dvc", "push"], project, env)
    assert len(keys("dvc/")) >= 5
    sh(["git", "add", "-A"], project, env)
    sh(["git", "commit", "-qm", "pipeline run"], project, env)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    remote(clone, add=False)
    clone_env = {**env, "PYTHONPATH": str(clone)}
    sh(["dvc", "pull"], clone, clone_env)
    status = sh(["dvc", "status"], clone, clone_env).stdout
    assert "Data and pipelines are up to date" in status, status
    again = sh(["dvc", "repro"], clone, clone_env).stdout
    assert "Running stage" not in again, again
    for path in ("models/frozen.pt", "models/finetune/finetune_all.pt", "data/prepared/train.pt", "models/model.onnx"):
        assert (clone / path).read_bytes() == (project / path).read_bytes(), path

    # Queued experiments side by side (dvc exp run --queue, dvc queue start -j 2), both logging to the server.
    names = ["srv-lr-a", "srv-lr-b"]
    for name, lr in zip(names, (0.002, 0.003)):
        sh(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.lr={lr}", "train"], project, env)
    t0 = time.perf_counter()
    run_queue(project, env, names)
    print(f"2 queued experiments (train stage), -j 2, against the server: {time.perf_counter() - t0:.1f} s")
    runs = rest.post("runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
    parents = {r["info"]["run_name"]: r["info"]["run_id"] for r in runs if r["info"]["run_name"] in names}
    assert sorted(parents) == names
    for name, lr in zip(names, ("0.002", "0.003")):
        children = [
            r for r in runs if {"key": "mlflow.parentRunId", "value": parents[name]} in r["data"].get("tags", [])
        ]
        assert [c["info"]["run_name"] for c in children] == ["frozen"]
        assert {"key": "lr", "value": lr} in children[0]["data"]["params"]
        assert children[0]["info"]["status"] == "FINISHED"
