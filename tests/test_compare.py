"""The one paired comparison, its verdict, the metrics record and `lesionseg compare`, on small synthetic tables
laid out as the evaluate and cv stages write them (no pipeline run)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from lesionseg.cli import main
from lesionseg.evaluation.stats import PairedComparison
from lesionseg.experiments.compare import (
    BETTER,
    NO_CHANGE,
    WORSE,
    ImageMismatchError,
    compare_models,
    compare_runs,
    paired_change,
    verdict,
)
from lesionseg.experiments.model_metrics import ModelMetrics, metrics_json, parse_metrics
from lesionseg.experiments.runs import Run, _evaluation_of, read_run

IDS = [f"ISIC_{i:07d}" for i in range(30)]
EXTRA_IDS = [f"EXTRA_{i:04d}" for i in range(20)]


def table(scores, ids=IDS, **columns) -> pd.DataFrame:
    """A per-image table: ``id`` and the score columns (orig_jaccard, orig_dice), plus ``columns``."""
    scores = np.asarray(scores, dtype=float)
    return pd.DataFrame(
        {"id": ids[: len(scores)], **columns, "orig_jaccard": scores, "orig_dice": 2 * scores / (1 + scores)}
    )


def write_reports(root, layout: dict[str, dict[str, pd.DataFrame]]):
    """A reports folder: folder inside it (``per_image``, ``cv/per_image``, ...) -> model -> table."""
    for folder, tables in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for model, t in tables.items():
            t.to_csv(root / folder / f"{model}.csv", index=False, float_format="%.6f")
    return root


@pytest.fixture
def two_experiments(tmp_path):
    """Reports of two experiments. B's finetune_all is better by 0.03 on CV out-of-fold and 0.02 on the
    external set's fold-model mean, the same on test; B also has cv_ensemble and a second external set."""
    rng = np.random.default_rng(0)
    test = {m: rng.uniform(0.5, 0.9, 30) for m in ("frozen", "finetune_all")}
    oof, extra, fold_mean = rng.uniform(0.5, 0.9, 30), rng.uniform(0.3, 0.8, 20), rng.uniform(0.3, 0.8, 20)
    folds = np.arange(30) % 3
    a = write_reports(
        tmp_path / "a",
        {
            "per_image": {m: table(s) for m, s in test.items()},
            "per_image/extra": {"finetune_all": table(extra, EXTRA_IDS)},
            "cv/per_image": {"finetune_all": table(oof, fold=folds)},
            "cv/external/extra": {"finetune_all": table(fold_mean, EXTRA_IDS, folds=3)},
        },
    )
    # The pipeline's model order, which the comparison keeps (B's tables come in the files' order).
    (a / "metrics.json").write_text(json.dumps({"frozen": {"loss": 0.3}, "finetune_all": {"loss": 0.2}}))
    b = write_reports(
        tmp_path / "b",
        {
            # Rows in another order: pairing is by image id, not by row.
            "per_image": {**{m: table(s).iloc[::-1] for m, s in test.items()}, "cv_ensemble": table(test["frozen"])},
            "per_image/extra": {"finetune_all": table(extra + rng.normal(0, 0.05, 20), EXTRA_IDS)},
            "per_image/clinic_b": {"finetune_all": table(extra, EXTRA_IDS)},
            "cv/per_image": {"finetune_all": table(oof + 0.03 + rng.normal(0, 0.005, 30), fold=folds)},
            "cv/external/extra": {"finetune_all": table(fold_mean + 0.02, EXTRA_IDS, folds=3)},
        },
    )
    return a, b


# The one paired comparison and its verdict


def test_paired_change_pairs_by_image_id_not_by_row():
    rng = np.random.default_rng(1)
    a = table(rng.uniform(0.4, 0.9, 30))
    b = a.assign(orig_jaccard=a["orig_jaccard"] + np.linspace(0, 0.1, 30)).sample(frac=1, random_state=0)
    change = paired_change(a, b)
    assert change.n == 30 and change.delta == pytest.approx(0.05)
    # Paired by row instead, the shuffled table would give another per-image difference: a wider interval.
    assert change.ci95[1] - change.ci95[0] < 0.03 and change.ci95[0] > 0


def test_mismatched_images_are_a_named_error_listing_ids():
    a = table(np.linspace(0.5, 0.9, 10))
    b = a.assign(id=IDS[:8] + ["ISIC_0000099", "ISIC_0000098"])
    with pytest.raises(ImageMismatchError) as caught:
        paired_change(a, b, what="finetune_all on cv out-of-fold")
    error = caught.value
    assert isinstance(error, ValueError) and error.what == "finetune_all on cv out-of-fold"
    assert error.only_a == ["ISIC_0000008", "ISIC_0000009"] and error.only_b == ["ISIC_0000098", "ISIC_0000099"]
    assert str(error).startswith("finetune_all on cv out-of-fold: the two sides scored different images (10 vs 10;")
    with pytest.raises(ImageMismatchError, match=r"^frozen on external extra: .*\['ISIC_0000008'"):
        compare_models({"frozen": a}, {"frozen": b}, evaluation="external extra")
    with pytest.raises(ValueError, match="lists an image twice"):
        paired_change(a, pd.concat([a, a.iloc[:1]]))
    with pytest.raises(ValueError, match="no column 'dice'"):
        paired_change(a, a, metric="dice")


@pytest.mark.parametrize(
    ("ci95", "expected"),
    [((0.01, 0.03), BETTER), ((-0.03, -0.001), WORSE), ((-0.01, 0.02), NO_CHANGE), ((0, 0), NO_CHANGE)],
)
def test_verdict_reads_the_interval(ci95, expected):
    assert verdict(PairedComparison(10, 0.5, 0.5, sum(ci95) / 2, ci95, 0.5)) == expected


def test_report_uses_the_one_comparison():
    from lesionseg.report.comparison_table import _CHANGE_COLUMN, comparison_table, verdicts

    rng = np.random.default_rng(2)
    frozen = table(rng.uniform(0.5, 0.8, 30))
    tuned = frozen.assign(orig_jaccard=frozen["orig_jaccard"] + 0.04 + rng.normal(0, 0.01, 30)).iloc[::-1]
    metrics = {
        "frozen": ModelMetrics({"loss": 0.3, "orig_jaccard": 0.65}, lr=0.001, params={"total": 7, "trainable": 5}),
        "finetune_all": ModelMetrics({"loss": 0.2, "orig_jaccard": 0.69}, external={"extra": {"orig_jaccard": 0.5}}),
    }
    out = comparison_table(metrics, {"frozen": frozen, "finetune_all": tuned})
    assert out["Trainable params"].tolist()[0] == 5 and np.isnan(out["Learning rate"].tolist()[1])
    assert out["extra IoU"].tolist()[1] == 0.5 and out[_CHANGE_COLUMN].tolist()[1].startswith("+0.04")
    (line,) = verdicts({"frozen": frozen, "finetune_all": tuned})
    assert line.startswith("finetune_all is better than frozen: per-image IoU +0.04")
    with pytest.raises(ImageMismatchError, match="finetune_all vs frozen on test"):
        verdicts({"frozen": frozen, "finetune_all": tuned.iloc[1:]})


# The metrics record


TRAINED = {  # an entry as the evaluate stage writes it for a trained phase
    "loss": 0.31,
    "jaccard": 0.71,
    "orig_jaccard": 0.7,
    "orig_dice": 0.8,
    "external": {"extra": {"n": 20, "loss": 0.5, "orig_jaccard": 0.55}},
    "val_loss": 0.29,
    "val_orig_jaccard": 0.72,
    "params_total": 6995457,
    "params_trainable": 6995457,
    "params_frozen": 0,
    "lr": 0.0001,
    "epochs": 12,
    "best_epoch": 9,
}
ENSEMBLE = {"loss": 0.3, "orig_jaccard": 0.73, "params_total": 34977285, "members": 5, "member_model": "finetune_all"}


def test_metrics_record_round_trips_the_file_format():
    text = json.dumps({"finetune_all": TRAINED, "cv_ensemble": ENSEMBLE}, indent=2)
    records = parse_metrics(text, "reports/metrics.json")
    assert json.dumps(metrics_json(records), indent=2) == text  # same keys, values and order
    tuned, ensemble = records["finetune_all"], records["cv_ensemble"]
    assert tuned.test == {"loss": 0.31, "jaccard": 0.71, "orig_jaccard": 0.7, "orig_dice": 0.8}
    assert tuned.val == {"loss": 0.29, "orig_jaccard": 0.72} and tuned.params["frozen"] == 0
    assert tuned.external["extra"]["n"] == 20 and (tuned.lr, tuned.epochs, tuned.best_epoch) == (0.0001, 12, 9)
    assert (ensemble.members, ensemble.member_model, ensemble.lr) == (5, "finetune_all", None)
    assert ensemble.numbers() == {"loss": 0.3, "orig_jaccard": 0.73, "params_total": 34977285, "members": 5}
    assert tuned.numbers()["external.extra.orig_jaccard"] == 0.55


def test_metrics_record_refuses_what_is_not_a_score():
    with pytest.raises(ValueError, match=r"metrics of frozen: 'tta' = 'on' is not a score"):
        ModelMetrics.from_json({"loss": 0.3, "tta": "on"}, "frozen")
    with pytest.raises(ValueError, match=r"m.json: metrics of frozen: 'note'"):
        parse_metrics('{"frozen": {"note": null}}', "m.json")


# Reading runs: the layout and its evaluations


def test_a_reports_folder_has_every_evaluation_of_the_layout(two_experiments):
    a, b = two_experiments
    assert list(read_run(str(a)).tables) == [
        "test",
        "cv out-of-fold",
        "external extra",
        "external extra, fold-model mean",
    ]
    run_b = read_run(str(b))
    assert sorted(run_b.tables["test"]) == ["cv_ensemble", "finetune_all", "frozen"]
    assert "external clinic_b" in run_b.tables
    assert list(read_run(str(b), set_name="extra").tables) == ["external extra", "external extra, fold-model mean"]
    assert _evaluation_of("x/reports/cv/per_image") == "cv out-of-fold"
    assert _evaluation_of("reports/cv/external/extra") == "external extra, fold-model mean"
    assert _evaluation_of("reports/per_image/extra") == "external extra"
    assert _evaluation_of("some/dir") == "per-image tables"


def test_compare_runs_on_every_shared_evaluation(two_experiments):
    a, b = two_experiments
    comparison = compare_runs(read_run(str(a)), read_run(str(b)))
    found = {(r.evaluation, r.model): r for r in comparison.results}
    assert list(found) == [
        ("test", "frozen"),
        ("test", "finetune_all"),
        ("cv out-of-fold", "finetune_all"),
        ("external extra", "finetune_all"),
        ("external extra, fold-model mean", "finetune_all"),
    ]
    assert found["test", "frozen"].change.delta == 0 and found["test", "frozen"].verdict == NO_CHANGE
    assert found["cv out-of-fold", "finetune_all"].change.delta == pytest.approx(0.03, abs=0.003)
    assert found["cv out-of-fold", "finetune_all"].verdict == BETTER
    assert found["external extra, fold-model mean", "finetune_all"].change.delta == pytest.approx(0.02, abs=1e-5)
    assert found["external extra, fold-model mean", "finetune_all"].change.n == 20
    assert comparison.notes == [
        f"external clinic_b: only in {b}, skipped",
        f"test: cv_ensemble not in {a}, not compared",
    ]


def test_compare_runs_errors_name_both_sides(tmp_path):
    tables = {"finetune_all": table([0.5, 0.6, 0.7])}
    cv_only, test_only = Run("exp-a", {"cv out-of-fold": tables}), Run("exp-b", {"test": tables})
    with pytest.raises(
        ValueError, match=r"^exp-a and exp-b have no evaluation in common \(exp-a: \['cv out-of-fold'\]"
    ):
        compare_runs(cv_only, test_only)
    other = Run("exp-b", {"test": {"frozen": table([0.5, 0.6, 0.7])}})
    with pytest.raises(ValueError, match="no model of exp-a is also in exp-b on any evaluation both have"):
        compare_runs(Run("exp-a", {"test": tables}), other)


# `lesionseg compare`


def test_compare_json_md_and_text(two_experiments, capsys):
    a, b = two_experiments
    assert main(["compare", str(a), str(b), "--json"]) == 0
    out, err = capsys.readouterr()
    records = json.loads(out)
    assert {r["evaluation"] for r in records} == {
        "test",
        "cv out-of-fold",
        "external extra",
        "external extra, fold-model mean",
    }
    assert set(records[0]) == {"evaluation", "model", "n", "mean_a", "mean_b", "delta", "ci95", "p_value", "verdict"}
    assert "external clinic_b: only in" in err  # notes on stderr: stdout is one JSON document

    assert main(["compare", str(a), str(b), "--md"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| evaluation | model | n | mean base | mean head | change | 95% CI | p | verdict |"
    assert lines[1] == "|---|---|--:|--:|--:|--:|--:|--:|---|"
    assert lines[4].startswith("| cv out-of-fold | finetune_all | 30 |") and lines[4].endswith("| better |")
    assert lines[-1] == "- test: cv_ensemble not in " + str(a) + ", not compared"

    assert main(["compare", str(a), str(b), "--model", "finetune_all", "--set", "extra"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[2].split() == [
        "evaluation",
        "model",
        "n",
        "mean",
        "A",
        "mean",
        "B",
        "change",
        "95%",
        "CI",
        "p",
        "verdict",
    ]
    rows = [line for line in text[3:] if line.startswith("external extra")]
    assert len(rows) == 2 and rows[1].startswith("external extra, fold-model mean  finetune_all  20")
    assert rows[1].rstrip().endswith("better")


def test_compare_folders_and_files_as_before(two_experiments, capsys):
    a, b = two_experiments
    # A folder of per-image CSVs: one evaluation, named by where it sits.
    assert main(["compare", str(a / "per_image"), str(b / "per_image"), "--md"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[:2] == [
        "| model | n | mean base | mean head | change | 95% CI | p | verdict |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    assert [line.split(" | ")[0] for line in lines[2:4]] == ["| finetune_all", "| frozen"]  # the files' order
    assert main(["compare", str(a / "per_image"), str(b / "per_image"), "--set", "extra", "--json"]) == 0
    assert [r["evaluation"] for r in json.loads(capsys.readouterr().out)] == ["external extra"]
    # Two files: two models of one run, whatever their names.
    frozen, tuned = a / "per_image" / "frozen.csv", a / "per_image" / "finetune_all.csv"
    assert main(["compare", str(frozen), str(tuned), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    expected = pd.read_csv(tuned)["orig_jaccard"].mean() - pd.read_csv(frozen)["orig_jaccard"].mean()
    assert result["model"] == "frozen vs finetune_all" and result["evaluation"] == "test"
    assert result["delta"] == pytest.approx(expected)


def test_compare_errors_exit_1_with_the_reason(two_experiments, tmp_path, capsys):
    a, b = two_experiments
    bad = write_reports(tmp_path / "bad", {"cv/per_image": {"finetune_all": table(np.linspace(0.5, 0.9, 30))}})
    (bad / "cv/per_image/finetune_all.csv").write_text(
        table(np.linspace(0.5, 0.9, 30), IDS[1:] + ["ISIC_0000099"]).to_csv(index=False)
    )
    assert main(["compare", str(a), str(bad)]) == 1
    assert "finetune_all on cv out-of-fold: the two sides scored different images" in capsys.readouterr().err
    only_test = write_reports(tmp_path / "t", {"per_image": {"x": table([0.5, 0.6])}})
    only_cv = write_reports(tmp_path / "c", {"cv/per_image": {"x": table([0.5, 0.6])}})
    assert main(["compare", str(only_test), str(only_cv)]) == 1
    assert f"{only_test} and {only_cv} have no evaluation in common" in capsys.readouterr().err
    assert main(["compare", str(a), "no-such-experiment"]) == 1
    assert "no-such-experiment" in capsys.readouterr().err


@pytest.mark.skipif(not shutil.which("git"), reason="needs git")
def test_compare_git_revisions_through_dvc(two_experiments, tmp_path, monkeypatch, capsys):
    """Two commits of a repository's reports/ (tables tracked by DVC) read through DVC's file system, as
    experiments are."""
    a, b = two_experiments
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)

    def commit(source, message):
        # Out of the index first: copies keep size and mtime, which git's stat check would take as unchanged.
        subprocess.run(["git", "rm", "-rq", "--ignore-unmatch", "reports"], check=True)
        shutil.rmtree(repo / "reports", ignore_errors=True)
        shutil.copytree(source, repo / "reports")
        # The tables as DVC outputs (in DVC's cache, not in git), as the pipeline leaves them.
        dvc = [sys.executable, "-m", "dvc", "add", "-q", "reports/per_image", "reports/cv"]
        subprocess.run(dvc, check=True, capture_output=True)
        subprocess.run(["git", "add", "-A"], check=True, capture_output=True)
        subprocess.run(["git", "commit", "-qm", message], check=True, capture_output=True)

    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(["git", "config", "user.name", "t"], check=True)
    subprocess.run(["git", "config", "user.email", "t@t"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    commit(a, "a")
    commit(b, "b")
    tracked = subprocess.run(["git", "ls-files", "reports"], check=True, capture_output=True, text=True).stdout.split()
    assert "reports/per_image.dvc" in tracked and not any(name.endswith(".csv") for name in tracked)
    assert main(["compare", "HEAD~1", "HEAD", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    from_folders = compare_runs(read_run(str(a)), read_run(str(b))).results
    assert [(r["evaluation"], r["model"], r["delta"]) for r in records] == [
        (r.evaluation, r.model, pytest.approx(r.change.delta)) for r in from_folders
    ]
    assert main(["compare", "HEAD~1", "HEAD", "--per-image-dir", "reports/cv/per_image", "--json"]) == 0
    assert [r["evaluation"] for r in json.loads(capsys.readouterr().out)] == ["cv out-of-fold"]
