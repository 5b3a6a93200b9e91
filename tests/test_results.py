"""Records of finished experiments (`scripts/results.py save`) and the tables rendered from them
(`scripts/results.py render`), on tiny synthetic runs laid out as the pipeline lays them out (no training)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from lesionseg.errors import DataError
from lesionseg.evaluation.stats import mean_interval
from lesionseg.experiments.compare import compare_runs, format_markdown
from lesionseg.experiments.results_record import _reconstructed_command, read_provenance, save_record
from lesionseg.experiments.results_tables import (
    _SCORE,
    TableSpec,
    _missing_records,
    _render_page,
    _render_table,
    _unrecorded_rows,
)
from lesionseg.experiments.runs import read_run
from tests.helpers import load_script

main = load_script("results").main

IDS = [f"ISIC_{i:07d}" for i in range(12)]
EXTRA = [f"EXTRA_{i:03d}" for i in range(8)]
MODELS = ("frozen", "finetune_all")


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def write_run(root, shift: float = 0.0, epochs: int = 2, seed: int = 0):
    """A pipeline run's files in project ``root``: params.yaml, dvc.lock (its params as run), reports/ (metrics,
    per-image tables of the test split, an external set, out of fold and fold-model means, histories) and
    the model card's provenance. ``shift`` raises every score of finetune_all; ``seed`` draws the scores."""
    rng = np.random.default_rng(seed)
    params = {
        "train": {"epochs": 25, "lr": 0.001},
        "runtime": {"device": "cpu", "amp": True},
        "evaluate": {"tta": True, "external": {}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lock = {
        "schema": "2.0",
        "stages": {
            "train": {"cmd": "python -m stages.train", "params": {"params.yaml": {"train.epochs": epochs}}},
            "evaluate": {
                "cmd": "python -m stages.evaluate",
                "params": {"params.yaml": {"evaluate.tta": True, "evaluate.external": {"extra": "/data/extra"}}},
            },
        },
    }
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    reports = root / "reports"
    layout = {"per_image": IDS, "per_image/extra": EXTRA, "cv/per_image": IDS, "cv/external/extra": EXTRA}
    for folder, ids in layout.items():
        (reports / folder).mkdir(parents=True, exist_ok=True)
        for model in MODELS:
            scores = rng.uniform(0.5, 0.9, len(ids)) + (shift if model == "finetune_all" else 0.0)
            table = pd.DataFrame({"id": ids, "orig_jaccard": scores, "orig_dice": 2 * scores / (1 + scores)})
            table.to_csv(reports / folder / f"{model}.csv", index=False, float_format="%.6f")
    metrics = {m: {"orig_jaccard": 0.7, "external": {"extra": {"orig_jaccard": 0.6, "n": 8}}} for m in MODELS}
    (reports / "metrics.json").write_text(json.dumps(metrics))
    (reports / "cv" / "metrics.json").write_text(json.dumps({"finetune_all": {"orig_jaccard": 0.7}}))
    (reports / "history" / "finetune").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"epoch": [1, 2], "seconds": [10.0, 21.5]}).to_csv(reports / "history" / "frozen.csv", index=False)
    history = pd.DataFrame({"epoch": [1, 2], "seconds": [12.0, 30.0]})
    history.to_csv(reports / "history" / "finetune" / "finetune_all.csv", index=False)
    (root / "models").mkdir(exist_ok=True)
    card = {"provenance": {"git_commit": None, "dvc_experiment": None, "mlflow_run_id": "abc123"}}
    (root / "models" / "model_card.json").write_text(json.dumps(card))
    return root


@pytest.fixture
def project(tmp_path):
    """A git repository whose params.yaml is committed and whose workspace holds a finished run."""
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q")
    git(root, "config", "user.name", "t")
    git(root, "config", "user.email", "t@t")
    write_run(root)
    git(root, "add", "params.yaml")
    git(root, "commit", "-qm", "params")
    with (root / "params.yaml").open("a") as params:  # as `dvc exp run -S` leaves it: changed, not committed
        params.write("# rewritten\n")
    return root


def test_save_records_a_workspace_run_byte_for_byte(project, tmp_path):
    record = save_record(str(project / "reports"), "mine", tmp_path / "results", repo=str(project))
    for folder in ("per_image", "per_image/extra", "cv/per_image", "cv/external/extra"):
        for model in MODELS:
            assert (record / folder / f"{model}.csv").read_bytes() == (
                project / "reports" / folder / f"{model}.csv"
            ).read_bytes()
    assert (record / "metrics.json").read_text() == (project / "reports" / "metrics.json").read_text()
    assert (record / "cv" / "metrics.json").is_file()
    assert not (record / "history").exists()  # scores only
    params = yaml.safe_load((record / "params.yaml").read_text())
    assert params["train"]["epochs"] == 2  # as run (dvc.lock), not params.yaml's 25
    assert params["evaluate"]["external"] == {"extra": "@local/extra"}  # no machine-local path in a record

    facts = read_provenance("mine", tmp_path / "results")
    assert facts["git_commit"] == git(project, "rev-parse", "HEAD")
    assert facts["uncommitted_changes"] is False  # params.yaml as `dvc exp run -S` leaves it is not a code change
    assert facts["dvc_experiment"] is None and facts["mlflow_run_id"] == "abc123"
    assert facts["command"] == "dvc exp run -S train.epochs=2 -S +evaluate.external.extra=@local/extra"
    assert facts["command_source"].startswith("reconstructed")
    assert facts["precision"] == "fp32" and "runtime.device=cpu" in facts["precision_source"]
    assert facts["wall_seconds"] == 73.5 and "training phases only" in facts["wall_seconds_source"]
    assert facts["machine"]["torch"] and facts["machine"]["cpu_count"]

    # A record is a reports folder: compared with the run it was saved from, nothing changes.
    results = compare_runs(read_run(str(project / "reports")), read_run(str(record))).results
    assert len(results) == 8 and all(r.change.delta == 0 for r in results)


def test_save_takes_the_given_command_and_wall_time_and_replaces_a_record_whole(project, tmp_path, capsys):
    results = tmp_path / "results"
    line = "dvc exp run -n mine -S train.epochs=2"
    argv = ["save", str(project / "reports"), "--name", "mine", "--results-dir", str(results)]
    assert main([*argv, "--repo", str(project), "--command", line, "--wall-seconds", "1640"]) == 0
    assert "KiB" in capsys.readouterr().out
    facts = read_provenance("mine", results)
    assert (facts["command"], facts["command_source"]) == (line, "given (--command)")
    assert (facts["wall_seconds"], facts["wall_seconds_source"]) == (1640, "given (--wall-seconds)")
    shutil.rmtree(project / "reports" / "cv")
    assert main([*argv, "--repo", str(project)]) == 0
    assert not (results / "mine" / "cv" / "per_image").exists()
    assert [p.name for p in results.iterdir()] == ["mine"]  # no staging folder left


def test_save_stores_data_beside_the_repository_relative_to_it_and_no_other_local_path(project, tmp_path):
    """As a campaign run on absolute paths to ../shared leaves its params: the record holds ../shared/...,
    which the README's commands use and every clone beside ../shared resolves; other absolute paths are masked."""
    shared = tmp_path / "shared" / "data"
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    lock["stages"]["evaluate"]["params"]["params.yaml"]["evaluate.external"] = {"extra": f"{shared}/isic2018-extra/"}
    lock["stages"]["train"]["params"]["params.yaml"]["train.encoder_weights"] = "/opt/weights/w.pth"
    (project / "dvc.lock").write_text(yaml.safe_dump(lock))
    line = f"OMP_NUM_THREADS=1 dvc exp run -n x -S download.source={shared}/isic2016-dev -S 'model.tag=a b'"
    save_record(str(project / "reports"), "mine", tmp_path / "results", repo=str(project), command=line)

    params = yaml.safe_load((tmp_path / "results" / "mine" / "params.yaml").read_text())
    assert params["evaluate"]["external"] == {"extra": "../shared/data/isic2018-extra"}
    assert params["train"]["encoder_weights"] == "@local/w.pth"
    facts = read_provenance("mine", tmp_path / "results")
    assert facts["command"] == (
        "OMP_NUM_THREADS=1 dvc exp run -n x -S download.source=../shared/data/isic2016-dev -S 'model.tag=a b'"
    )
    assert facts["source"] == "reports"
    assert str(tmp_path) not in (tmp_path / "results" / "mine" / "provenance.json").read_text()


def test_save_refuses_what_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["save", str(tmp_path / "empty"), "--name", "x", "--results-dir", str(tmp_path / "r")]
    assert main(argv) == 1
    assert "no metrics.json here" in capsys.readouterr().err
    assert not (tmp_path / "r" / "x").exists()
    assert main(["save", str(tmp_path / "empty")]) == 2  # a folder needs --name
    with pytest.raises(DataError, match="no record 'nowhere'"):
        read_provenance("nowhere", tmp_path / "r")


def test_reconstructed_command_sets_what_differs_from_the_baseline():
    run = {"train": {"epochs": 3, "lr": 0.001}, "finetune": {"unfreeze": [1, "all"]}, "evaluate": {"external": {}}}
    base = {"train": {"epochs": 25, "lr": 0.001}, "finetune": {"unfreeze": [1, 2, "all"]}}
    assert _reconstructed_command("x", run, base) == "dvc exp run -n x -S train.epochs=3 -S 'finetune.unfreeze=[1,all]'"
    assert _reconstructed_command(None, run, None) is None


@pytest.mark.slow  # four dvc processes: about 40 s on the shared 2 cores
def test_save_reads_a_dvc_experiment_as_compare_does(project, tmp_path, monkeypatch):
    """An experiment saved by DVC (its reports in DVC's cache, not in git) recorded through DVC's file system."""
    monkeypatch.chdir(project)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "reports"], check=True, capture_output=True)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "baseline run")
    write_run(project, shift=0.05, epochs=3, seed=1)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "reports"], check=True, capture_output=True)
    save = [sys.executable, "-m", "dvc", "exp", "save", "-q", "-n", "better"]
    subprocess.run(save, check=True, capture_output=True)
    shutil.copytree(project / "reports", tmp_path / "experiment")  # what the experiment holds
    git(project, "checkout", "-q", "--", ".")
    subprocess.run([sys.executable, "-m", "dvc", "checkout", "-q"], check=True, capture_output=True)

    record = save_record("better", "better", tmp_path / "results")
    facts = read_provenance("better", tmp_path / "results")
    assert facts["dvc_experiment"] == "better" and facts["uncommitted_changes"] is None
    assert facts["baseline_commit"] == git(project, "rev-parse", "HEAD") != facts["git_commit"]
    assert facts["command"] == "dvc exp run -n better -S train.epochs=3 -S +evaluate.external.extra=@local/extra"
    assert yaml.safe_load((record / "params.yaml").read_text())["train"]["epochs"] == 3
    table = "cv/external/extra/finetune_all.csv"
    assert (record / table).read_bytes() == (tmp_path / "experiment" / table).read_bytes()
    assert (record / table).read_bytes() != (project / "reports" / table).read_bytes()  # not the workspace's


@pytest.fixture
def records(tmp_path):
    """Two records, a and b, saved from two runs: b's finetune_all is better by 0.05."""
    results = tmp_path / "results"
    for seed, (name, shift) in enumerate((("a", 0.0), ("b", 0.05))):
        root = tmp_path / name
        root.mkdir()
        write_run(root, shift, seed=seed)
        save_record(str(root / "reports"), name, results, repo=str(root), command=f"dvc exp run -n {name}")
    return results


PAGE = """# A page

Text before.

<!-- results:change a b models=finetune_all -->
stale
<!-- /results -->

| typed | 0.8613 |
|---|---|

<!-- results:scores b models=finetune_all -->
<!-- /results -->
"""


def test_render_fills_each_region_from_the_records_through_the_comparison(records):
    page = _render_page(PAGE, "page.md", records)
    assert page.startswith("# A page\n\nText before.\n\n<!-- results:change a b models=finetune_all -->\n")
    expected = compare_runs(read_run(str(records / "a")), read_run(str(records / "b")), models=["finetune_all"])
    assert format_markdown(expected.results, labels=("a", "b")) in page
    assert "stale" not in page
    b_test = pd.read_csv(records / "b" / "per_image" / "finetune_all.csv")["orig_jaccard"]
    mean, (low, high) = mean_interval(b_test)
    assert f"| finetune_all | {mean:.4f} [{low:.4f}, {high:.4f}] |" in page
    assert (
        "| model | test (12) | cv out-of-fold (12) | external extra (8) | external extra, fold-model mean (8) |" in page
    )
    assert f"`{records.as_posix()}/a/` (`dvc exp run -n a`; " in page and "python scripts/results.py render" in page
    facts = read_provenance("a", records)
    # the run's own time travels with its numbers, saying what it measured; and the commit it was run from
    assert f"{facts['wall_seconds']:,.0f} s of training phases" in page and " s wall" not in page
    assert facts["baseline_commit"] is None and "run from commit" not in page  # not a git repository: no commit
    assert _render_page(page, "page.md", records) == page  # rendering is deterministic: a second pass changes nothing
    assert _unrecorded_rows(page) == [page.splitlines().index("| typed | 0.8613 |") + 1]


def test_cost_table_gives_each_records_machine_schedule_and_time(records):
    line = "dvc exp run -n c -S train.epochs=2"
    save_record(str(records.parent / "a" / "reports"), "c", records, repo=str(records.parent / "a"), command=line)
    facts = read_provenance("c", records)
    facts.update(wall_seconds=1640.0, wall_seconds_source="given (--wall-seconds)")
    (records / "c" / "provenance.json").write_text(json.dumps(facts))
    params = yaml.safe_load((records / "c" / "params.yaml").read_text())
    params["finetune"] = {"unfreeze": [1, "all"], "lr": 0.0001}  # its epochs: train's
    (records / "c" / "params.yaml").write_text(yaml.safe_dump(params))
    table = _render_table(TableSpec.parse("cost a c", "p.md:1"), records)
    assert "| 2 + 2 x 2 | 3 |" in table
    a = read_provenance("a", records)
    # a: 2 frozen epochs as run (dvc.lock), no fine-tuning epochs: 2 epochs in 73.5 s of training phases
    assert f"| `a` | {a['machine']['cpu']}, {a['machine']['cpu_count']} cores | fp32 | " in table
    assert "| 74 s of training phases | 36.8 |" in table
    assert "| 1,640 s wall | - |" in table  # a whole run's time: no per-epoch figure from it
    with pytest.raises(ValueError, match="one or more"):
        TableSpec.parse("cost", "p.md:1")


def test_review_table_reads_the_review_scores_of_each_evaluation(records):
    metrics_path = records / "b" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    review = {"review_auroc": 0.9123, "review_caught": 0.8, "review_flagged": 0.25, "review_accepted_jaccard": 0.81}
    metrics["finetune_all"].update(review)
    metrics["finetune_all"]["external"]["extra"].update({**review, "review_auroc": 0.7})
    metrics_path.write_text(json.dumps(metrics))
    table = _render_table(TableSpec.parse("review b models=finetune_all", "p.md:1"), records)
    assert "| test | finetune_all | 12 | 0.7000 | 0.912 | 80% | 25% | 0.8100 |" in table
    assert "| external extra | finetune_all | 8 | 0.6000 | 0.700 | 80% | 25% | 0.8100 |" in table
    assert "frozen" not in table.split("\n\n")[0]  # models= keeps the one asked for


def test_render_errors_name_the_page_and_the_record(records, tmp_path, capsys):
    waiting = _render_table(TableSpec.parse("scores missing", "p.md:1"), records)
    assert "No record" in waiting and "results.py save <exp> --name missing" in waiting
    assert not _unrecorded_rows(waiting) and not _SCORE.search(waiting)
    assert _missing_records("<!-- results:change a missing -->\n<!-- /results -->\n", "p.md", records) == ["missing"]
    with pytest.raises(ValueError, match="p.md:3: a change table names 2 record"):
        TableSpec.parse("change a", "p.md:3")
    with pytest.raises(ValueError, match="without its"):
        _render_page("<!-- results:scores a -->\n| x |\n", "p.md", records)
    page, stale = tmp_path / "page.md", PAGE[: PAGE.index("| typed")]  # the change table only
    page.write_text(stale)
    argv = ["render", str(page), "--results-dir", str(records)]
    assert main([*argv, "--check"]) == 1 and page.read_text() == stale
    assert "page.md: its results tables differ" in capsys.readouterr().out
    assert main(argv) == 0 and main([*argv, "--check"]) == 0


def test_the_recorded_precision_wins_over_the_derived_one(project, tmp_path):
    card = {"provenance": {}, "recipe": {"train": {"precision": "bf16"}}}  # as the checkpoints record it
    (project / "models" / "model_card.json").write_text(json.dumps(card))
    save_record(str(project / "reports"), "mine", tmp_path / "results", repo=str(project))
    facts = read_provenance("mine", tmp_path / "results")
    assert (facts["precision"], facts["precision_source"]) == ("bf16", "models/model_card.json")


def test_the_checkpoints_recorded_precision_is_read_where_the_card_has_none(project, tmp_path):
    import torch

    torch.save(
        {"format": "x", "numerics": {"precision": "bf16", "channels_last": True}}, project / "models" / "frozen.pt"
    )
    save_record(str(project / "reports"), "mine", tmp_path / "results", repo=str(project))
    facts = read_provenance("mine", tmp_path / "results")
    assert (facts["precision"], facts["precision_source"]) == ("bf16", "models/frozen.pt")
