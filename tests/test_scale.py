"""Scaling out on synthetic data: 2 gloo processes, a tracking server killed mid-phase, queued experiments.

Everything is real: torchrun and DistributedDataParallel (gloo on CPU), an
``mlflow server`` process that the test kills with SIGKILL, ``dvc repro`` and
``dvc queue start -j 2`` in a temporary git repository. No ../shared needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from lesionseg.augment import batch_augment
from lesionseg.augment.augmentation import AugmentConfig
from lesionseg.augment.batch_augment import DeviceBatches
from lesionseg.inference.logits import predict_uint8
from lesionseg.model.checkpoint import load_model, read_checkpoint
from tests import helpers
from tests.helpers import (
    REPO,
    free_port,
    make_archives,
    make_project,
    make_raw_tree,
    params_project,
    project_env,
    run_stage,
)


def test_device_batches_shard_each_global_batch(monkeypatch):
    """2 ranks' shards of every global batch are disjoint and together are the 1-process batch."""
    monkeypatch.setattr(batch_augment, "_augment_batch", lambda images, masks, augment, generator: (images, masks))
    n = 10
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 4, 4, 3).clone()
    masks = torch.zeros(n, 4, 4, dtype=torch.uint8)
    single = DeviceBatches(images, masks, 4, AugmentConfig(), 7, "cpu")
    ranks = [DeviceBatches(images, masks, 4, AugmentConfig(), 7, "cpu", shard=(r, 2)) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 3
    for _ in range(2):  # two epochs: a new order each, the same on every rank
        whole = [set(b[:, 0, 0, 0].tolist()) for b, _ in single]
        parts = [[b[:, 0, 0, 0].tolist() for b, _ in rank] for rank in ranks]
        for step, expected in enumerate(whole):
            a, b = parts[0][step], parts[1][step]
            assert len(a) == len(b) and not set(a) & set(b)
            assert set(a) | set(b) == expected


def test_stages_starting_together_create_one_sqlite_store(tmp_path):
    """4 processes open a new SQLite store at once (as queued experiments do): no migration race, one experiment."""
    code = "import sys; from lesionseg import tracking; print(tracking.setup(f'sqlite:///{sys.argv[1]}', 'lesionseg'))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "mlflow.db")], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1  # the same experiment id everywhere


def test_a_store_that_does_not_answer_never_costs_the_training(tmp_path, monkeypatch, prepared):
    """Nothing listens on the tracking port: the phase still trains and writes; deferred or a clear error."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from lesionseg.data.cache import Split
    from lesionseg.model.model import ModelConfig, build_model
    from lesionseg.tracking import TrackingError
    from lesionseg.training.phases import DeferredLogging, train_phase
    from lesionseg.training.train import TrainConfig, TrainingJob

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # A refused connection, as from a dead server; the previous URI (and MLFLOW_TRACKING_URI) restored after.
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    tracking_utils._tracking_uri = None  # so the environment variable decides
    train, val = Split.load(prepared / "train.pt"), Split.load(prepared / "val.pt")
    config = TrainConfig(epochs=1, batch_size=8, device="cpu", progress=False)

    def phase(out: Path, deferred=None):
        model = build_model(ModelConfig("none"), unfreeze=0)
        job = TrainingJob(model, ModelConfig("none"), train, val, config, out / "c.pt", out / "h.csv")
        return train_phase("frozen", job, {}, parent_run_id=None, deferred=deferred)

    with pytest.raises(TrackingError, match="stopped answering.*phase frozen was trained and saved"):
        phase(tmp_path / "plain")
    assert (tmp_path / "plain" / "c.pt").is_file() and (tmp_path / "plain" / "h.csv").is_file()

    result = phase(tmp_path / "deferred", DeferredLogging(tmp_path / "pending", "k" * 64))
    assert "its MLflow logging waits in" in result.logging_error
    entry = tmp_path / "pending" / f"frozen-{'k' * 20}"
    assert sorted(p.name for p in entry.iterdir()) == ["checkpoint.pt", "history.csv", "state.json"]
    assert (entry / "checkpoint.pt").read_bytes() == (tmp_path / "deferred" / "c.pt").read_bytes()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared synthetic data set (24 training pairs of 64 px)."""
    root = tmp_path_factory.mktemp("scale-data")
    raw = make_raw_tree(root / "raw", n_train=24, n_test=4)
    project = params_project(
        root / "project", data__size=64, data__expected_train=24, data__expected_test=4, data__val_fraction=0.25
    )
    run_stage(project, "prepare", "--raw", raw, "--out", root / "prepared")
    return root / "prepared"


@pytest.mark.slow
def test_two_gloo_processes_train_one_phase(tmp_path, prepared):
    common = dict(train__encoder_weights="none", train__epochs=2, train__batch_size=8, runtime__device="cpu")
    project = params_project(tmp_path / "project", runtime__nproc_per_node=2, **common)
    t0 = time.perf_counter()
    result = run_stage(project, "train", "--data", prepared, "--checkpoint", "models/frozen.pt", "--history", "h.csv")
    print(f"\ntrain stage, 2 epochs, 18 pairs, 2 gloo processes: {time.perf_counter() - t0:.1f} s")
    assert "[rank 0]" in result.stderr and "[rank 1]" in result.stderr
    assert "all 2 ranks hold identical weights" in result.stderr

    # One checkpoint, written by rank 0, recording that both ranks ended with the same weights.
    written = sorted(p.relative_to(project).as_posix() for p in project.rglob("*.pt"))
    assert len(written) == 2 and written[1] == "models/frozen.pt", written  # and one MLflow artifact copy:
    assert written[0].startswith("mlartifacts/") and written[0].endswith("/artifacts/checkpoint/frozen.pt")
    checkpoint = read_checkpoint(project / "models" / "frozen.pt")
    ranks = checkpoint["extra"]["distributed"]
    assert ranks["world_size"] == 2 and len(ranks["rank_weight_digests"]) == 2
    assert len(set(ranks["rank_weight_digests"])) == 1
    assert len((project / "h.csv").read_text().splitlines()) == 1 + 2

    # One MLflow run for the phase (under the execution's parent), logged by rank 0 only.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lesionseg").experiment_id])
    assert sorted(r.info.run_name for r in runs if "mlflow.parentRunId" in r.data.tags) == ["frozen"]
    run = next(r for r in runs if r.info.run_name == "frozen")
    assert run.info.run_id == checkpoint["extra"]["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["lesionseg.world_size"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_jaccard")] == [1, 2]

    # The checkpoint loads and predicts like any other.
    model, _ = load_model(project / "models" / "frozen.pt")
    logits = predict_uint8(model, torch.zeros(2, 64, 64, 3, dtype=torch.uint8), 2, torch.device("cpu"))
    assert logits.shape == (2, 1, 64, 64) and torch.isfinite(logits).all()


def _dead_store(monkeypatch) -> None:
    """Point MLflow at a port nothing listens on (a refused connection, as from a dead server), no retries; the
    previous URI (and MLFLOW_TRACKING_URI) restored after."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    tracking_utils._tracking_uri = None  # so the environment variable decides


def _torchrun(nproc: int, args: list, cwd: Path, store: Path, timeout: int) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` of ``args`` (``-m module ...``) with this checkout's code, logging to ``store``;
    a hang fails the test at ``timeout`` seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *map(str, args)]
    # A session of its own: on a hang, torchrun and its ranks are killed together, none left waiting.
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{nproc} ranks still running after {timeout} s (killed):\n{out[-2000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused_before_they_start(tmp_path, prepared):
    project = params_project(
        tmp_path / "project", runtime__nproc_per_node=3, runtime__augment_on="device", runtime__device="cpu",
        train__batch_size=16, train__encoder_weights="none",
    )  # fmt: skip
    result = run_stage(project, "train", "--data", prepared, "--checkpoint", "c.pt", "--history", "h.csv", check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "params.yaml: train.batch_size with runtime.nproc_per_node 3: batch_size 16 is the global batch" in (
        result.stderr
    )
    assert "set it to 15 or 18, or a number of processes that divides it (2, 4, 8)" in result.stderr
    assert "torch.distributed.run" not in result.stderr and not (project / "c.pt").exists()  # no rank started


@pytest.mark.slow
def test_three_gloo_ranks_with_device_augmentation_refuse_an_uneven_batch_or_train(tmp_path, prepared):
    common = dict(
        train__encoder_weights="none", train__epochs=1, runtime__device="cpu", runtime__augment_on="device",
        runtime__nproc_per_node=3,
    )  # fmt: skip
    # 16 over 3 ranks, started by torchrun directly (past the stage's check): every rank refuses, none waits.
    project = params_project(tmp_path / "uneven", train__batch_size=16, **common)
    stage = ["-m", "stages.train", "--data", prepared, "--checkpoint", "c.pt", "--history", "h.csv"]
    t0 = time.perf_counter()
    result = _torchrun(3, stage, project, project / "mlflow.db", timeout=300)
    print(f"\n3 ranks refusing batch 16: {time.perf_counter() - t0:.1f} s")
    assert result.returncode != 0 and "set it to 15 or 18" in result.stdout + result.stderr
    assert not (project / "c.pt").exists()
    # 15: 5 rows per rank of every global batch; the epoch's totals gather, all ranks end with the same weights.
    project = params_project(tmp_path / "even", train__batch_size=15, **common)
    t0 = time.perf_counter()
    result = run_stage(project, "train", "--data", prepared, "--checkpoint", "c.pt", "--history", "h.csv", timeout=600)
    print(f"3 ranks training 1 epoch of 18 pairs: {time.perf_counter() - t0:.1f} s")
    assert "all 3 ranks hold identical weights" in result.stderr
    assert read_checkpoint(project / "c.pt")["extra"]["distributed"]["world_size"] == 3


@pytest.mark.slow
def test_two_ranks_resume_deferred_logging_without_training(tmp_path, monkeypatch, prepared):
    """Rank 0 takes up a pending MLflow log instead of training; rank 1 follows its decision instead of waiting
    in the training's first collective."""
    from lesionseg.data.cache import Split
    from lesionseg.model.model import ModelConfig, build_model
    from lesionseg.training.phases import DeferredLogging, train_phase
    from lesionseg.training.train import TrainConfig, TrainingJob

    _dead_store(monkeypatch)
    train, val = Split.load(prepared / "train.pt"), Split.load(prepared / "val.pt")
    model = build_model(ModelConfig("none"), unfreeze=0)
    config = TrainConfig(epochs=1, batch_size=8, device="cpu", progress=False)
    job = TrainingJob(model, ModelConfig("none"), train, val, config, tmp_path / "first" / "c.pt", tmp_path / "h.csv")
    key = "k" * 64
    result = train_phase("frozen", job, {}, None, deferred=DeferredLogging(tmp_path / "pending", key))
    entry = tmp_path / "pending" / f"frozen-{key[:20]}"
    assert "its MLflow logging waits in" in result.logging_error and (entry / "state.json").is_file()

    out = tmp_path / "resumed"
    args = ["-m", "tests.ddp_resume_rank", prepared, tmp_path / "pending", key, out]
    t0 = time.perf_counter()
    done = _torchrun(2, args, REPO, tmp_path / "mlflow.db", timeout=300)
    print(f"\n2 ranks resuming deferred logging: {time.perf_counter() - t0:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 returned: best epoch 1, error None" in done.stdout
    assert "rank 1 returned: best epoch 0" in done.stdout
    assert not entry.exists()  # logged, and the pending entry removed
    restored, first = read_checkpoint(out / "c.pt"), read_checkpoint(tmp_path / "first" / "c.pt")
    assert all(torch.equal(restored["state_dict"][k], v) for k, v in first["state_dict"].items())


def test_nproc_must_be_a_positive_integer(tmp_path, prepared):
    project = params_project(tmp_path / "project", runtime__nproc_per_node=0, train__encoder_weights="none")
    result = run_stage(project, "train", "--data", prepared, "--checkpoint", "c.pt", "--history", "h.csv", check=False)
    assert result.returncode == 1 and "runtime.nproc_per_node must be a positive integer" in result.stderr


class MlflowServer(helpers.MlflowServer):
    """:class:`tests.helpers.MlflowServer` that also lists an experiment's runs."""

    def runs(self, experiment: str = "lesionseg") -> list[dict]:
        try:
            found = self.get(f"experiments/get-by-name?experiment_name={experiment}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # not created yet
                return []
            raise
        experiment_id = found["experiment"]["experiment_id"]
        return self.post("runs/search", {"experiment_ids": [experiment_id], "max_results": 1000}).get("runs", [])


@pytest.fixture(scope="module")
def git_project(tmp_path_factory) -> tuple[Path, dict]:
    """A git repository holding the project (dvc.yaml, stages, library) on synthetic archives, prepared by
    ``dvc repro prepare``: 24 training pairs of 64 px, 12 epochs of batch 4 (the queued experiments set theirs)."""
    root = tmp_path_factory.mktemp("scale-project")
    params = {
        "download.source": str(make_archives(root, n_train=24, n_test=4)),
        "data.size": 64,
        "data.expected_train": 24,
        "data.expected_test": 4,
        "data.val_fraction": 0.25,
        "train.encoder_weights": "none",
        "train.epochs": 12,
        "train.batch_size": 4,
        "runtime.device": "cpu",
    }
    project = make_project(root / "project", params)
    env = project_env(PYTHONPATH=str(project))
    subprocess.run(["dvc", "repro", "prepare"], cwd=project, env=env, check=True, capture_output=True)
    return project, env


@pytest.mark.slow
def test_tracking_server_killed_mid_phase_loses_no_training(tmp_path, git_project):
    """The server dies during the train stage: outputs written, one clear line; dvc repro then logs, no training."""
    project, env = git_project
    server = MlflowServer(tmp_path / "store" / "mlflow.db", free_port())
    (tmp_path / "store").mkdir()
    env = {**env, "MLFLOW_TRACKING_URI": server.uri}
    server.start()
    try:
        repro = subprocess.Popen(
            ["dvc", "repro", "train"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        run = None
        for _ in range(1200):  # kill the server once the phase has logged its first epoch
            assert repro.poll() is None, "dvc repro train ended before the server could be killed"
            run = next((r for r in server.runs() if r["info"]["run_name"] == "frozen"), None)
            if run and any(m["key"] == "val_jaccard" for m in run["data"].get("metrics", [])):
                break
            time.sleep(0.25)
        server.kill()
        out, _ = repro.communicate(timeout=900)
        assert repro.returncode != 0
        errors = [line for line in out.splitlines() if "train failed:" in line]
        assert len(errors) == 1 and f"MLflow tracking store {server.uri} stopped answering" in errors[0], out[-3000:]
        assert "Traceback" not in out
        print(f"\nthe stage's last line: {errors[0]}")
        assert out.count("epoch 12:") == 1  # trained to the end without the server
        checkpoint = read_checkpoint(project / "models" / "frozen.pt")
        assert checkpoint["extra"]["mlflow_run_id"] == run["info"]["run_id"]
        assert len((project / "reports" / "history" / "frozen.csv").read_text().splitlines()) == 1 + 12
        pending = list((project / ".lesionseg" / "pending").iterdir())
        assert len(pending) == 1 and pending[0].name.startswith("frozen-")

        server.start()  # the same store back on the same port
        out = subprocess.run(
            ["dvc", "repro", "train"], cwd=project, env=env, capture_output=True, text=True, timeout=900
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        log = out.stdout + out.stderr
        assert "completing the MLflow run without training" in log and "epoch 1:" not in log
        assert not (project / ".lesionseg" / "pending").exists() or not any(
            (project / ".lesionseg" / "pending").iterdir()
        )
        runs = [r for r in server.runs() if r["info"]["run_name"] == "frozen"]
        assert len(runs) == 1 and runs[0]["info"]["run_id"] == run["info"]["run_id"]
        assert runs[0]["info"]["status"] == "FINISHED"
        history = server.get(f"metrics/get-history?run_id={run['info']['run_id']}&metric_key=val_jaccard")
        assert sorted(m["step"] for m in history["metrics"]) == list(range(1, 13))
        metrics = {m["key"] for m in runs[0]["data"]["metrics"]}
        assert {"best_val_jaccard", "params_trainable"} <= metrics
        artifacts = server.get(f"artifacts/list?run_id={run['info']['run_id']}&path=checkpoint")
        assert [Path(f["path"]).name for f in artifacts.get("files", [])] == ["frozen.pt"]
        assert read_checkpoint(project / "models" / "frozen.pt")["extra"]["mlflow_run_id"] == run["info"]["run_id"]
        status = subprocess.run(["dvc", "status", "train"], cwd=project, env=env, capture_output=True, text=True)
        assert "up to date" in status.stdout, status.stdout
    finally:
        server.kill()


def run_queue(project: Path, env: dict, names: list[str]) -> None:
    """``dvc queue start -j 2`` and wait until the queued experiments ``names`` all succeeded."""
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=project, env=env, check=True, capture_output=True)
    deadline, lines, status = time.time() + 900, [], None
    while time.time() < deadline:
        status = subprocess.run(["dvc", "queue", "status"], cwd=project, env=env, capture_output=True, text=True)
        lines = [line for line in status.stdout.splitlines() if any(n in line.split() for n in names)]
        if len(lines) == len(names) and all(("Success" in line) or ("Failed" in line) for line in lines):
            break
        time.sleep(2)
    logs = {
        n: subprocess.run(["dvc", "queue", "logs", n], cwd=project, env=env, capture_output=True, text=True).stdout
        for n in names
    }
    subprocess.run(["dvc", "queue", "stop"], cwd=project, env=env, capture_output=True)
    assert len(lines) == len(names) and all("Success" in line for line in lines), (
        status.stdout + "\n".join(logs.values())[-4000:]
    )
    for log in logs.values():
        assert "database is locked" not in log and "Traceback" not in log


@pytest.mark.slow
def test_queued_experiments_run_side_by_side_into_one_sqlite_store(git_project):
    """dvc exp run --queue x2, dvc queue start -j 2: both experiments' runs land in the default SQLite store."""
    project, env = git_project
    names = ["q-lr-a", "q-lr-b"]
    for name, lr in zip(names, (0.001, 0.002)):
        subprocess.run(
            ["dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.lr={lr}", "-S", "train.epochs=2", "train"],
            cwd=project, env=env, check=True, capture_output=True,
        )  # fmt: skip
    run_queue(project, env, names)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lesionseg")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    parents = {r.info.run_name: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert sorted(parents) == names
    for name, lr in zip(names, ("0.001", "0.002")):
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[name].info.run_id]
        assert [c.info.run_name for c in children] == ["frozen"]
        assert children[0].data.params["lr"] == lr and children[0].info.status == "FINISHED"
        assert "best_val_jaccard" in children[0].data.metrics
