"""Stage scripts on synthetic data in a temp project, params validation, and kills mid-stage.

The outputs of a whole pipeline run are checked on the generated ``dvc repro`` that the end-to-end benchmark
times (the ``generated_repro`` fixture of conftest.py, shared with test_benchmark.py)."""

import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lesionseg.augment.augmentation import AugmentConfig
from lesionseg.data.prepare import PrepareConfig
from lesionseg.training.train import TrainConfig
from stages.configs import train_config, unfreeze_levels
from stages.params import ParamError, build, load_params, section
from tests.helpers import REPO, alive, descendants, make_external_set, make_raw_tree, params_project, run_stage

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def with_value(key, value):
    params = copy.deepcopy(PARAMS)
    *parents, last = key.split(".")
    node = params
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return params


def test_default_params_build():
    config = train_config(PARAMS, "finetune")
    assert isinstance(config, TrainConfig) and config.lr == 1e-4 and isinstance(config.augment, AugmentConfig)
    assert prepare_config(PARAMS).size == 128
    assert unfreeze_levels(section(PARAMS, "finetune").unfreeze) == [1, 2, 4]


def prepare_config(params):
    return build(PrepareConfig, "data", section(params, "data").model_dump())


def test_finetune_states_only_what_differs_from_train():
    assert set(PARAMS["finetune"]) == {"unfreeze", "lr"}  # the defaults: everything else is train's
    default = train_config(PARAMS, "finetune")
    assert (default.lr, default.epochs, default.batch_size) == (1e-4, PARAMS["train"]["epochs"], 16)
    assert train_config(with_value("train.epochs", 7), "finetune").epochs == 7
    overridden = train_config(with_value("finetune.epochs", 3), "finetune")
    assert overridden.epochs == 3 and train_config(with_value("finetune.epochs", 3), "train").epochs == 25
    with pytest.raises(ParamError, match="train.epochs must be a positive integer"):  # inherited: named at its source
        train_config(with_value("train.epochs", 0), "finetune")
    with pytest.raises(ParamError, match="finetune.epochs must be a positive integer"):
        train_config(with_value("finetune.epochs", 0), "finetune")
    with pytest.raises(ParamError, match="finetune.epochs must be of type int, got None"):
        train_config(with_value("finetune.epochs", None), "finetune")
    with pytest.raises(ParamError, match="unknown key 'finetune.encoder_weights'"):  # the frozen checkpoint's
        train_config(with_value("finetune.encoder_weights", "none"), "finetune")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.epochs", -1, "train.epochs must be a positive integer"),
        ("train.epochs", "ten", "train.epochs must be of type int"),
        ("finetune.lr", "fast", "finetune.lr must be of type float"),
        ("train.batch_size", ..., "missing key 'train.batch_size'"),
        ("train.lrr", 0.1, "unknown key 'train.lrr'"),
        ("finetune.lrr", 0.1, "unknown key 'finetune.lrr'"),
        ("augment.flip", 0.5, "unknown key 'augment.flip'"),
        ("runtime.amp", True, "runtime.amp must be of type str"),
        ("runtime.amp", "fp8", "runtime.amp must be one of"),
        ("runtime.channels_last", "yes", "runtime.channels_last: must be auto, true or false"),
        ("augment.vflip", 2, "augment.vflip must be a probability"),
        ("runtime.num_workers", ..., "missing key 'runtime.num_workers'"),
        ("train.optimizer", "sgd", "train.optimizer must be one of"),
    ],
)
def test_bad_training_params_name_the_key(key, value, message):
    with pytest.raises(ParamError, match=message):
        train_config(
            with_value(key, value), key.split(".")[0] if key.split(".")[0] in ("train", "finetune") else "train"
        )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("data.size", 0, "data.size must be an integer >= 32"),
        ("data.size", 12.5, "data.size must be of type int"),
        ("data.val_fraction", 1.5, "data.val_fraction must be between"),
        ("data.expected_train", "many", "data.expected_train"),
        ("data.sise", 64, "unknown key 'data.sise'"),
        ("data.size", "64", "data.size must be of type int, got '64'"),
        ("data.val_fraction", True, "data.val_fraction must be of type float"),
    ],
)
def test_bad_data_params_name_the_key(key, value, message):
    with pytest.raises(ParamError, match=message):
        prepare_config(with_value(key, value))


def test_an_unknown_section_or_a_section_that_is_not_a_mapping_is_refused(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "trian": {"epochs": 1}}))
    with pytest.raises(ParamError, match="params.yaml: unknown key 'trian'"):
        load_params(tmp_path / "params.yaml")
    with pytest.raises(ParamError, match="params.yaml: data must be a mapping, got 5"):
        section({**PARAMS, "data": 5}, "data")
    with pytest.raises(ParamError, match="params.yaml: missing key 'data'"):
        section({}, "data")


@pytest.mark.parametrize("value", [0, 7, "last", [], [1, "everything"]])
def test_bad_unfreeze_levels(value):
    with pytest.raises(ParamError, match="finetune.unfreeze"):
        unfreeze_levels(value)


def test_calibrate_params_are_checked_against_the_external_sets(tmp_path):
    from lesionseg.data.external import ExternalSet, prepare_external
    from lesionseg.evaluation.calibrate import CalibrationDraw
    from stages.evaluate import calibration_draws  # imports MLflow: only here

    sets = {"clinic": prepare_external(ExternalSet("clinic", make_external_set(tmp_path / "c", n=5)), 32)[0]}

    def draws(calibrate, seed=0, external=sets):
        params = with_value("evaluate.calibrate", calibrate)
        params["evaluate"]["calibrate_seed"] = seed
        return calibration_draws(params, external)

    assert draws({"clinic": 3}, seed=7) == {"clinic": CalibrationDraw(3, 7)} and draws({}) == {}
    assert calibration_draws(PARAMS, sets) == {}  # none by default
    for value, message in [
        ({"other": 3}, "evaluate.calibrate.other: no such set"),
        ({"clinic": 5}, "evaluate.calibrate.clinic must be an image count below the set's 5"),
        ({"clinic": 2}, "images must be at least 3"),
        ({"clinic": "3"}, "must be an image count"),
        ([3], "must map an external set's name"),
    ]:
        with pytest.raises(ParamError, match=message):
            draws(value)
    with pytest.raises(ParamError, match="named like the set clinic_calibrated"):
        draws({"clinic": 3}, external={**sets, "clinic_calibrated": sets["clinic"]})
    with pytest.raises(ParamError, match="calibrate_seed must be of type int"):
        draws({"clinic": 3}, seed=None)


def test_stage_with_bad_param_fails_at_start_naming_the_key(tmp_path):
    project = params_project(tmp_path / "project", data__size=-5)
    result = run_stage(project, "prepare", "--raw", "raw", "--out", "prepared", check=False)
    assert result.returncode == 1
    assert "data.size must be an integer >= 32" in result.stderr and "Traceback" not in result.stderr
    assert sorted(os.listdir(project)) == ["params.yaml"]


def test_stage_with_an_unknown_key_fails_at_start_naming_it(tmp_path):
    """A typo edited into params.yaml (or `dvc exp run -S +data.sise=64`) fails the first stage that reads it."""
    project = params_project(tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["sise"] = 64
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run_stage(project, "prepare", "--raw", "raw", "--out", "prepared", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "params.yaml: unknown key 'data.sise'" in result.stderr
    assert sorted(os.listdir(project)) == ["params.yaml"]


def test_missing_encoder_weights_fail_at_start_with_a_clear_message(tmp_path):
    project = params_project(tmp_path / "project", train__encoder_weights="weights/missing.pth")
    result = run_stage(project, "train", "--data", "nope", "--checkpoint", "c.pt", "--history", "h.csv", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "missing.pth': no such file" in result.stderr
    assert sorted(os.listdir(project)) == ["params.yaml"]


@pytest.mark.slow
def test_pipeline_on_generated_data_writes_every_output(generated_repro):
    """The generated ``dvc repro`` (10 training, 4 test pairs, an external set of 5): metrics, per-image tables,
    figures, the comparison table, MLflow grouping; then single stages re-run on its outputs."""
    project, clinic = generated_repro.project, generated_repro.clinic
    evaluated_from = next(p["start"] for p in generated_repro.processes if p["stage"] == "evaluate") * 1000
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert list(metrics) == ["frozen", "finetune_all"]
    assert metrics["frozen"]["params_trainable"] == 4_771_585 and metrics["finetune_all"]["params_frozen"] == 0
    for name in ("frozen", "finetune_all"):  # validation scores sit beside the test scores, model facts only once
        values = metrics[name]
        assert 0 <= values["val_orig_jaccard"] <= 1 and "val_params_total" not in values and "val_lr" not in values

    children = check_mlflow_grouping(project, metrics)
    # True durations: the models' runs end with their training, not when the evaluate stage logged their scores.
    frozen, finetuned = children["frozen"].info, children["finetune_all"].info
    assert frozen.end_time <= finetuned.start_time < finetuned.end_time < evaluated_from
    # The first metric (what MLflow's compare page plots by default) tells the models apart.
    assert [next(iter(children[name].data.metrics)) for name in ("frozen", "finetune_all")] == ["params_trainable"] * 2
    assert sorted(os.listdir(project / "reports" / "figures")) == [
        "clinic_error_maps.png",
        "clinic_overlays.png",
        "clinic_samples.png",
        "clinic_worst.png",
        "comparison.png",
        "curves.png",
        "error_maps.png",
        "overlays.png",
        "risk_coverage.png",
        "samples.png",
        "worst.png",
    ]
    table = (project / "reports" / "comparison.md").read_text()
    assert "| finetune_all |" in table and "| IoU change vs frozen [95% CI] |" in table
    assert "| frozen | 0.001 |" in table and "+0.0000 [+0.0000, +0.0000]" in table  # frozen against itself
    assert "| clinic IoU | clinic IoU change vs test [95% CI] |" in table
    per_image = project / "reports" / "per_image"
    assert sorted(os.listdir(per_image)) == ["clinic", "finetune_all.csv", "frozen.csv"]
    assert sorted(os.listdir(per_image / "clinic")) == ["finetune_all.csv", "frozen.csv"]

    # The external set is scored like the test split, for every model, and logged on each model's run.
    for name, values in metrics.items():
        clinic_scores = values["external"]["clinic"]
        clinic_table = pd.read_csv(per_image / "clinic" / f"{name}.csv")
        assert clinic_scores["n"] == 5 and list(clinic_table["id"]) == [f"case{i}" for i in range(5)]
        assert clinic_scores["orig_jaccard"] == pytest.approx(clinic_table["orig_jaccard"].mean(), abs=1e-5)
        assert clinic_table["height"].tolist() == [60] * 5  # original resolution
    check_external_in_mlflow(project, metrics)

    # The exported model's card, from the run's own records: the archives it was trained on, its results on the
    # test split and the external set (with the drop), and the same JSON in the ONNX model's metadata.
    card = json.loads((project / "models" / "model_card.json").read_text())
    manifest = json.loads((project / "data" / "raw" / "manifest.json").read_text())
    assert card["training_data"]["archives"] == {a: e["sha256"] for a, e in manifest["archives"].items()}
    assert set(card["results"]["evaluations"]) == {"test", "external clinic"}
    exported = card["name"].removeprefix("lesionseg ")
    test_iou = card["results"]["evaluations"]["test"]["iou"]["mean"]
    assert test_iou == pytest.approx(metrics[exported]["orig_jaccard"], abs=1e-5)
    assert "drop" in card["results"]["evaluations"]["external clinic"]
    assert card["provenance"]["mlflow_run_id"] and card["recipe"]["input_size"] == 64
    assert "## Intended use and limitations" in (project / "models" / "model_card.md").read_text()
    import onnx

    onnx_meta = {p.key: p.value for p in onnx.load(str(project / "models" / "model.onnx")).metadata_props}
    assert json.loads(onnx_meta["lesionseg.model_card"]) == card

    # A mask without its image is listed by name; the set is scored without it.
    (clinic / "case4.png").unlink()
    run_stage(project, "external", "--name", "clinic", "--out", "data/external/clinic")
    summary = json.loads((project / "data" / "external" / "clinic.json").read_text())
    assert summary["n"] == 4 and summary["skipped"] == ["case4_mask.png: no image"]

    # Fine-tuning must start from the frozen (level 0) checkpoint.
    args = ("--data", "data/prepared", "--frozen", "models/finetune/finetune_all.pt", "--models", "models/ft2")
    result = run_stage(project, "finetune", *args, "--histories", "h/ft2", check=False)
    assert (
        result.returncode == 1 and "finetune_all.pt: expected the frozen-encoder (level 0) checkpoint" in result.stderr
    )
    assert not (project / "models" / "ft2").exists()


def check_mlflow_grouping(project: Path, metrics: dict) -> dict:
    """One parent run for the execution; its children are the models, with the metrics.json numbers.

    Returns the children by name."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lesionseg")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0].info.run_id
    assert parents[0].data.params["train.epochs"] == "2"  # the whole params.yaml
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent}
    assert sorted(children) == ["finetune_all", "frozen"]
    for name, values in metrics.items():
        assert children[name].data.metrics["test_orig_jaccard"] == pytest.approx(values["orig_jaccard"])
    assert "evaluate_val_orig_jaccard" in children["frozen"].data.metrics
    assert not any(k.startswith("test_val_") for r in runs for k in r.data.metrics)
    assert children["finetune_all"].data.tags["lesionseg.init_from_run"] == children["frozen"].info.run_id
    return children


def check_external_in_mlflow(project: Path, metrics: dict) -> None:
    """Each model's run holds the external set's scores, named after the set."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lesionseg")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    for name, values in metrics.items():
        logged = runs[name].data.metrics
        assert logged["clinic_orig_jaccard"] == pytest.approx(values["external"]["clinic"]["orig_jaccard"])
        assert logged["clinic_n"] == 5


def test_external_stage_errors_name_the_set_and_keep_earlier_output(tmp_path):
    clinic = make_external_set(tmp_path / "clinic_a", n=2)
    project = params_project(tmp_path / "project", evaluate__external={"clinic": str(clinic)})
    args = ("--name", "clinic", "--out", "data/external/clinic")
    run_stage(project, "external", *args)
    before = _digests(project / "data" / "external")
    from PIL import Image

    Image.new("L", (7, 7)).save(clinic / "case1_mask.png")  # a mask of another size than its image
    result = run_stage(project, "external", *args, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "case1_mask.png: external set 'clinic': mask is 7x7 but its image case1.png is 80x60" in result.stderr
    assert _digests(project / "data" / "external") == before

    project2 = params_project(tmp_path / "p2" / "project", evaluate__external={"bad name": str(clinic)})
    result = run_stage(project2, "external", "--name", "bad name", "--out", "x", check=False)
    assert result.returncode == 1 and "evaluate.external.bad name: external set name" in result.stderr
    project3 = params_project(tmp_path / "p3" / "project", evaluate__external={"clinic": {"images": str(clinic)}})
    result = run_stage(project3, "external", *args, check=False)
    assert result.returncode == 1 and "evaluate.external.clinic must be a folder" in result.stderr


def test_tracking_uri_and_local_paths_resolve_against_the_repository(monkeypatch, tmp_path):
    from lesionseg.tracking import _artifact_root_for, resolve_tracking_uri
    from stages.params import local_path, repo_root

    assert resolve_tracking_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    assert _artifact_root_for(f"sqlite:///{tmp_path / 'mlflow.db'}") == (tmp_path / "mlartifacts").as_uri()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # what DVC sets, also in --temp and queued experiments
    assert repo_root() == tmp_path
    assert local_path("../shared/w.pth") == str((tmp_path.parent / "shared" / "w.pth").resolve())


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_killed_prepare_leaves_previous_output_no_worker_and_reruns_cleanly(tmp_path):
    """SIGKILL mid-way (an interrupted ``dvc repro``): the earlier output stays, its decode workers die with it
    (none is left waiting on the pool's pipe), and the next run succeeds."""
    raw = make_raw_tree(tmp_path / "project" / "raw", n_train=120, n_test=8, size=(640, 480))
    project = params_project(tmp_path / "project", data__expected_train=None, data__expected_test=None)
    small = tmp_path / "small"
    make_raw_tree(small, n_train=4, n_test=2)
    run_stage(project, "prepare", "--raw", small, "--out", "prepared")
    previous = _digests(project / "prepared")

    proc = run_stage(
        project, "prepare", "--raw", raw, "--out", "prepared", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while len(workers := descendants(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # until both decoding worker processes exist: the stage is mid-way
    assert proc.poll() is None, "prepare finished before it could be killed; make the input larger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while (left := [pid for pid in workers if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"decode workers {left} outlived their killed prepare"
    assert _digests(project / "prepared") == previous

    run_stage(project, "prepare", "--raw", raw, "--out", "prepared")
    summary = json.loads((project / "prepared" / "summary.json").read_text())
    assert summary["training_pairs"] == 120
    assert not [p for p in project.iterdir() if p.name.startswith(".prepared")]


def test_light_stages_do_not_import_the_training_stack():
    """The download stage and the cv stages with folds off need neither torch, torchvision nor MLflow;
    prepare needs torch only."""
    code = (
        "import sys, stages.download, stages.prepare\n"
        "heavy = {'torchvision', 'mlflow', 'albumentations', 'lesionseg.training.train'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = "import sys, stages.download, stages.cv_folds, stages.cv_train\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_stage_exit_skips_the_collector_but_runs_exit_handlers(tmp_path):
    """main() freezes the garbage collector for a fast exit; atexit handlers (MLflow's, logging's) still run."""
    marker = tmp_path / "exit"
    code = (
        "import atexit, gc\n"
        "from stages.launch import main\n"
        "state = lambda: f'{gc.isenabled()} {gc.get_freeze_count() > 0}'\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').write(state()))\n"
        "main(lambda: None)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    assert marker.read_text() == "False True"
