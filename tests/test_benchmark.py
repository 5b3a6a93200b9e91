"""The end-to-end benchmark (benchmarks/e2e.py): its timing arithmetic, and one real run on generated data
(conftest.py's ``generated_repro``, whose outputs test_stages.py checks)."""

import sys

import pytest
import yaml

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import e2e  # noqa: E402

# The stage processes of the generated run (the external set's included): each stage once, cv_train once per fold
# stage (cv.fold_stages); DVC orders the independent ones.
FOLD_STAGES = len(yaml.safe_load((REPO / "params.yaml").read_text())["cv"]["fold_stages"])
STAGES = [
    "download",
    "prepare",
    "train",
    "finetune",
    "cv_folds",
    *["cv_train"] * FOLD_STAGES,
    "cv_score",
    "external",
    "evaluate",
    "report",
    "export",
]


def test_stage_times_split_each_process_into_startup_work_and_shutdown(tmp_path):
    log = tmp_path / "processes.tsv"
    log.write_text(
        "100.0\t110.0\t0\t-m stages.train --data data/prepared\n"
        "110.5\t111.0\t0\t-c 'import sys'\n"  # not a stage: ignored
        "112.0\t130.0\t0\t-m stages.finetune --data 'data/prepared'\n"
    )
    processes = e2e.read_processes(log)
    assert [p["stage"] for p in processes] == ["train", "finetune"]
    marks = [
        {"stage": "train", "start": 103.0, "end": 108.0, "rank": None, "images": 10, "unfreeze": "0"},
        {"stage": "train", "start": 103.5, "end": 107.0, "rank": "1"},  # another torchrun rank: not counted
        {"stage": "finetune", "start": 115.0, "end": 120.0, "rank": None},
        {"stage": "finetune", "start": 121.0, "end": 127.0, "rank": None},
    ]
    train, finetune = e2e.stage_times(processes, marks)
    assert train == {
        "stage": "train",
        "wall_s": 10.0,
        "startup_s": 3.0,
        "work_s": 5.0,
        "between_s": 0.0,
        "shutdown_s": 2.0,
    }
    assert finetune["startup_s"] == 3.0 and finetune["work_s"] == 11.0
    assert finetune["between_s"] == 1.0 and finetune["shutdown_s"] == 3.0


def test_a_stage_without_work_is_all_overhead(tmp_path):
    (tmp_path / "p.tsv").write_text("1.0\t1.5\t0\t-m stages.cv_train --data x\n")
    (row,) = e2e.stage_times(e2e.read_processes(tmp_path / "p.tsv"), [])
    assert row["startup_s"] == 0.5 and row["work_s"] == 0.0


def test_overrides_are_yaml_values():
    assert e2e.parse_overrides(["train.epochs=2", "finetune.unfreeze=[1, all]", "data.expected_train=null"]) == {
        "train.epochs": 2,
        "finetune.unfreeze": [1, "all"],
        "data.expected_train": None,
    }
    with pytest.raises(ValueError, match="key=value"):
        e2e.parse_overrides(["train.epochs"])


@pytest.mark.slow
def test_e2e_benchmark_times_a_real_dvc_repro(generated_repro):
    report = generated_repro.report
    assert sorted(s["stage"] for s in report["stages"]) == sorted(STAGES)
    for stage in report["stages"]:
        parts = stage["startup_s"] + stage["work_s"] + stage["between_s"] + stage["shutdown_s"]
        assert parts == pytest.approx(stage["wall_s"], abs=0.05), stage
        # Non-negative, not positive: a stage's work can round to 0.0 s on a fast machine (download from local
        # archives); how long a step takes is the benchmark's report, not a pass/fail condition.
        assert min(stage["startup_s"], stage["work_s"], stage["shutdown_s"]) >= 0, stage
    assert report["wall_s"] >= sum(s["wall_s"] for s in report["stages"])

    frozen, finetune = report["phases"]
    assert (frozen["phase"], finetune["phase"]) == ("frozen", "finetune_all")
    # 10 generated pairs, 20% held out for validation: 8 trained per epoch, 2 + 1 epochs
    assert frozen["images"] == 2 * 8 and finetune["images"] == 8
    assert frozen["bare_ips_before"] > 0 and finetune["bare_ips_after"] > 0
    assert report["ideal_training_s"] == pytest.approx(frozen["ideal_s"] + finetune["ideal_s"], abs=0.02)
    assert 0 < report["efficiency"] < 1
    assert list(report["import_s"]) == list(e2e.IMPORTS) and all(v >= 0 for v in report["import_s"].values())
    assert "end-to-end dvc repro" in generated_repro.stderr and "efficiency" in generated_repro.stderr
